import { FormatError } from "../../errors.js";
import { DTYPES } from "../../tensor/dtype.js";
import type { Tensor } from "../../tensor/tensor.js";
import type { ByteSink } from "../byte-io.js";
import { LENGTH_PREFIX_SIZE, MAX_HEADER_SIZE, METADATA_KEY } from "./safetensors-reader.js";

/** The header is padded with spaces so the data starts at a multiple of this (as the reference writer does). */
const HEADER_ALIGNMENT = 8;

/**
 * Writes a safetensors file: `tensors` in the header in the order given, `metadata` first as
 * `__metadata__`. In the data, tensors are placed by element size, largest first (8, 4, 2, 1
 * bytes), keeping their order otherwise: with the data section starting at a multiple of 8, every
 * tensor is then aligned to its element size, so readers can view it without copying. Views of
 * one storage are written once each (safetensors has no shared storage); non-contiguous tensors
 * are written in row-major order.
 */
export async function writeSafetensors(
  tensors: Iterable<readonly [string, Tensor]>,
  metadata: ReadonlyMap<string, string> | undefined,
  sink: ByteSink,
  options: { onProgress?: ((bytesDone: number, bytesTotal: number) => void) | undefined } = {},
): Promise<{ size: number }> {
  const list = [...tensors];
  const names = new Set<string>();
  for (const [name] of list) {
    if (typeof name !== "string") throw new FormatError("SAFETENSORS_NAME", "a tensor name is not a string");
    if (name === METADATA_KEY) throw new FormatError("SAFETENSORS_NAME", `a tensor cannot be named ${METADATA_KEY}`);
    if (names.has(name)) throw new FormatError("SAFETENSORS_NAME", `two tensors are named ${JSON.stringify(name)}`);
    names.add(name);
  }
  const order = list.map((item, index) => ({ index, itemSize: DTYPES[item[1].dtype].itemSize }))
    .sort((a, b) => b.itemSize - a.itemSize || a.index - b.index);
  const offsets = new Array<[number, number]>(list.length);
  let position = 0;
  for (const { index } of order) {
    const length = list[index]![1].byteLength;
    offsets[index] = [position, position + length];
    position += length;
  }

  const parts: string[] = [];
  if (metadata !== undefined) {
    const fields = [...metadata].map(([key, value]) => {
      if (typeof key !== "string" || typeof value !== "string") throw new FormatError("SAFETENSORS_METADATA", "metadata keys and values must be strings");
      return `${JSON.stringify(key)}:${JSON.stringify(value)}`;
    });
    parts.push(`${JSON.stringify(METADATA_KEY)}:{${fields.join(",")}}`);
  }
  list.forEach(([name, tensor], index) => {
    const [begin, end] = offsets[index]!;
    parts.push(`${JSON.stringify(name)}:{"dtype":"${DTYPES[tensor.dtype].safetensors}","shape":[${tensor.shape.join(",")}],"data_offsets":[${begin},${end}]}`);
  });
  const json = new TextEncoder().encode(`{${parts.join(",")}}`);
  const headerLength = Math.ceil(json.byteLength / HEADER_ALIGNMENT) * HEADER_ALIGNMENT;
  if (headerLength > MAX_HEADER_SIZE) {
    throw new FormatError("SAFETENSORS_HEADER_SIZE", `the header would have ${headerLength} bytes, more than the ${MAX_HEADER_SIZE} readers accept`);
  }
  const head = new Uint8Array(LENGTH_PREFIX_SIZE + headerLength).fill(0x20);
  new DataView(head.buffer).setBigUint64(0, BigInt(headerLength), true);
  head.set(json, LENGTH_PREFIX_SIZE);
  const total = head.byteLength + position;
  sink.expectBytes?.(total);
  await sink.write(head);
  let done = head.byteLength;
  for (const { index } of order) {
    const tensor = list[index]![1];
    if (tensor.numel === 0) continue;
    await sink.write(tensor.bytes);
    done += tensor.byteLength;
    options.onProgress?.(done, total);
  }
  return { size: head.byteLength + position };
}
