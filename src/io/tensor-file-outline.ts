import { crc32 } from "../formats/crc32.js";
import { FormatError } from "../errors.js";
import type { RandomAccessReader } from "../formats/byte-io.js";
import { readSafetensorsHeader, type SafetensorsEntry } from "../formats/safetensors/safetensors-reader.js";
import { checkLegacyRecordCount, isLegacyTorchFile, readLegacyRecord, readLegacyStructure, type LegacyStructure } from "../formats/torch/legacy-reader.js";
import { readTorchStructure } from "../formats/torch/torch-reader.js";
import { ZipReader } from "../formats/zip/zip-reader.js";
import type { FileSystem } from "../fs/file-system.js";
import { LocalFileSystem } from "../fs/local-file-system.js";
import { swapByteOrder } from "../tensor/byte-order.js";
import { DTYPES } from "../tensor/dtype.js";
import { Storage } from "../tensor/storage.js";
import { Tensor } from "../tensor/tensor.js";
import type { StateValue } from "../values/py-values.js";
import { isShardIndexPath } from "../formats/shard-index.js";
import { AutoTensorLoader, type TensorFileFormat } from "./auto-tensor-io.js";
import { checkDigestCrc, checkDigestSize, readingFile } from "./file-access.js";
import { STATE_LAYOUT_KEY, unflattenState } from "./safetensors-state.js";
import { assembleIndexedState, dictEntries, findShards, readShardIndex } from "./shard-index-io.js";
import type { FileDigest } from "./tensor-io.js";

/**
 * Streamed checks read the file in pieces of this size into one buffer, whatever the file's size:
 * large enough for full disk speed, small enough that memory stays flat.
 */
const CHUNK_SIZE = 8 << 20;

/** A tensor file's structure, read without its tensors' bytes. */
export interface TensorFileOutline {
  path: string;
  format: TensorFileFormat;
  /** The file's size in bytes. */
  size: number;
  /** The state, whose tensors have their dtype, shape and strides but no bytes until `readTensorData`. */
  state: StateValue;
  /** A safetensors file's `__metadata__` (without the `ckpt.state` layout), an index's `metadata`; empty for `.pt`. */
  metadata: Map<string, string>;
  /**
   * Set for a shard index: each shard's file name, format, size and tensor names. `state` is then
   * every shard's tensors in one dict, `size` the shards' sizes added up, `format` the first shard's.
   */
  shards?: { file: string; format: TensorFileFormat; size: number; tensors: string[] }[];
  /**
   * Reads the bytes of a tensor's storage (for `.pt`, checking the entry's CRC-32), after which
   * its data can be used. Reading the same storage again does nothing.
   */
  readTensorData(tensor: Tensor): Promise<void>;
}

export interface TensorFileOutlineOptions {
  fileSystem?: FileSystem;
}

/**
 * Reads what a `.pt` or safetensors file holds without reading its tensors' bytes: for `.pt` the
 * zip directory and the small entries (the pickle, the version) — for a legacy `.pt` its pickles —
 * for safetensors the header. A
 * 3 GB checkpoint is listed in a few small reads; `readTensorData` then reads only the tensors
 * asked for. Errors are TensorLoadErrors naming the file, as the loaders throw.
 *
 * @example
 * const outline = await readTensorFileOutline("model.pt");
 * const weight = (outline.state as StateDict)["linear.weight"] as Tensor; // dtype and shape known
 * await outline.readTensorData(weight); // now weight.data can be read
 */
export async function readTensorFileOutline(path: string, options: TensorFileOutlineOptions = {}): Promise<TensorFileOutline> {
  const fileSystem = options.fileSystem ?? new LocalFileSystem();
  if (isShardIndexPath(path)) return outlineIndex(fileSystem, path);
  const format = await new AutoTensorLoader({ fileSystem }).detect(path);
  if (format === "safetensors") return outlineSafetensors(fileSystem, path);
  return outlineTorch(fileSystem, path);
}

async function outlineTorch(fileSystem: FileSystem, path: string): Promise<TensorFileOutline> {
  const opened = await readingFile(fileSystem, path, "PyTorch", async (reader) => {
    if (await isLegacyTorchFile(reader)) return { legacy: await readLegacyStructure(reader), size: reader.size };
    const zip = await ZipReader.open(reader);
    return { zip, size: reader.size, structure: await readTorchStructure(zip) };
  });
  if (opened.legacy !== undefined) return outlineLegacy(fileSystem, path, opened.size, opened.legacy);
  const { zip, size, structure } = opened;
  const entries = new Map(structure.storages.map((storage, i) => [storage, structure.entries[i]!]));
  return {
    path,
    format: "pt",
    size,
    state: structure.state,
    metadata: new Map(),
    readTensorData: async (tensor) => {
      const entry = entries.get(tensor.storage);
      if (entry === undefined || isRead(tensor.storage)) return;
      await readingFile(fileSystem, path, "PyTorch", async (reader) => {
        const storage = tensor.storage;
        const bytes = await zip.withReader(reader).readEntry(entry);
        if (structure.bigEndian) swapByteOrder(bytes, storage.dtype === "complex64" ? 4 : DTYPES[storage.dtype].itemSize);
        storage.attach(bytes);
      });
    },
  };
}

/**
 * A shard index: every shard's outline, their tensors in one dict checked against the index as
 * loading checks them; a tensor's bytes are read from its shard when asked for.
 */
async function outlineIndex(fileSystem: FileSystem, path: string): Promise<TensorFileOutline> {
  const index = await readShardIndex(fileSystem, path);
  const shards = await findShards(fileSystem, path, index);
  const outlines: TensorFileOutline[] = [];
  for (const shard of shards) outlines.push(await readTensorFileOutline(shard.path, { fileSystem }));
  const state = assembleIndexedState(path, index, shards, outlines.map((outline) => outline.state));
  const owners = new Map<Storage, TensorFileOutline>();
  for (const outline of outlines) for (const [, value] of dictEntries(outline.state)!) owners.set((value as Tensor).storage, outline);
  return {
    path,
    format: outlines[0]?.format ?? "safetensors",
    size: shards.reduce((sum, shard) => sum + shard.size, 0),
    state,
    metadata: index.metadata,
    shards: shards.map((shard, i) => ({ file: shard.file, format: outlines[i]!.format, size: shard.size, tensors: shard.tensors })),
    readTensorData: async (tensor) => owners.get(tensor.storage)?.readTensorData(tensor),
  };
}

/** A legacy `.pt` file: its pickles are read, each storage's record is read when asked for. */
function outlineLegacy(fileSystem: FileSystem, path: string, size: number, legacy: LegacyStructure): TensorFileOutline {
  const records = new Map(legacy.records.map((record) => [record.storage, record]));
  return {
    path,
    format: "pt",
    size,
    state: legacy.state,
    metadata: new Map(),
    readTensorData: async (tensor) => {
      const record = records.get(tensor.storage);
      if (record === undefined || isRead(tensor.storage)) return;
      await readingFile(fileSystem, path, "PyTorch", async (reader) => {
        if (reader.size !== size) throw new FormatError("TORCH_LEGACY_TRUNCATED", `the file changed size (${size} bytes, now ${reader.size}) since its pickles were read`);
        tensor.storage.attach((await readLegacyRecord(reader, record)).data);
      });
    },
  };
}

async function outlineSafetensors(fileSystem: FileSystem, path: string): Promise<TensorFileOutline> {
  const { header, size } = await readingFile(fileSystem, path, "safetensors", async (reader) => ({ header: await readSafetensorsHeader(reader), size: reader.size }));
  const entries = new Map<Storage, SafetensorsEntry>();
  const tensors = header.entries.map((entry): [string, Tensor] => {
    const storage = Storage.pending(entry.dtype, (entry.end - entry.begin) / DTYPES[entry.dtype].itemSize);
    entries.set(storage, entry);
    return [entry.name, new Tensor({ storage, shape: entry.shape })];
  });
  const metadata = new Map(header.metadata ?? []);
  const layout = metadata.get(STATE_LAYOUT_KEY);
  metadata.delete(STATE_LAYOUT_KEY);
  const state = await readingFile(fileSystem, path, "safetensors", async () => unflattenState(tensors, layout));
  return {
    path,
    format: "safetensors",
    size,
    state,
    metadata,
    readTensorData: async (tensor) => {
      const entry = entries.get(tensor.storage);
      if (entry === undefined || isRead(tensor.storage)) return;
      await readingFile(fileSystem, path, "safetensors", async (reader) => {
        if (reader.size !== size) throw new FormatError("SAFETENSORS_TRUNCATED", `the file changed size (${size} bytes, now ${reader.size}) since its header was read`);
        tensor.storage.attach(entry.end === entry.begin ? new Uint8Array(0) : await reader.read(entry.begin, entry.end - entry.begin));
      });
    },
  };
}

function isRead(storage: Storage): boolean {
  try {
    void storage.bytes;
    return true;
  } catch {
    return false;
  }
}

export interface TensorFileCheckOptions {
  fileSystem?: FileSystem;
  /** The size and CRC-32 the file must have (a checkpoint's manifest). */
  expectedDigest?: FileDigest;
  /** Called as bytes are read, with bytes done and bytes in all. */
  onProgress?: (bytesDone: number, bytesTotal: number) => void;
}

/**
 * Checks a tensor file without holding it in memory: with `expectedDigest`, the whole file's
 * CRC-32 is streamed in fixed-size pieces and compared; without, a `.pt` file's entries are each
 * streamed against the CRC-32 the zip records for them (safetensors records none). Then the
 * structure is parsed as `readTensorFileOutline` does, and every storage entry's place in the
 * archive checked. Throws the TensorLoadError a loader would (a digest mismatch as
 * "the file is corrupt: …").
 */
export async function checkTensorFile(path: string, options: TensorFileCheckOptions = {}): Promise<void> {
  const fileSystem = options.fileSystem ?? new LocalFileSystem();
  const format = await new AutoTensorLoader({ fileSystem }).detect(path);
  const expected = options.expectedDigest;
  const progress = options.onProgress;
  const work = async (reader: RandomAccessReader): Promise<void> => {
    const buffer = new Uint8Array(Math.min(CHUNK_SIZE, Math.max(reader.size, 1)));
    if (expected !== undefined) {
      checkDigestSize(reader.size, expected);
      checkDigestCrc(await streamCrc(reader, 0, reader.size, buffer, (done) => progress?.(done, reader.size)), expected.crc32);
    }
    if (format === "safetensors") {
      const header = await readSafetensorsHeader(reader);
      const metadata = new Map(header.metadata ?? []);
      const tensors = header.entries.map((entry): [string, Tensor] => [
        entry.name,
        new Tensor({ storage: Storage.pending(entry.dtype, (entry.end - entry.begin) / DTYPES[entry.dtype].itemSize), shape: entry.shape }),
      ]);
      unflattenState(tensors, metadata.get(STATE_LAYOUT_KEY));
      return;
    }
    if (await isLegacyTorchFile(reader)) {
      // The format records no checksums: with no digest, the structure and each record's element
      // count are what can be checked (the count's 8 bytes, not the data, are read).
      const legacy = await readLegacyStructure(reader);
      if (expected === undefined) for (const record of legacy.records) await checkLegacyRecordCount(reader, record);
      return;
    }
    const zip = await ZipReader.open(reader);
    const structure = await readTorchStructure(zip);
    for (const entry of structure.entries) await zip.dataOffset(entry);
    if (expected !== undefined) return;
    // Without a digest, each entry's recorded CRC-32 is what vouches for its bytes.
    const entries = [...zip.entries.values()].sort((a, b) => a.headerOffset - b.headerOffset);
    let before = 0;
    for (const entry of entries) {
      const start = await zip.dataOffset(entry);
      const crc = await streamCrc(reader, start, entry.size, buffer, (done) => progress?.(before + done, reader.size));
      if (crc >>> 0 !== entry.crc >>> 0) throw new FormatError("ZIP_CRC", `entry "${entry.name}" fails its CRC-32 check: the file is corrupt`);
      before += entry.size;
    }
  };
  await (format === "safetensors" ? readingFile(fileSystem, path, "safetensors", work) : readingFile(fileSystem, path, "PyTorch", work));
}

/** The CRC-32 of `length` bytes at `position`, read in pieces into `buffer`. */
async function streamCrc(reader: RandomAccessReader, position: number, length: number, buffer: Uint8Array, onProgress: (done: number) => void): Promise<number> {
  let crc = 0;
  for (let done = 0; done < length; ) {
    const piece = Math.min(buffer.length, length - done);
    crc = crc32(await reader.read(position + done, piece, buffer), crc);
    done += piece;
    onProgress(done);
  }
  return crc;
}
