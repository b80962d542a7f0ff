import { crc32 } from "../crc32.js";
import { FormatError } from "../../errors.js";
import { DTYPES } from "../../tensor/dtype.js";
import { Storage } from "../../tensor/storage.js";
import type { StateValue } from "../../values/py-values.js";
import { MAX_BUFFER_BYTES, type RandomAccessReader } from "../byte-io.js";
import { unpickleAt, type UnpickleOptions } from "../pickle/unpickler.js";
import { mayHoldShardedRecords, reviveShardedTensors } from "./sharded-record.js";
import { StorageView, TorchStorageType, buildTorchObject, findTorchGlobal } from "./torch-globals.js";

/**
 * The legacy format of `torch.save` (PyTorch before 1.6, and `_use_new_zipfile_serialization=False`
 * since): five pickles in a row — the magic number, the protocol version, system info, the state
 * (storages as persistent ids), the sorted list of storage keys — then, for each key in that
 * order, the storage's element count as a little-endian int64 and its raw little-endian bytes.
 */
export const LEGACY_MAGIC_NUMBER = 0x1950a86a20f9469cfc6cn;
export const LEGACY_PROTOCOL_VERSION = 1001;

/** Bytes of each storage record before its data: the element count, an int64. */
export const RECORD_HEADER_SIZE = 8;

/**
 * The pickles are read from a window at the start of the file that doubles until they fit. A
 * state's pickle holds no tensor data: kilobytes to a few megabytes even for large models. A
 * pickle that does not end within this many bytes is a broken or hostile file, not a state.
 */
export const MAX_LEGACY_PICKLE_BYTES = 1 << 30;
const FIRST_WINDOW = 1 << 20;


/** Enough of a file's start to tell the legacy format (a pickle) and a tar archive ("ustar" at 257). */
const HEAD_BYTES = 262;

/**
 * Whether a `.pt` file is in the legacy format: it starts with a pickle (`0x80`, protocol 2–5)
 * where the zip format starts with `PK`. A tar archive, the format of the earliest PyTorch
 * versions, is refused by name.
 */
export async function isLegacyTorchFile(reader: RandomAccessReader): Promise<boolean> {
  const head = await reader.read(0, Math.min(reader.size, HEAD_BYTES));
  if (head.length >= 2 && head[0] === 0x80 && head[1]! >= 2 && head[1]! <= 5) return true;
  if (head.length >= HEAD_BYTES && new TextDecoder("latin1").decode(head.subarray(257, 262)) === "ustar") {
    throw new FormatError("TORCH_LEGACY_TAR", "a tar archive: the tar-based format of the earliest PyTorch versions is not supported; load it with torch.load and save it again");
  }
  return false;
}

/** The pickles at the start of a legacy file, and where the storage records begin. */
interface LegacyHeader {
  state: StateValue;
  /** Storages in the order of the key list, which is their order in the file. */
  storages: { key: string; storage: Storage }[];
  dataStart: number;
  /** The window the pickles were read from (for the CRC of the bytes before `dataStart`). */
  window: Uint8Array;
  pickleBytes: Uint8Array;
}

/** One storage's record in a legacy file: its int64 element count at `at`, then `size` bytes. */
export interface LegacyRecord {
  key: string;
  storage: Storage;
  at: number;
  size: number;
}

/** What a legacy file holds, before its storages' bytes are read. */
export interface LegacyStructure {
  /** The state; its tensors' storages are pending until their records are read. */
  state: StateValue;
  /** The storage records in file order; they tile the file from `dataStart` to its end. */
  records: LegacyRecord[];
  dataStart: number;
  /** The CRC-32 of the bytes before `dataStart` (the pickles), when asked for. */
  headerCrc: number | undefined;
  /** The file's first bytes, read for the pickles: records inside it need no second read. */
  window: Uint8Array;
}

/**
 * Reads the pickles of a legacy file and places its storage records: every storage's size is
 * checked against the file's when its persistent id is read, and the records must tile the rest
 * of the file exactly, before any storage is allocated.
 */
export async function readLegacyStructure(reader: RandomAccessReader, options: { crc?: boolean } = {}): Promise<LegacyStructure> {
  const header = await readHeader(reader);
  const state = mayHoldShardedRecords(header.pickleBytes) ? (reviveShardedTensors(header.state) as StateValue) : header.state;
  let position = header.dataStart;
  const records = header.storages.map(({ key, storage }): LegacyRecord => {
    const size = storage.numel * DTYPES[storage.dtype].itemSize;
    const record = { key, storage, at: position, size };
    position += RECORD_HEADER_SIZE + size;
    if (size > MAX_BUFFER_BYTES) {
      throw new FormatError("TORCH_LEGACY_LIMIT", `storage "${key}" has ${size} bytes, more than one Node.js buffer holds (MAX_BUFFER_BYTES = ${MAX_BUFFER_BYTES})`);
    }
    if (position > reader.size) {
      throw new FormatError("TORCH_LEGACY_TRUNCATED", `truncated: storage "${key}" (${storage.numel} ${storage.dtype} elements) ends at byte ${position} but the file has ${reader.size} bytes`);
    }
    return record;
  });
  if (position !== reader.size) {
    throw new FormatError("TORCH_LEGACY_LAYOUT", `${reader.size - position} bytes follow the last storage (the storages end at byte ${position} of ${reader.size})`);
  }
  const headerCrc = options.crc === true ? crc32(header.window.subarray(0, header.dataStart)) : undefined;
  return { state, records, dataStart: header.dataStart, headerCrc, window: header.window };
}

/**
 * Reads one storage record: one read into a new buffer (the data 8 bytes in, aligned for every
 * dtype), or, with `target`, the count and then the data straight into the target. Checks the
 * recorded count; returns the count's bytes and the data (not yet attached to the storage).
 */
export async function readLegacyRecord(reader: RandomAccessReader, record: LegacyRecord, target?: Uint8Array): Promise<{ count: Uint8Array; data: Uint8Array }> {
  const { at, size } = record;
  let count: Uint8Array;
  let data: Uint8Array;
  if (target === undefined) {
    const bytes = await reader.read(at, RECORD_HEADER_SIZE + size);
    count = bytes.subarray(0, RECORD_HEADER_SIZE);
    data = bytes.subarray(RECORD_HEADER_SIZE);
  } else {
    count = await reader.read(at, RECORD_HEADER_SIZE);
    data = await reader.read(at + RECORD_HEADER_SIZE, size, target);
  }
  checkCount(record, count);
  return { count, data };
}

/** Reads only a record's element count and checks it (8 bytes, not the data). */
export async function checkLegacyRecordCount(reader: RandomAccessReader, record: LegacyRecord): Promise<void> {
  checkCount(record, await reader.read(record.at, RECORD_HEADER_SIZE));
}

/** Checks a record's int64 element count (its first 8 bytes) against the state's numel. */
export function checkCount({ key, storage, at }: LegacyRecord, count: Uint8Array): void {
  const recorded = new DataView(count.buffer, count.byteOffset, RECORD_HEADER_SIZE).getBigInt64(0, true);
  if (recorded !== BigInt(storage.numel)) {
    throw new FormatError("TORCH_LEGACY_STORAGE", `storage "${key}" at byte ${at} records ${recorded} elements but the state uses it as ${storage.numel} ${storage.dtype} elements`);
  }
}

/** Reads the five pickles, from a window that doubles until they fit in it. */
async function readHeader(reader: RandomAccessReader): Promise<LegacyHeader> {
  const limit = Math.min(reader.size, MAX_LEGACY_PICKLE_BYTES);
  for (let length = Math.min(FIRST_WINDOW, limit); ; length = Math.min(length * 2, limit)) {
    const window = await reader.read(0, length);
    try {
      return parseHeader(window, reader.size);
    } catch (error) {
      if (!(error instanceof FormatError && error.code === "PICKLE_TRUNCATED")) throw error;
      if (length < limit) continue; // cut off by the window, not by the file: read more, parse again
      if (limit < reader.size) {
        throw new FormatError("TORCH_LEGACY_LIMIT", `the pickles at the start do not end within ${MAX_LEGACY_PICKLE_BYTES} bytes (MAX_LEGACY_PICKLE_BYTES): not a state`, { cause: error });
      }
      throw new FormatError("TORCH_LEGACY_TRUNCATED", `truncated: the file ends inside its pickles (${error.message})`, { cause: error });
    }
  }
}

function parseHeader(window: Uint8Array, fileSize: number): LegacyHeader {
  const plain: UnpickleOptions = {
    findGlobal: (module, name) => {
      throw new FormatError("TORCH_LEGACY_HEADER", `the header of a legacy file names the global ${module}.${name}; it holds plain values only`);
    },
  };
  const step = (what: string, start: number, options: UnpickleOptions): { value: unknown; end: number } => {
    try {
      return unpickleAt(window, start, options);
    } catch (error) {
      if (error instanceof FormatError && error.code.startsWith("TORCH_")) throw error;
      const code = error instanceof FormatError ? error.code : "TORCH_LEGACY_HEADER";
      throw new FormatError(code, `${what} (the pickle at byte ${start}): ${(error as Error).message}`, { cause: error });
    }
  };

  const magic = step("the magic number", 0, plain);
  if (magic.value !== LEGACY_MAGIC_NUMBER) {
    throw new FormatError("TORCH_LEGACY_HEADER", `bad magic number ${describeValue(magic.value)}: a legacy torch.save file starts with 0x${LEGACY_MAGIC_NUMBER.toString(16)}`);
  }
  const protocol = step("the protocol version", magic.end, plain);
  if (protocol.value !== LEGACY_PROTOCOL_VERSION) {
    throw new FormatError("TORCH_LEGACY_HEADER", `protocol version ${describeValue(protocol.value)} is not ${LEGACY_PROTOCOL_VERSION}, the only one torch.save has written`);
  }
  const sysInfo = step("the system info", protocol.end, plain);
  const info = sysInfo.value as Record<string, unknown> | null;
  if (typeof info !== "object" || info === null || Array.isArray(info) || info.protocol_version !== LEGACY_PROTOCOL_VERSION) {
    throw new FormatError("TORCH_LEGACY_HEADER", `the system info is not a dict with protocol_version ${LEGACY_PROTOCOL_VERSION}: ${describeValue(info)}`);
  }
  // Storage data is little-endian whatever the machine (PyTorch swaps when it writes on a big-endian one).

  const storages = new Map<string, Storage>();
  const views = new Map<string, StorageView>();
  const persistentLoad = (pid: unknown): Storage | StorageView => loadStorage(pid, storages, views, fileSize);
  const object = step("the state", sysInfo.end, { findGlobal: findTorchGlobal, persistentLoad, build: buildTorchObject });

  const keys = step("the storage key list", object.end, plain);
  if (!Array.isArray(keys.value) || !keys.value.every((key) => typeof key === "string")) {
    throw new FormatError("TORCH_LEGACY_HEADER", `the storage key list is not a list of strings: ${describeValue(keys.value)}`);
  }
  const listed = new Set<string>();
  const ordered = (keys.value as string[]).map((key) => {
    const storage = storages.get(key);
    if (storage === undefined) throw new FormatError("TORCH_LEGACY_STORAGE", `the key list names storage "${key}", which the state does not use`);
    if (listed.has(key)) throw new FormatError("TORCH_LEGACY_STORAGE", `the key list names storage "${key}" twice`);
    listed.add(key);
    return { key, storage };
  });
  for (const key of storages.keys()) {
    if (!listed.has(key)) throw new FormatError("TORCH_LEGACY_STORAGE", `storage "${key}" is used by the state but missing from the key list, so its data is not in the file`);
  }
  return { state: object.value as StateValue, storages: ordered, dataStart: keys.end, window, pickleBytes: window.subarray(sysInfo.end, object.end) };
}

/**
 * A legacy persistent id: `('storage', torch.<Type>Storage, root_key, location, numel, view)`,
 * `view` None or `(view_key, offset, numel)`. Sizes are checked against the file before any use.
 */
function loadStorage(pid: unknown, storages: Map<string, Storage>, views: Map<string, StorageView>, fileSize: number): Storage | StorageView {
  if (Array.isArray(pid) && pid[0] === "module") {
    throw new FormatError("TORCH_PERSID", "the file holds a pickled nn.Module (a whole model object), which is code: save its state_dict() instead");
  }
  if (!Array.isArray(pid) || pid.length !== 6 || pid[0] !== "storage") {
    throw new FormatError("TORCH_PERSID", "a persistent id is not ('storage', type, key, location, numel, view)");
  }
  const [, type, key, location, numel, view] = pid as unknown[];
  if (!(type instanceof TorchStorageType) || typeof key !== "string" || typeof location !== "string" || typeof numel !== "number" || !Number.isSafeInteger(numel) || numel < 0) {
    throw new FormatError("TORCH_PERSID", "a storage's persistent id has fields of the wrong type");
  }
  const { itemSize } = DTYPES[type.dtype];
  if (numel * itemSize > fileSize) {
    throw new FormatError("TORCH_LEGACY_STORAGE", `storage "${key}" claims ${numel} ${type.dtype} elements (${numel * itemSize} bytes) but the whole file has ${fileSize} bytes`);
  }
  let storage = storages.get(key);
  if (storage === undefined) {
    storage = Storage.pending(type.dtype, numel);
    storages.set(key, storage);
  } else if (storage.dtype !== type.dtype || storage.numel !== numel) {
    throw new FormatError("TORCH_STORAGE", `storage "${key}" is used as both ${storage.numel} ${storage.dtype} and ${numel} ${type.dtype} elements`);
  }
  if (view === null) return storage;
  if (!Array.isArray(view) || view.length !== 3 || typeof view[0] !== "string" || !Number.isSafeInteger(view[1]) || !Number.isSafeInteger(view[2])) {
    throw new FormatError("TORCH_PERSID", `the view of storage "${key}" is not (key, offset, numel)`);
  }
  const [viewKey, offset, viewNumel] = view as [string, number, number];
  if (offset < 0 || viewNumel < 0 || offset + viewNumel > numel) {
    throw new FormatError("TORCH_LEGACY_STORAGE", `the view "${viewKey}" of storage "${key}" covers elements ${offset} to ${offset + viewNumel} of ${numel}`);
  }
  const known = views.get(viewKey);
  if (known !== undefined) {
    if (known.storage !== storage || known.offset !== offset || known.numel !== viewNumel) throw new FormatError("TORCH_STORAGE", `storage view "${viewKey}" is defined twice, differently`);
    return known;
  }
  const made = new StorageView(storage, offset, viewNumel);
  views.set(viewKey, made);
  return made;
}

function describeValue(value: unknown): string {
  if (typeof value === "bigint") return `0x${value.toString(16)}`;
  if (typeof value === "string") return JSON.stringify(value.slice(0, 40));
  if (typeof value === "number" || typeof value === "boolean" || value === null || value === undefined) return String(value);
  return Array.isArray(value) ? "a list" : "a dict";
}
