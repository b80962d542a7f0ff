import { DTYPES } from "../tensor/dtype.js";
import { Storage } from "../tensor/storage.js";
import { ShardedTensor } from "../tensor/sharded-tensor.js";
import { Tensor } from "../tensor/tensor.js";
import {
  getOrderedDictAttributes,
  isFloatSlot,
  isOrderedDict,
  markFloatSlot,
  markTuple,
  orderedDict,
  setOwn,
  tupleKind,
  type StateDict,
  type StateValue,
} from "../values/py-values.js";

/** Storages start at multiples of this in the arena (as in a .pt file), so typed arrays fit. */
const ALIGNMENT = 64;
/** The largest block the arena allocates for several storages together. */
const MAX_BLOCK_BYTES = 1 << 30;

/**
 * Reusable memory for snapshots. Copying into memory already in use runs many times faster than
 * into fresh memory (whose first touch costs page faults), so the blocks of one checkpoint's
 * snapshots are handed out again to the next checkpoint's (at most one save is in flight).
 */
export class SnapshotArena {
  private readonly blocks: { buffer: ArrayBuffer; inUse: boolean }[] = [];

  /** Makes every block available again: the checkpoint that used them is written. */
  reset(): void {
    for (const block of this.blocks) block.inUse = false;
  }

  /** Lets go of all memory (the manager is closed). */
  clear(): void {
    this.blocks.length = 0;
  }

  /** A block of at least `bytes`, reused when a free one is large enough. */
  take(bytes: number): ArrayBuffer {
    if (bytes === 0) return new ArrayBuffer(0);
    let best: { buffer: ArrayBuffer; inUse: boolean } | undefined;
    for (const block of this.blocks) {
      if (!block.inUse && block.buffer.byteLength >= bytes && (best === undefined || block.buffer.byteLength < best.buffer.byteLength)) best = block;
    }
    if (best === undefined) {
      best = { buffer: new ArrayBuffer(bytes), inUse: false };
      this.blocks.push(best);
    }
    best.inUse = true;
    return best.buffer;
  }
}

/**
 * A deep copy of a state whose tensors own copies of their data, so the caller may change its
 * tensors as soon as this returns. Containers are copied with their Python marks (tuples,
 * OrderedDicts, whole floats); storages shared by views stay shared; other values are immutable.
 */
export function snapshotState(state: StateDict, arena: SnapshotArena): StateDict {
  const storages = new Map<Storage, Storage | undefined>();
  collectStorages(state, storages);
  for (const group of groupIntoBlocks([...storages.keys()])) {
    const memory = arena.take(group.bytes);
    let offset = 0;
    for (const storage of group.storages) {
      const length = storage.numel * DTYPES[storage.dtype].itemSize;
      const copy = new Uint8Array(memory, offset, length);
      copy.set(storage.bytes);
      storages.set(storage, new Storage(storage.dtype, copy));
      offset += align(length);
    }
  }
  return mapTree(state, (leaf) => {
    const shard = leaf instanceof ShardedTensor ? leaf.shard : leaf;
    const copy = new Tensor({
      storage: storages.get(shard.storage)!,
      shape: shard.shape,
      strides: shard.strides,
      offset: shard.offset,
      requiresGrad: shard.requiresGrad,
      isParameter: shard.isParameter,
    });
    return leaf instanceof ShardedTensor ? new ShardedTensor(copy, leaf) : copy;
  }) as StateDict;
}

/**
 * Storages packed into blocks of at most MAX_BLOCK_BYTES (one larger storage gets a block of its
 * own): one ArrayBuffer per state would pass the platform's buffer limit (4 GiB in Node 20) for a
 * model with a large embedding and its optimizer moments.
 */
function groupIntoBlocks(all: Storage[]): { storages: Storage[]; bytes: number }[] {
  const groups: { storages: Storage[]; bytes: number }[] = [];
  let current: { storages: Storage[]; bytes: number } = { storages: [], bytes: 0 };
  for (const storage of all) {
    const bytes = align(storage.numel * DTYPES[storage.dtype].itemSize);
    if (current.storages.length > 0 && current.bytes + bytes > MAX_BLOCK_BYTES) {
      groups.push(current);
      current = { storages: [], bytes: 0 };
    }
    current.storages.push(storage);
    current.bytes += bytes;
  }
  if (current.storages.length > 0) groups.push(current);
  return groups;
}

function align(n: number): number {
  return Math.ceil(n / ALIGNMENT) * ALIGNMENT;
}

function collectStorages(root: unknown, storages: Map<Storage, Storage | undefined>): void {
  const seen = new Set<unknown>();
  const pending: unknown[] = [root];
  while (pending.length > 0) {
    const value = pending.pop();
    if (value instanceof Tensor) storages.set(value.storage, undefined);
    else if (value instanceof ShardedTensor) storages.set(value.shard.storage, undefined);
    else if (isContainer(value) && !seen.has(value)) {
      seen.add(value);
      if (value instanceof Map) for (const [key, item] of value) pending.push(key, item);
      else if (Array.isArray(value)) pending.push(...value);
      else pending.push(...Object.values(value));
      const attributes = getOrderedDictAttributes(value);
      if (attributes !== undefined) pending.push(attributes);
    }
  }
}

function isContainer(value: unknown): value is object {
  if (typeof value !== "object" || value === null || ArrayBuffer.isView(value) || value instanceof Tensor) return false;
  const prototype = Object.getPrototypeOf(value);
  return value instanceof Map || Array.isArray(value) || prototype === Object.prototype || prototype === null;
}

/**
 * Copies the containers of a state (keeping sharing, cycles and Python marks) and puts
 * `mapLeaf(tensor)` in place of each tensor and sharded tensor.
 */
export function mapTree(root: unknown, mapLeaf: (leaf: Tensor | ShardedTensor) => unknown): unknown {
  const copies = new Map<unknown, unknown>();
  const copyOf = (value: unknown): unknown => {
    if (value instanceof Tensor || value instanceof ShardedTensor) return mapLeaf(value);
    if (!isContainer(value)) return value;
    let copy = copies.get(value);
    if (copy === undefined) {
      copy = value instanceof Map ? new Map() : Array.isArray(value) ? [] : {};
      copies.set(value, copy);
      pending.push(value);
    }
    return copy;
  };
  const pending: object[] = [];
  const result = copyOf(root);
  while (pending.length > 0) {
    const original = pending.pop()!;
    const copy = copies.get(original) as object;
    if (original instanceof Map) {
      for (const [key, item] of original) (copy as Map<unknown, unknown>).set(copyOf(key), copyOf(item));
    } else if (Array.isArray(original)) {
      original.forEach((item, i) => ((copy as unknown[])[i] = copyOf(item)));
      const kind = tupleKind(original);
      if (kind !== undefined) markTuple(copy as unknown[], kind);
    } else {
      for (const key of Object.keys(original)) setOwn(copy as StateDict, key, copyOf((original as StateDict)[key]) as StateValue);
    }
    const keys: unknown[] = original instanceof Map ? [...original.keys()] : Array.isArray(original) ? original.map((_, i) => i) : Object.keys(original);
    for (const key of keys) if (isFloatSlot(original, key)) markFloatSlot(copy, key);
    if (isOrderedDict(original)) {
      const attributes = getOrderedDictAttributes(original);
      orderedDict(copy, attributes === undefined ? undefined : (copyOf(attributes) as StateDict));
    }
  }
  return result;
}
