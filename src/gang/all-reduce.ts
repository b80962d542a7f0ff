import { GangError, InvalidArgumentError } from "../errors.js";
import type { Gang, JsonValue } from "./gang.js";

/**
 * The most elements `allReduceSum` takes. The values travel base64-encoded inside a JSON message
 * (through the launcher or Redis) and the relay holds every rank's copy at once: 4 Mi float32
 * values (16 MiB, about 21 MiB as base64, per rank) is already a lot for that path. Larger
 * models need a real interconnect, which this library does not provide.
 */
export const MAX_ALL_REDUCE_ELEMENTS = 4 * 1024 * 1024;

/** Checks what a caller passes to `allReduceSum` (public boundary). */
export function checkAllReduceInput(values: unknown): asserts values is Float32Array {
  if (!(values instanceof Float32Array)) throw new InvalidArgumentError(`allReduceSum takes a Float32Array, got ${describe(values)}`);
  if (values.length > MAX_ALL_REDUCE_ELEMENTS) {
    throw new InvalidArgumentError(
      `allReduceSum is for small arrays (at most ${MAX_ALL_REDUCE_ELEMENTS} elements, MAX_ALL_REDUCE_ELEMENTS), got ${values.length}`,
    );
  }
}

/**
 * `allReduceSum` over any gang's `allGather`: each rank sends its bytes as base64 (floats as JSON
 * numbers would lose NaN payloads and cost more), and every rank adds the arrays in rank order.
 */
export async function allReduceSumByGather(gang: Gang, values: Float32Array): Promise<Float32Array> {
  checkAllReduceInput(values);
  const encoded = Buffer.from(values.buffer, values.byteOffset, values.byteLength).toString("base64");
  const gathered = await gang.allGather({ allReduceSum: encoded, length: values.length });
  const arrays = gathered.map((message, rank) => decode(message, rank, values.length));
  return sumInRankOrder(arrays);
}

/**
 * The element-wise sum, added in rank order in float64 and rounded to float32 once: the same
 * inputs give the same bits on every rank and in every run (a resumed run must match bit for bit).
 */
export function sumInRankOrder(arrays: readonly Float32Array[]): Float32Array {
  const length = arrays[0]?.length ?? 0;
  const sum = new Float64Array(length);
  for (const array of arrays) for (let i = 0; i < length; i++) sum[i]! += array[i]!;
  return Float32Array.from(sum);
}

function decode(message: JsonValue, rank: number, expectedLength: number): Float32Array {
  const fields: { [key: string]: JsonValue } = typeof message === "object" && message !== null && !Array.isArray(message) ? message : {};
  const { allReduceSum: encoded, length } = fields;
  if (typeof encoded !== "string" || typeof length !== "number") {
    throw new GangError(`allReduceSum: rank ${rank} is in another collective (it sent ${JSON.stringify(message)?.slice(0, 80)})`, { rank });
  }
  if (length !== expectedLength) {
    throw new GangError(`allReduceSum: rank ${rank} passed ${length} values, this rank ${expectedLength}; every rank must pass the same length`, { rank });
  }
  const bytes = Buffer.from(encoded, "base64");
  if (bytes.byteLength !== length * Float32Array.BYTES_PER_ELEMENT) throw new GangError(`allReduceSum: rank ${rank} sent ${bytes.byteLength} bytes for ${length} values`, { rank });
  // Copy into an aligned buffer: Buffer.from may return a view at any offset of a shared pool.
  const array = new Float32Array(length);
  new Uint8Array(array.buffer).set(bytes);
  return array;
}

function describe(value: unknown): string {
  if (value === null) return "null";
  if (typeof value === "object") return value.constructor?.name ?? "an object";
  return typeof value;
}
