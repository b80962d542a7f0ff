import { DTYPES, type DType } from "./dtype.js";

/**
 * A flat block of elements that one or more tensors view (PyTorch's storage). Tensors that share a
 * `Storage` object are views of each other, and a `.pt` file holds the storage once.
 */
export class Storage {
  readonly dtype: DType;
  /** The raw little-endian bytes; `numel * itemSize` long. Never copied by this class. */
  readonly bytes: Uint8Array;

  constructor(dtype: DType, bytes: Uint8Array) {
    const { itemSize } = DTYPES[dtype];
    if (bytes.byteLength % itemSize !== 0) {
      throw new RangeError(`a ${dtype} storage needs a multiple of ${itemSize} bytes, got ${bytes.byteLength}`);
    }
    this.dtype = dtype;
    this.bytes = bytes;
  }

  get numel(): number {
    return this.bytes.byteLength / DTYPES[this.dtype].itemSize;
  }
}
