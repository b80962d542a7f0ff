import { FormatError } from "../../errors.js";
import { DTYPES, type DType } from "../../tensor/dtype.js";
import { Storage } from "../../tensor/storage.js";
import { Tensor } from "../../tensor/tensor.js";
import { MAX_BUFFER_BYTES, readIntoExisting, type RandomAccessReader } from "../byte-io.js";
import { parseHeaderJson, type JsonNode } from "./header-json.js";

/**
 * The safetensors format (https://github.com/huggingface/safetensors): an 8-byte little-endian
 * header length N, N bytes of UTF-8 JSON `{name: {dtype, shape, data_offsets: [begin, end]},
 * "__metadata__": {str: str}}` padded with spaces, then the tensors' bytes. Offsets are relative
 * to the end of the header; the tensors tile the data exactly (no gaps, no overlaps, nothing after).
 */

/** Bytes before the JSON header: its length, a u64 little-endian. */
export const LENGTH_PREFIX_SIZE = 8;
/**
 * The largest header read: the reference implementation refuses larger ones (100 MB), so no valid
 * file has one, and a hostile length cannot make us allocate more.
 */
export const MAX_HEADER_SIZE = 100_000_000;
/** More dimensions than any real tensor has; a longer shape is an attack or garbage. */
export const MAX_RANK = 64;
/** The key of the string-to-string metadata map in the header. */
export const METADATA_KEY = "__metadata__";

export interface SafetensorsEntry {
  readonly name: string;
  readonly dtype: DType;
  readonly shape: readonly number[];
  /** Byte offsets of the tensor's data from the start of the file (not of the data section). */
  readonly begin: number;
  readonly end: number;
}

export interface SafetensorsHeader {
  /** Tensors in the order the header lists them. */
  readonly entries: readonly SafetensorsEntry[];
  /** `__metadata__`, in the header's order; undefined when the file has none. */
  readonly metadata: ReadonlyMap<string, string> | undefined;
  /** Where tensor data starts: 8 + the header's length. */
  readonly dataStart: number;
}

const dtypeByName = new Map(Object.entries(DTYPES).map(([dtype, info]) => [info.safetensors, dtype as DType]));
/** Names of dtypes the format has that ckpt's tensors do not, to say so instead of "unknown". */
const FOREIGN_DTYPES = new Set(["U16", "U32", "U64", "F8_E5M2", "F8_E4M3", "F8_E8M0", "F6_E2M3", "F6_E3M2", "F4"]);

const utf8 = new TextDecoder("utf-8", { fatal: true });

/**
 * Reads and checks a safetensors header without touching the tensor data: every length and offset
 * is checked against a named limit and the file's size before anything is allocated.
 */
export async function readSafetensorsHeader(reader: RandomAccessReader): Promise<SafetensorsHeader> {
  const fileSize = reader.size;
  if (fileSize < LENGTH_PREFIX_SIZE) {
    throw new FormatError("SAFETENSORS_TRUNCATED", `the file has ${fileSize} bytes, too few for the 8-byte header length of a safetensors file`);
  }
  const prefix = await reader.read(0, LENGTH_PREFIX_SIZE);
  const headerLength = new DataView(prefix.buffer, prefix.byteOffset, LENGTH_PREFIX_SIZE).getBigUint64(0, true);
  if (headerLength > BigInt(MAX_HEADER_SIZE)) {
    throw new FormatError("SAFETENSORS_HEADER_SIZE", `the header length is ${headerLength} bytes, more than the ${MAX_HEADER_SIZE} a safetensors header may have`);
  }
  if (headerLength > BigInt(fileSize - LENGTH_PREFIX_SIZE)) {
    throw new FormatError("SAFETENSORS_TRUNCATED", `the header length is ${headerLength} bytes but only ${fileSize - LENGTH_PREFIX_SIZE} follow: the file is truncated or not safetensors`);
  }
  const length = Number(headerLength);
  const dataStart = LENGTH_PREFIX_SIZE + length;
  const bytes = await reader.read(LENGTH_PREFIX_SIZE, length);
  if (bytes[0] !== 0x7b /* { */) throw new FormatError("SAFETENSORS_JSON", "the header does not start with '{'");
  let text: string;
  try {
    text = utf8.decode(bytes);
  } catch (error) {
    throw new FormatError("SAFETENSORS_JSON", "the header is not valid UTF-8", { cause: error });
  }
  const root = parseHeaderJson(text);
  if (root.kind !== "object") throw new FormatError("SAFETENSORS_JSON", "the header is not a JSON object");

  const dataSize = fileSize - dataStart;
  const entries: SafetensorsEntry[] = [];
  let metadata: Map<string, string> | undefined;
  for (const [name, node] of root.entries) {
    if (name === METADATA_KEY) {
      metadata = readMetadata(node);
      continue;
    }
    entries.push(readEntry(name, node, dataStart, dataSize));
  }
  checkTiling(entries, dataStart, fileSize);
  return { entries, metadata, dataStart };
}

function readMetadata(node: JsonNode): Map<string, string> {
  if (node.kind !== "object") throw new FormatError("SAFETENSORS_METADATA", `${METADATA_KEY} is not an object of strings`);
  const metadata = new Map<string, string>();
  for (const [key, value] of node.entries) {
    if (value.kind !== "string") throw new FormatError("SAFETENSORS_METADATA", `${METADATA_KEY}.${key} is not a string`);
    metadata.set(key, value.value);
  }
  return metadata;
}

/** A non-negative integer from the header, as a bigint (offsets may exceed 2^53 in a hostile file). */
function readInteger(node: JsonNode | undefined, what: string): bigint {
  if (node?.kind !== "number" || !/^(0|[1-9]\d*)$/.test(node.text)) {
    throw new FormatError("SAFETENSORS_ENTRY", `${what} is not a non-negative integer`);
  }
  return BigInt(node.text);
}

function readEntry(name: string, node: JsonNode, dataStart: number, dataSize: number): SafetensorsEntry {
  const where = `tensor ${JSON.stringify(name)}`;
  if (node.kind !== "object") throw new FormatError("SAFETENSORS_ENTRY", `${where} is not an object`);
  const field = (key: string): JsonNode | undefined => node.entries.find(([k]) => k === key)?.[1];

  const dtypeNode = field("dtype");
  if (dtypeNode?.kind !== "string") throw new FormatError("SAFETENSORS_ENTRY", `${where} has no dtype string`);
  const dtype = dtypeByName.get(dtypeNode.value);
  if (dtype === undefined) {
    const why = FOREIGN_DTYPES.has(dtypeNode.value) ? "a safetensors dtype that ckpt's tensors do not support" : "not a safetensors dtype";
    throw new FormatError("SAFETENSORS_DTYPE", `${where} has dtype ${JSON.stringify(dtypeNode.value.slice(0, 40))}, ${why}`);
  }

  const shapeNode = field("shape");
  if (shapeNode?.kind !== "array") throw new FormatError("SAFETENSORS_ENTRY", `${where} has no shape array`);
  if (shapeNode.items.length > MAX_RANK) throw new FormatError("SAFETENSORS_ENTRY", `${where} has ${shapeNode.items.length} dimensions, more than ${MAX_RANK}`);
  let numel = 1n;
  const shape = shapeNode.items.map((item, d) => {
    const size = readInteger(item, `dimension ${d} of ${where}`);
    numel *= size;
    return size;
  });

  const offsetsNode = field("data_offsets");
  if (offsetsNode?.kind !== "array" || offsetsNode.items.length !== 2) throw new FormatError("SAFETENSORS_ENTRY", `${where} has no data_offsets [begin, end]`);
  const begin = readInteger(offsetsNode.items[0], `the begin offset of ${where}`);
  const end = readInteger(offsetsNode.items[1], `the end offset of ${where}`);
  if (end < begin) throw new FormatError("SAFETENSORS_OFFSETS", `${where} ends (${end}) before it begins (${begin})`);
  if (end > BigInt(dataSize)) {
    throw new FormatError("SAFETENSORS_OFFSETS", `${where} ends at ${end}, past the ${dataSize} bytes of data in the file`);
  }
  const expected = numel * BigInt(DTYPES[dtype].itemSize);
  if (expected !== end - begin) {
    throw new FormatError("SAFETENSORS_SIZE", `${where} has shape [${shape.join(", ")}] of ${dtype}, ${expected} bytes, but its data_offsets span ${end - begin} bytes`);
  }
  // Every size is now at most the file's size, so all of them are safe integers.
  return { name, dtype, shape: shape.map(Number), begin: dataStart + Number(begin), end: dataStart + Number(end) };
}

/** The tensors must cover the data section exactly, one after another, as the reference reader requires. */
function checkTiling(entries: readonly SafetensorsEntry[], dataStart: number, fileSize: number): void {
  const sorted = [...entries].sort((a, b) => a.begin - b.begin || a.end - b.end);
  let position = dataStart;
  for (const entry of sorted) {
    if (entry.begin < position) {
      throw new FormatError("SAFETENSORS_OFFSETS", `tensor ${JSON.stringify(entry.name)} (data_offsets [${entry.begin - dataStart}, ${entry.end - dataStart}]) overlaps the tensor before it`);
    }
    if (entry.begin > position) {
      throw new FormatError("SAFETENSORS_OFFSETS", `there is a gap of ${entry.begin - position} bytes before tensor ${JSON.stringify(entry.name)}`);
    }
    position = entry.end;
  }
  if (position !== fileSize) {
    throw new FormatError("SAFETENSORS_OFFSETS", `the tensors end at byte ${position} but the file has ${fileSize} bytes (${fileSize - position} bytes belong to no tensor)`);
  }
}

export interface SafetensorsReadOptions {
  /**
   * Where to read a tensor's bytes: a buffer of exactly its size (an existing tensor's memory),
   * or undefined to let the reader choose (a view of the reader's memory when it has the file).
   */
  target?: (entry: SafetensorsEntry) => Uint8Array | undefined;
  /** Called after each tensor, with bytes done and bytes in all. */
  onProgress?: (bytesDone: number, bytesTotal: number) => void;
}

/**
 * Reads a safetensors file: the header, then each tensor in file order. Over bytes in memory
 * (MemoryReader, SegmentedReader) the tensors are views of them (no copies). Returns the tensors in the header's order.
 */
export async function readSafetensors(
  reader: RandomAccessReader,
  options: SafetensorsReadOptions = {},
): Promise<{ header: SafetensorsHeader; tensors: [string, Tensor][] }> {
  const header = await readSafetensorsHeader(reader);
  return { header, tensors: await readSafetensorsData(reader, header, options) };
}

/** Reads the tensors of a header already read, in file order; returns them in the header's order. */
export async function readSafetensorsData(
  reader: RandomAccessReader,
  header: SafetensorsHeader,
  options: SafetensorsReadOptions = {},
): Promise<[string, Tensor][]> {
  const tensors = new Map<string, Tensor>();
  const total = reader.size - header.dataStart;
  let done = 0;
  // Every tensor's size before the first is read: one too large for a buffer is refused up front.
  for (const entry of header.entries) {
    const length = entry.end - entry.begin;
    if (length > MAX_BUFFER_BYTES) {
      throw new FormatError("SAFETENSORS_SIZE", `tensor ${JSON.stringify(entry.name)} has ${length} bytes, more than the ${MAX_BUFFER_BYTES} one Node.js buffer can hold`);
    }
  }
  for (const entry of [...header.entries].sort((a, b) => a.begin - b.begin)) {
    const length = entry.end - entry.begin;
    const target = options.target?.(entry);
    if (target !== undefined && target.byteLength !== length) throw new RangeError(`the target for ${entry.name} has ${target.byteLength} bytes, not ${length}`);
    const bytes = length === 0 ? new Uint8Array(0) : target === undefined ? await reader.read(entry.begin, length) : await readIntoExisting(reader, entry.begin, length, target);
    tensors.set(entry.name, new Tensor({ storage: new Storage(entry.dtype, bytes), shape: entry.shape }));
    done += length;
    options.onProgress?.(done, total);
  }
  return header.entries.map((entry) => [entry.name, tensors.get(entry.name)!]);
}
