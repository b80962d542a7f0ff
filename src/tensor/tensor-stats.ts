import { InvalidArgumentError } from "../errors.js";
import { DTYPES } from "./dtype.js";
import type { Tensor } from "./tensor.js";

/** Decodes an IEEE 754 half-precision word. */
export function float16ToNumber(word: number): number {
  const sign = word & 0x8000 ? -1 : 1;
  const exponent = (word >> 10) & 0x1f;
  const fraction = word & 0x3ff;
  if (exponent === 0) return sign * fraction * 2 ** -24;
  if (exponent === 0x1f) return fraction === 0 ? sign * Infinity : NaN;
  return sign * (1 + fraction / 1024) * 2 ** (exponent - 15);
}

const bfloat16Scratch = new Float32Array(1);
const bfloat16Words = new Uint32Array(bfloat16Scratch.buffer);

/** Decodes a bfloat16 word (the top half of a float32). */
export function bfloat16ToNumber(word: number): number {
  bfloat16Words[0] = word << 16;
  return bfloat16Scratch[0]!;
}

/**
 * How many times over the statistics may read a tensor's stored elements. A slice, transpose or
 * permute reads each stored element at most once; only overlapping strides (`unfold`,
 * `as_strided`) read some more often, and a file can claim shapes whose elements number
 * astronomically more than it stores. Dimensions of stride 0 (`expand`) cost nothing: they repeat
 * every element the same number of times, which the statistics count without re-reading.
 */
export const MAX_READS_PER_STORED_ELEMENT = 16;

/**
 * A tensor's elements as the walk reads them: the storage read in place, dimensions of stride 0
 * dropped and counted in `repeats` (each remaining element stands for that many).
 */
interface StridedView {
  shape: number[];
  strides: number[];
  offset: number;
  /** Elements visited (the product of `shape`). */
  visits: number;
  repeats: number;
}

/** Drops the dimensions that `zero(d)` says repeat elements, and those of size 1. */
function compactView(tensor: Tensor, zero: (d: number) => boolean): StridedView {
  const shape: number[] = [];
  const strides: number[] = [];
  let visits = 1;
  let repeats = 1;
  for (let d = 0; d < tensor.shape.length; d++) {
    const size = tensor.shape[d]!;
    if (size === 0) return { shape: [0], strides: [1], offset: tensor.offset, visits: 0, repeats: 1 };
    if (size === 1) continue;
    if (zero(d)) {
      repeats *= size;
      continue;
    }
    shape.push(size);
    strides.push(tensor.strides[d]!);
    visits *= size;
  }
  return { shape, strides, offset: tensor.offset, visits, repeats };
}

function checkReads(visits: number, storedElements: number, what: string): void {
  const limit = Math.max(storedElements, 1) * MAX_READS_PER_STORED_ELEMENT;
  if (visits > limit) {
    throw new InvalidArgumentError(
      `${what} would read ${visits} elements from ${storedElements} stored ones (overlapping strides); ` +
        `statistics read each stored element at most ${MAX_READS_PER_STORED_ELEMENT} times`,
    );
  }
}

/** Calls `visit` with the storage index of every element of the view, in row-major order. */
function forEachIndex(view: StridedView, visit: (index: number) => void): void {
  if (view.visits === 0) return;
  const { shape, strides } = view;
  const counter = new Array<number>(shape.length).fill(0);
  let position = view.offset;
  for (;;) {
    visit(position);
    let d = shape.length - 1;
    for (; d >= 0; d--) {
      counter[d]!++;
      position += strides[d]!;
      if (counter[d]! < shape[d]!) break;
      position -= counter[d]! * strides[d]!;
      counter[d] = 0;
    }
    if (d < 0) return;
  }
}

/** The storage's elements as a typed array over its own memory (copied only when misaligned). */
function storageArray(tensor: Tensor): ArrayLike<number | bigint> {
  const bytes = tensor.storage.bytes;
  const { arrayType } = DTYPES[tensor.dtype];
  // A copy when misaligned: new Uint8Array(bytes), since a Buffer's slice() is a view.
  const aligned = bytes.byteOffset % arrayType.BYTES_PER_ELEMENT === 0 ? bytes : new Uint8Array(bytes);
  const length = aligned.byteLength / arrayType.BYTES_PER_ELEMENT;
  return new arrayType(aligned.buffer as ArrayBuffer, aligned.byteOffset, length);
}

/**
 * Reads the element at storage index `i` as a number: 16-bit floats decoded, bools as 0/1, int64
 * rounded to the nearest float64 (exact up to 2^53), complex64 as its magnitude |z|.
 */
function numberReader(tensor: Tensor): (i: number) => number {
  const data = storageArray(tensor);
  switch (tensor.dtype) {
    case "float16":
      return (i) => float16ToNumber(data[i] as number);
    case "bfloat16":
      return (i) => bfloat16ToNumber(data[i] as number);
    case "int64":
      return (i) => Number(data[i] as bigint);
    case "complex64":
      return (i) => Math.hypot(data[2 * i] as number, data[2 * i + 1] as number);
    default:
      return (i) => data[i] as number;
  }
}

/** The tensor's elements as float64 numbers in row-major order (materialized: one per element). */
export function tensorToNumbers(tensor: Tensor): Float64Array {
  const read = numberReader(tensor);
  const out = new Float64Array(tensor.numel);
  let i = 0;
  forEachIndex(compactView(tensor, () => false), (index) => (out[i++] = read(index)));
  return out;
}

export interface TensorStats {
  numel: number;
  /**
   * Over the finite elements; undefined when there are none. An int64 value beyond ±2^53 is a
   * bigint, exactly (a number would round it).
   */
  min: number | bigint | undefined;
  max: number | bigint | undefined;
  mean: number | undefined;
  /**
   * Standard deviation of the finite elements with Bessel's correction (divided by n − 1), as
   * `torch.std` computes by default; undefined with fewer than two finite elements.
   */
  std: number | undefined;
  nanCount: number;
  infCount: number;
}

/**
 * Summary statistics of a tensor's elements (see tensorToNumbers for how dtypes are read),
 * computed over the storage in place: an expanded tensor (stride 0) is read once per stored
 * element, its repeats counted, so a broadcast of one number to 2^40 elements is instant. A view
 * with overlapping strides that would read its storage more than MAX_READS_PER_STORED_ELEMENT
 * times over is refused with an InvalidArgumentError.
 *
 * @example
 * const { min, max, mean, std, nanCount } = tensorStats(weight);
 */
export function tensorStats(tensor: Tensor): TensorStats {
  const view = compactView(tensor, (d) => tensor.strides[d] === 0);
  checkReads(view.visits, tensor.storage.numel, `a ${tensor.dtype} tensor of shape [${tensor.shape.join(", ")}], strides [${tensor.strides.join(", ")}],`);
  const numel = tensor.numel;
  const read = numberReader(tensor);
  let min = Infinity;
  let max = -Infinity;
  let sum = 0;
  let finite = 0;
  let nan = 0;
  let inf = 0;
  forEachIndex(view, (index) => {
    const v = read(index);
    if (Number.isNaN(v)) nan++;
    else if (!Number.isFinite(v)) inf++;
    else {
      finite++;
      sum += v;
      if (v < min) min = v;
      if (v > max) max = v;
    }
  });
  const { repeats } = view;
  const counts = { nanCount: nan * repeats, infCount: inf * repeats };
  if (finite === 0) return { numel, min: undefined, max: undefined, mean: undefined, std: undefined, ...counts };
  const mean = sum / finite;
  let squares = 0;
  forEachIndex(view, (index) => {
    const v = read(index);
    if (Number.isFinite(v)) squares += (v - mean) ** 2;
  });
  const n = finite * repeats;
  const std = n < 2 ? undefined : Math.sqrt((squares * repeats) / (n - 1));
  const exact = tensor.dtype === "int64" ? int64Extremes(tensor, view) : { min, max };
  return { numel, min: exact.min, max: exact.max, mean, std, ...counts };
}

/** The exact min and max of an int64 tensor: numbers when they are safe integers, else bigints. */
function int64Extremes(tensor: Tensor, view: StridedView): { min: number | bigint; max: number | bigint } {
  const data = storageArray(tensor) as BigInt64Array;
  let min = data[view.offset]!;
  let max = min;
  forEachIndex(view, (index) => {
    const v = data[index]!;
    if (v < min) min = v;
    if (v > max) max = v;
  });
  const plain = (v: bigint): number | bigint => (v >= BigInt(Number.MIN_SAFE_INTEGER) && v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : v);
  return { min: plain(min), max: plain(max) };
}

export interface TensorDifference {
  /** The largest |a - b| over elements where both are finite (0 when none differ). */
  maxAbsDiff: number;
  /** Elements that differ by more than the tolerance, or where only one is NaN, or infinities differ. */
  differing: number;
}

/**
 * Compares two tensors of the same shape element by element (dtypes may differ: values are read
 * as numbers; two int64 tensors are compared exactly). NaN equals NaN, as a saved-and-loaded NaN
 * should. Dimensions of stride 0 in both are compared once and counted for all their repeats;
 * a comparison that would read the two storages more than MAX_READS_PER_STORED_ELEMENT times over
 * is refused with an InvalidArgumentError.
 *
 * @example
 * const { maxAbsDiff, differing } = tensorDifference(before, after, 1e-6);
 */
export function tensorDifference(a: Tensor, b: Tensor, tolerance = 0): TensorDifference {
  if (a.numel !== b.numel || a.shape.length !== b.shape.length || a.shape.some((size, d) => size !== b.shape[d])) {
    throw new RangeError(`cannot compare shape [${a.shape.join(", ")}] with [${b.shape.join(", ")}]`);
  }
  const both = (d: number): boolean => a.strides[d] === 0 && b.strides[d] === 0;
  const viewA = compactView(a, both);
  const viewB = compactView(b, both);
  checkReads(viewA.visits, a.storage.numel + b.storage.numel, `comparing two tensors of shape [${a.shape.join(", ")}]`);
  const indicesB = storageIndices(viewB);
  const repeats = viewA.repeats;
  let maxAbsDiff = 0;
  let differing = 0;
  let i = 0;
  if (a.dtype === "int64" && b.dtype === "int64") {
    const dataA = storageArray(a) as BigInt64Array;
    const dataB = storageArray(b) as BigInt64Array;
    forEachIndex(viewA, (index) => {
      const d = dataA[index]! - dataB[indicesB(i++)]!;
      const abs = Number(d < 0n ? -d : d);
      if (abs > maxAbsDiff) maxAbsDiff = abs;
      if (tolerance === 0 ? d !== 0n : abs > tolerance) differing++;
    });
    return { maxAbsDiff, differing: differing * repeats };
  }
  const readA = numberReader(a);
  const readB = numberReader(b);
  forEachIndex(viewA, (index) => {
    const x = readA(index);
    const y = readB(indicesB(i++));
    if (Number.isNaN(x) || Number.isNaN(y)) {
      if (Number.isNaN(x) !== Number.isNaN(y)) differing++;
    } else if (!Number.isFinite(x) || !Number.isFinite(y)) {
      if (x !== y) differing++;
    } else {
      const d = Math.abs(x - y);
      if (d > maxAbsDiff) maxAbsDiff = d;
      if (d > tolerance) differing++;
    }
  });
  return { maxAbsDiff, differing: differing * repeats };
}

/**
 * The storage index of the i-th element of a view, for i counting up from 0 one at a time (a
 * cursor, so walking two views side by side costs no division per element).
 */
function storageIndices(view: StridedView): (i: number) => number {
  const { shape, strides } = view;
  const counter = new Array<number>(shape.length).fill(0);
  let position = view.offset;
  let at = 0;
  return (i) => {
    for (; at < i; at++) {
      for (let d = shape.length - 1; d >= 0; d--) {
        counter[d]!++;
        position += strides[d]!;
        if (counter[d]! < shape[d]!) break;
        position -= counter[d]! * strides[d]!;
        counter[d] = 0;
      }
    }
    return position;
  };
}

