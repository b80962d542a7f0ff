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
 * Reads element `i` (row-major) of a tensor as a number: 16-bit floats decoded, bools as 0/1,
 * int64 rounded to the nearest float64 (exact up to 2^53), complex64 as its magnitude |z|.
 * Reads from a view of the tensor's memory when it is contiguous: no copy of the whole tensor.
 */
export function elementReader(tensor: Tensor): (i: number) => number {
  const data = tensor.data;
  switch (tensor.dtype) {
    case "float16":
      return (i) => float16ToNumber(data[i] as number);
    case "bfloat16":
      return (i) => bfloat16ToNumber(data[i] as number);
    case "int64":
      return (i) => Number(data[i] as bigint);
    case "complex64": {
      const pairs = data as Float32Array;
      return (i) => Math.hypot(pairs[2 * i]!, pairs[2 * i + 1]!);
    }
    default:
      return (i) => data[i] as number;
  }
}

/** The tensor's elements as float64 numbers in row-major order (see elementReader for how dtypes are read). */
export function tensorToNumbers(tensor: Tensor): Float64Array {
  const read = elementReader(tensor);
  const out = new Float64Array(tensor.numel);
  for (let i = 0; i < out.length; i++) out[i] = read(i);
  return out;
}

export interface TensorStats {
  numel: number;
  /** Over the finite elements; undefined when there are none. */
  min: number | undefined;
  max: number | undefined;
  mean: number | undefined;
  /** Standard deviation (population) of the finite elements. */
  std: number | undefined;
  nanCount: number;
  infCount: number;
}

/**
 * Summary statistics of a tensor's elements (see tensorToNumbers for how dtypes are read).
 *
 * @example
 * const { min, max, mean, nanCount } = tensorStats(weight);
 */
export function tensorStats(tensor: Tensor): TensorStats {
  const read = elementReader(tensor);
  const numel = tensor.numel;
  let min = Infinity;
  let max = -Infinity;
  let sum = 0;
  let finite = 0;
  let nanCount = 0;
  let infCount = 0;
  for (let i = 0; i < numel; i++) {
    const v = read(i);
    if (Number.isNaN(v)) nanCount++;
    else if (!Number.isFinite(v)) infCount++;
    else {
      finite++;
      sum += v;
      if (v < min) min = v;
      if (v > max) max = v;
    }
  }
  if (finite === 0) return { numel, min: undefined, max: undefined, mean: undefined, std: undefined, nanCount, infCount };
  const mean = sum / finite;
  let squares = 0;
  for (let i = 0; i < numel; i++) {
    const v = read(i);
    if (Number.isFinite(v)) squares += (v - mean) ** 2;
  }
  return { numel, min, max, mean, std: Math.sqrt(squares / finite), nanCount, infCount };
}

export interface TensorDifference {
  /** The largest |a - b| over elements where both are finite (0 when none differ). */
  maxAbsDiff: number;
  /** Elements that differ by more than the tolerance, or where only one is NaN, or infinities differ. */
  differing: number;
}

/**
 * Compares two tensors of the same shape element by element (dtypes may differ: values are read
 * as numbers). NaN equals NaN, as a saved-and-loaded NaN should.
 *
 * @example
 * const { maxAbsDiff, differing } = tensorDifference(before, after, 1e-6);
 */
export function tensorDifference(a: Tensor, b: Tensor, tolerance = 0): TensorDifference {
  if (a.numel !== b.numel) throw new RangeError(`cannot compare ${a.numel} elements with ${b.numel}`);
  const readA = elementReader(a);
  const readB = elementReader(b);
  let maxAbsDiff = 0;
  let differing = 0;
  for (let i = 0; i < a.numel; i++) {
    const x = readA(i);
    const y = readB(i);
    if (Number.isNaN(x) || Number.isNaN(y)) {
      if (Number.isNaN(x) !== Number.isNaN(y)) differing++;
    } else if (!Number.isFinite(x) || !Number.isFinite(y)) {
      if (x !== y) differing++;
    } else {
      const d = Math.abs(x - y);
      if (d > maxAbsDiff) maxAbsDiff = d;
      if (d > tolerance) differing++;
    }
  }
  return { maxAbsDiff, differing };
}
