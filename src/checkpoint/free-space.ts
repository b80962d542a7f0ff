import type { FileSystem } from "../fs/file-system.js";
import { ShardedTensor } from "../tensor/sharded-tensor.js";
import { newStorageVisit } from "../tensor/storage.js";
import { Tensor } from "../tensor/tensor.js";

/**
 * The least number of bytes the files of these values take: the bytes of their tensors' storages,
 * each storage counted once (views share one). A lower bound, so a refusal based on it is never
 * wrong: the files also hold pickles, zip headers and alignment.
 */
export function storageBytes(values: readonly unknown[]): number {
  // Runs before every save, over states of tens of thousands of tensors: plain loops, no spread
  // of a container's values onto the stack, and tensors counted where they are met.
  const visit = newStorageVisit();
  let total = 0;
  const pending: object[] = [];
  // Containers met before (shared or cyclic: a state may hold a list that holds itself) are skipped.
  const seen = new Set<object>();
  const meet = (value: unknown): void => {
    if (typeof value !== "object" || value === null) return;
    const storage = value instanceof Tensor ? value.storage : value instanceof ShardedTensor ? value.shard.storage : undefined;
    if (storage === undefined) {
      if (!seen.has(value)) {
        seen.add(value);
        pending.push(value);
      }
    } else if (storage.indexInVisit(visit) < 0) {
      storage.markVisited(visit, 0); // counted once, however many tensors view it
      total += storage.bytes.byteLength;
    }
  };
  for (const value of values) meet(value);
  while (pending.length > 0) {
    const value = pending.pop()!;
    if (value instanceof Map) {
      for (const child of value.values()) meet(child);
    } else if (Array.isArray(value)) {
      for (let i = 0; i < value.length; i++) meet(value[i]);
    } else if (Object.getPrototypeOf(value) === Object.prototype) {
      const record = value as Record<string, unknown>;
      for (const key of Object.keys(record)) meet(record[key]);
    }
  }
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
