import type { FileSystem } from "../fs/file-system.js";
import { ShardedTensor } from "../tensor/sharded-tensor.js";
import type { Storage } from "../tensor/storage.js";
import { Tensor } from "../tensor/tensor.js";

/**
 * The least number of bytes the files of these values take: the bytes of their tensors' storages,
 * each storage counted once (views share one). A lower bound, so a refusal based on it is never
 * wrong: the files also hold pickles, zip headers and alignment.
 */
export function storageBytes(values: readonly unknown[]): number {
  const storages = new Set<Storage>();
  const pending: unknown[] = [...values];
  while (pending.length > 0) {
    const value = pending.pop();
    if (value instanceof Tensor) storages.add(value.storage);
    else if (value instanceof ShardedTensor) storages.add(value.shard.storage);
    else if (value instanceof Map) pending.push(...value.values());
    else if (Array.isArray(value)) pending.push(...value);
    else if (value !== null && typeof value === "object" && Object.getPrototypeOf(value) === Object.prototype) pending.push(...Object.values(value));
  }
  let total = 0;
  for (const storage of storages) total += storage.bytes.byteLength;
  return total;
}

/**
 * Refuses, before anything is written, a save that cannot fit: `needed` bytes against the free
 * space under `dir`. Storage that cannot tell its free space (object stores) is not checked.
 */
export async function ensureFreeSpace(fileSystem: FileSystem, dir: string, needed: number): Promise<void> {
  if (fileSystem.freeSpace === undefined || needed === 0) return;
  const free = await fileSystem.freeSpace(dir);
  if (free === undefined || free >= needed) return;
  throw Object.assign(new Error(`not enough free space in ${dir}: the state's tensors alone need ${needed} bytes and ${free} bytes are free (ENOSPC)`), { code: "ENOSPC" });
}
