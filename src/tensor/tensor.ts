import { InvalidArgumentError } from "../errors.js";
import { DTYPES, defaultDTypeOf, isDType, type DType, type TypedArray } from "./dtype.js";
import { Storage } from "./storage.js";

export interface TensorOptions {
  /** Needed for Uint16Array data (`"float16"` or `"bfloat16"`) and for bool (Uint8Array). */
  dtype?: DType;
  /** Defaults to a 1-D tensor of all elements. */
  shape?: readonly number[];
  requiresGrad?: boolean;
}

export interface TensorViewParts {
  storage: Storage;
  shape: readonly number[];
  /** In elements; defaults to the contiguous (row-major) strides of `shape`. */
  strides?: readonly number[];
  /** In elements. */
  offset?: number;
  requiresGrad?: boolean;
  /** Saved as `torch.nn.Parameter` rather than a plain tensor. */
  isParameter?: boolean;
}

/** Remembers the storage made for a typed array, so two tensors over one array are views. */
const storageOfArray = new WeakMap<TypedArray, Storage>();

/**
 * An n-dimensional array over a `Storage`: dtype, shape, strides and offset (in elements), like a
 * PyTorch CPU tensor. Building one from a typed array copies nothing.
 *
 * @example
 * const w = Tensor.from(new Float32Array([1, 2, 3, 4, 5, 6]), { shape: [2, 3] });
 * w.data; // the same Float32Array, no copy
 */
export class Tensor {
  readonly storage: Storage;
  readonly shape: readonly number[];
  readonly strides: readonly number[];
  readonly offset: number;
  requiresGrad: boolean;
  isParameter: boolean;
  /**
   * The archive write that last pickled this tensor (a number from newStorageVisit) and its pickle
   * memo index there: a field read per tensor instead of a memo Map lookup (see torch-writer.ts,
   * and docs/design.md "Per-tensor cost"). Private fields: no comparison or copy of tensors sees them.
   */
  #archiveStamp = 0;
  #archiveMemo = 0;

  constructor(parts: TensorViewParts) {
    const { storage, shape } = parts;
    const strides = parts.strides ?? contiguousStrides(shape);
    const offset = parts.offset ?? 0;
    checkView(shape, strides, offset, storage.numel);
    this.storage = storage;
    // A frozen array cannot change, so it is kept as it is (readers share one between the tensors of a shape).
    this.shape = frozenCopy(shape);
    this.strides = frozenCopy(strides);
    this.offset = offset;
    this.requiresGrad = parts.requiresGrad ?? false;
    this.isParameter = parts.isParameter ?? false;
  }

  /** @internal The pickle memo index archive write `stamp` gave this tensor, or -1 if it has not pickled it. */
  memoInArchive(stamp: number): number {
    return this.#archiveStamp === stamp ? this.#archiveMemo : -1;
  }

  /** @internal Records that archive write `stamp` pickled this tensor as memo entry `index`. */
  markArchived(stamp: number, index: number): void {
    this.#archiveStamp = stamp;
    this.#archiveMemo = index;
  }

  /** A tensor viewing `array` without copying it. */
  static from(array: TypedArray, options: TensorOptions = {}): Tensor {
    const dtype = options.dtype ?? defaultDTypeOf(array);
    if (dtype === undefined) throw new InvalidArgumentError(missingDTypeMessage(array));
    if (!isDType(dtype)) throw new InvalidArgumentError(`unknown dtype ${JSON.stringify(dtype)}`);
    if (!(array instanceof DTYPES[dtype].arrayType)) {
      throw new InvalidArgumentError(`dtype ${dtype} is held in a ${DTYPES[dtype].arrayType.name}, got a ${array.constructor.name}`);
    }
    let storage = storageOfArray.get(array);
    if (storage === undefined || storage.dtype !== dtype) {
      storage = new Storage(dtype, new Uint8Array(array.buffer, array.byteOffset, array.byteLength));
      storageOfArray.set(array, storage);
    }
    const shape = options.shape ?? [storage.numel];
    const numel = shapeNumel(shape);
    if (numel !== storage.numel) {
      throw new InvalidArgumentError(`shape [${shape.join(", ")}] has ${numel} elements but the array has ${storage.numel}`);
    }
    return new Tensor({ storage, shape, requiresGrad: options.requiresGrad ?? false });
  }

  /** A zero-filled contiguous tensor. */
  static zeros(shape: readonly number[], dtype: DType = "float32"): Tensor {
    if (!isDType(dtype)) throw new InvalidArgumentError(`unknown dtype ${JSON.stringify(dtype)}`);
    const numel = checkShape(shape);
    const storage = new Storage(dtype, new Uint8Array(numel * DTYPES[dtype].itemSize));
    return new Tensor({ storage, shape });
  }

  get dtype(): DType {
    return this.storage.dtype;
  }

  get numel(): number {
    return shapeNumel(this.shape);
  }

  get byteLength(): number {
    return this.numel * DTYPES[this.dtype].itemSize;
  }

  /** True when the elements lie in row-major order without gaps (size-1 dimensions ignored). */
  get isContiguous(): boolean {
    let expected = 1;
    for (let d = this.shape.length - 1; d >= 0; d--) {
      const size = this.shape[d]!;
      if (size === 0) return true;
      if (size !== 1 && this.strides[d] !== expected) return false;
      expected *= size;
    }
    return true;
  }

  /** The elements' bytes in row-major order: a view of the storage when contiguous, else a copy. */
  get bytes(): Uint8Array {
    const { itemSize } = DTYPES[this.dtype];
    // An empty tensor may sit at any offset, even past its storage's end (PyTorch allows and saves it).
    if (this.numel === 0) return new Uint8Array(0);
    if (this.isContiguous) {
      const start = this.storage.bytes.byteOffset + this.offset * itemSize;
      return new Uint8Array(this.storage.bytes.buffer, start, this.byteLength);
    }
    return this.contiguous().storage.bytes;
  }

  /**
   * The elements as a typed array in row-major order: a view of the storage when the tensor is
   * contiguous (writes go to the tensor), a copy otherwise. complex64 comes as interleaved float32.
   */
  get data(): TypedArray {
    const bytes = this.bytes;
    const { arrayType, itemSize } = DTYPES[this.dtype];
    const length = (bytes.byteLength / itemSize) * (this.dtype === "complex64" ? 2 : 1);
    if (bytes.byteOffset % arrayType.BYTES_PER_ELEMENT === 0) {
      return new arrayType(bytes.buffer as ArrayBuffer, bytes.byteOffset, length);
    }
    // Storage bytes at an odd address (a caller's unaligned buffer): copy to get an aligned array.
    return new arrayType(bytes.slice().buffer, 0, length);
  }

  /** This tensor if contiguous, else a contiguous copy of its elements in row-major order. */
  contiguous(): Tensor {
    if (this.isContiguous && this.offset === 0 && this.storage.numel === this.numel) return this;
    const { itemSize } = DTYPES[this.dtype];
    const out = new Uint8Array(this.byteLength);
    const src = this.storage.bytes;
    let written = 0;
    forEachElementOffset(this.shape, this.strides, this.offset, (element) => {
      const from = element * itemSize;
      out.set(src.subarray(from, from + itemSize), written);
      written += itemSize;
    });
    return new Tensor({ storage: new Storage(this.dtype, out), shape: this.shape, requiresGrad: this.requiresGrad });
  }

  /** A view with another shape over the same storage; the tensor must be contiguous. */
  reshape(shape: readonly number[]): Tensor {
    if (!this.isContiguous) throw new InvalidArgumentError("reshape needs a contiguous tensor; call contiguous() first");
    if (shapeNumel(shape) !== this.numel) {
      throw new InvalidArgumentError(`cannot reshape [${this.shape.join(", ")}] to [${shape.join(", ")}]`);
    }
    return new Tensor({ storage: this.storage, shape, offset: this.offset, requiresGrad: this.requiresGrad });
  }

  /** A view with dimensions `a` and `b` swapped (like `tensor.transpose(a, b)`), sharing storage. */
  transpose(a = 0, b = 1): Tensor {
    const shape = [...this.shape];
    const strides = [...this.strides];
    if (shape[a] === undefined || shape[b] === undefined) throw new InvalidArgumentError(`no dimensions ${a} and ${b} in a ${shape.length}-D tensor`);
    [shape[a], shape[b]] = [shape[b]!, shape[a]!];
    [strides[a], strides[b]] = [strides[b]!, strides[a]!];
    return new Tensor({ storage: this.storage, shape, strides, offset: this.offset, requiresGrad: this.requiresGrad });
  }

  /** A view with dimensions reordered (like `tensor.permute(...dims)`), sharing storage. */
  permute(dims: readonly number[]): Tensor {
    const n = this.shape.length;
    if (dims.length !== n || new Set(dims).size !== n || dims.some((d) => !Number.isInteger(d) || d < 0 || d >= n)) {
      throw new InvalidArgumentError(`permute([${dims.join(", ")}]) is not a permutation of the ${n} dimensions`);
    }
    return new Tensor({
      storage: this.storage,
      shape: dims.map((d) => this.shape[d]!),
      strides: dims.map((d) => this.strides[d]!),
      offset: this.offset,
      requiresGrad: this.requiresGrad,
    });
  }
}

/** Why a typed array has no dtype of its own, and what to do instead. */
function missingDTypeMessage(array: object): string {
  const name = array.constructor?.name ?? "value";
  const supported = `the supported dtypes are ${Object.keys(DTYPES).join(", ")}`;
  switch (name) {
    case "Uint16Array":
      return `a Uint16Array needs an explicit dtype, "float16" or "bfloat16" (its elements are taken as raw 16-bit words; uint16 is not a supported dtype)`;
    case "Uint32Array":
      return `uint32 is not a supported dtype (${supported}): convert the Uint32Array to an Int32Array (Int32Array.from(array)) if every value is below 2^31, else to a BigInt64Array (int64)`;
    case "BigUint64Array":
      return `uint64 is not a supported dtype (${supported}): convert the BigUint64Array to a BigInt64Array (int64) if every value is below 2^63`;
    case "Uint8ClampedArray":
      return `a Uint8ClampedArray has no dtype: view its bytes as a Uint8Array (new Uint8Array(array.buffer, array.byteOffset, array.length)) for uint8`;
    default:
      return `a ${name} cannot hold a tensor's elements (${supported}; float16 and bfloat16 are raw words in a Uint16Array)`;
  }
}

function frozenCopy(items: readonly number[]): readonly number[] {
  return Array.isArray(items) && Object.isFrozen(items) ? items : Object.freeze([...items]);
}

export function shapeNumel(shape: readonly number[]): number {
  let numel = 1;
  for (const size of shape) numel *= size;
  return numel;
}

/** The element count of `shape` after checking each size is a non-negative integer, before any allocation. */
function checkShape(shape: readonly number[]): number {
  for (let d = 0; d < shape.length; d++) {
    const size = shape[d]!;
    if (!Number.isSafeInteger(size) || size < 0) throw new InvalidArgumentError(`shape [${shape.join(", ")}]: bad size in dimension ${d}`);
  }
  const numel = shapeNumel(shape);
  if (!Number.isSafeInteger(numel)) throw new InvalidArgumentError(`shape [${shape.join(", ")}]: too many elements`);
  return numel;
}

export function contiguousStrides(shape: readonly number[]): number[] {
  const strides = new Array<number>(shape.length);
  let stride = 1;
  for (let d = shape.length - 1; d >= 0; d--) {
    strides[d] = stride;
    stride *= shape[d]!;
  }
  return strides;
}

/**
 * Checks that every element a view addresses lies inside its storage, so reading a tensor can
 * never go out of bounds whatever a file claims.
 */
function checkView(shape: readonly number[], strides: readonly number[], offset: number, storageNumel: number): void {
  // Each message's prefix is built only for its error (a load builds thousands of tensors).
  if (shape.length !== strides.length) throw new InvalidArgumentError(`${describeView(shape, strides, offset)}: shape and strides differ in length`);
  if (!Number.isSafeInteger(offset) || offset < 0) throw new InvalidArgumentError(`${describeView(shape, strides, offset)}: bad offset`);
  let numel = 1;
  let last = offset;
  for (let d = 0; d < shape.length; d++) {
    const size = shape[d]!;
    const stride = strides[d]!;
    if (!Number.isSafeInteger(size) || size < 0) throw new InvalidArgumentError(`${describeView(shape, strides, offset)}: bad size in dimension ${d}`);
    if (!Number.isSafeInteger(stride) || stride < 0) throw new InvalidArgumentError(`${describeView(shape, strides, offset)}: bad stride in dimension ${d}`);
    numel *= size;
    if (size > 0) last += (size - 1) * stride;
  }
  if (!Number.isSafeInteger(numel) || !Number.isSafeInteger(last)) throw new InvalidArgumentError(`${describeView(shape, strides, offset)}: too many elements`);
  if (numel > 0 && last >= storageNumel) {
    throw new InvalidArgumentError(`${describeView(shape, strides, offset)}: reaches element ${last} of a storage of ${storageNumel} elements`);
  }
}

function describeView(shape: readonly number[], strides: readonly number[], offset: number): string {
  return `shape [${shape.join(", ")}], strides [${strides.join(", ")}], offset ${offset}`;
}

/** Calls `visit` with the storage index of every element, in row-major order. */
function forEachElementOffset(shape: readonly number[], strides: readonly number[], offset: number, visit: (element: number) => void): void {
  if (shapeNumel(shape) === 0) return;
  const index = new Array<number>(shape.length).fill(0);
  let position = offset;
  for (;;) {
    visit(position);
    let d = shape.length - 1;
    for (; d >= 0; d--) {
      index[d]!++;
      position += strides[d]!;
      if (index[d]! < shape[d]!) break;
      position -= index[d]! * strides[d]!;
      index[d] = 0;
    }
    if (d < 0) return;
  }
}
