import { DTYPES, type DType } from "./dtype.js";

/** What a pending storage is built from before its size is set (one shared empty array). */
const NO_BYTES = new Uint8Array(0);

let lastStorageVisit = 0;

/** @internal A stamp for one synchronous walk that marks storages as met (see Storage.markVisited). */
export function newStorageVisit(): number {
  return ++lastStorageVisit;
}

/**
 * @internal Whether no walk has begun since the one stamped `stamp`: a walk that pauses (a pickle
 * made in steps) marks its storages and tensors again if another may have overwritten the marks.
 */
export function isLatestVisit(stamp: number): boolean {
  return stamp === lastStorageVisit;
}

/**
 * A flat block of elements that one or more tensors view (PyTorch's storage). Tensors that share a
 * `Storage` object are views of each other, and a `.pt` file holds the storage once.
 */
export class Storage {
  readonly dtype: DType;
  readonly numel: number;
  private data: Uint8Array | undefined;
  /**
   * The synchronous walk over a state that last met this storage (a number from
   * `newStorageVisit`) and the index it gave it: walks that count each storage once (an archive
   * write numbering its storages, the free-space estimate) read a field per tensor instead of
   * looking the storage up in a Map or Set (see docs/design.md, "Per-tensor cost"). A walk is
   * synchronous, so two never interleave. Private fields: no comparison or copy of storages sees them.
   */
  #visitStamp = 0;
  #visitIndex = 0;

  /** @internal The index walk `stamp` gave this storage, or -1 if that walk has not met it. */
  indexInVisit(stamp: number): number {
    return this.#visitStamp === stamp ? this.#visitIndex : -1;
  }

  /** @internal Records that walk `stamp` met this storage and gave it `index`. */
  markVisited(stamp: number, index: number): void {
    this.#visitStamp = stamp;
    this.#visitIndex = index;
  }

  constructor(dtype: DType, bytes: Uint8Array) {
    const { itemSize } = DTYPES[dtype];
    if (bytes.byteLength % itemSize !== 0) {
      throw new RangeError(`a ${dtype} storage needs a multiple of ${itemSize} bytes, got ${bytes.byteLength}`);
    }
    this.dtype = dtype;
    this.numel = bytes.byteLength / itemSize;
    this.data = bytes;
  }

  /**
   * A storage whose size is known and whose bytes come later (`attach`): readers build the tensors
   * of a file first, then read each storage straight to where it belongs.
   */
  static pending(dtype: DType, numel: number): Storage {
    const storage = new Storage(dtype, NO_BYTES);
    (storage as { numel: number }).numel = numel;
    storage.data = undefined;
    return storage;
  }

  /** The raw little-endian bytes; `numel * itemSize` long. Never copied by this class. */
  get bytes(): Uint8Array {
    if (this.data === undefined) throw new Error("the storage's bytes have not been read yet");
    return this.data;
  }

  /** Gives a pending storage its bytes, once. */
  attach(bytes: Uint8Array): void {
    if (this.data !== undefined) throw new Error("the storage already has its bytes");
    if (bytes.byteLength !== this.numel * DTYPES[this.dtype].itemSize) {
      throw new RangeError(`a storage of ${this.numel} ${this.dtype} elements cannot take ${bytes.byteLength} bytes`);
    }
    this.data = bytes;
  }
}
