import { isLegacyTorchFile } from "../formats/torch/legacy-reader.js";
import { readLegacyTorchFile } from "../formats/torch/legacy-storages.js";
import { isShardIndexPath } from "../formats/shard-index.js";
import { readTorchArchive, readTorchStorages, readTorchStructure, type TorchStructure } from "../formats/torch/torch-reader.js";
import { writeTorchArchive, type TorchWriteOptions } from "../formats/torch/torch-writer.js";
import { ZipReader } from "../formats/zip/zip-reader.js";
import type { RandomAccessReader } from "../formats/byte-io.js";
import type { FileSystem } from "../fs/file-system.js";
import { LocalFileSystem } from "../fs/local-file-system.js";
import type { StateValue } from "../values/py-values.js";
import { checkDigestCrc, checkDigestSize, readingFile, writingFile } from "./file-access.js";
import { loadIndexedState } from "./shard-index-io.js";
import type { FileDigest, TensorDumpOptions, TensorDumper, TensorLoadOptions, TensorLoader } from "./tensor-io.js";
import { readFileInSegments, segmentsFitInBuffers } from "./whole-file.js";
import { segmentStarts } from "../formats/segmented-reader.js";

export interface TorchTensorLoaderOptions {
  fileSystem?: FileSystem;
  /** Check every zip entry's CRC-32 (default true). */
  verifyCrc?: boolean;
}

/**
 * Loads PyTorch `.pt` files safely — the zip format of `torch.save` (PyTorch 1.6 and later) and its
 * legacy format (before 1.6, or `_use_new_zipfile_serialization=False`): only tensors, storages,
 * dtypes and plain Python values are accepted, never arbitrary objects.
 *
 * @example
 * const state = await new TorchTensorLoader().load("model.pt");
 * const weight = (state as StateDict)["linear.weight"] as Tensor;
 */
export class TorchTensorLoader implements TensorLoader {
  private readonly fileSystem: FileSystem;
  private readonly verifyCrc: boolean;

  constructor(options: TorchTensorLoaderOptions = {}) {
    this.fileSystem = options.fileSystem ?? new LocalFileSystem();
    this.verifyCrc = options.verifyCrc ?? true;
  }

  /** Checks `options.expectedDigest` itself (see TensorLoadOptions). */
  readonly verifiesDigest = true;

  /**
   * Loads a file. The file is read whole in large sequential pieces, small storages grouped into
   * segments of up to 1 MiB and each larger one in a buffer of its own, and the tensors are views
   * into those (zero copies). With `into`, matching tensors are filled in place: large ones read
   * straight into their targets, storage by storage, as is a file with a storage larger than one
   * Node.js buffer (up to 4 GiB on Node 20; such a storage is then refused by name).
   */
  async load(path: string, options: TensorLoadOptions = {}): Promise<StateValue> {
    // A shard index (`pytorch_model.bin.index.json`): every shard it names, as one state dict.
    if (isShardIndexPath(path)) return (await loadIndexedState(this.fileSystem, path, (shard, shardOptions) => this.load(shard, shardOptions), options)).state;
    return readingFile(this.fileSystem, path, "PyTorch", async (reader) => {
      const expected = options.expectedDigest;
      checkDigestSize(reader.size, expected);
      if (await isLegacyTorchFile(reader)) return loadLegacy(reader, options);
      let zip = await ZipReader.open(reader);
      // With a whole-file CRC checked, the entries' own CRCs would be a second pass over the same bytes.
      let verifyCrc = this.verifyCrc;
      const largeEntries = reader.size / Math.max(zip.entryCount, 1) >= LARGE_ENTRY_BYTES;
      // In place, large tensors are read straight into their targets; small ones are cheaper to read
      // with the whole file and copy (one read instead of one per tensor).
      const starts = segmentStarts(zip.entryStarts(), reader.size);
      if ((options.into === undefined || !largeEntries) && segmentsFitInBuffers(starts)) {
        // Without a digest to check, the file's CRC (taken while reading) can vouch for every entry at
        // once, but only pays off for large entries; thousands of small ones are checked one by one.
        const vouch = expected === undefined && verifyCrc && largeEntries;
        const reading = readFileInSegments(reader, starts, { crc: expected !== undefined || vouch, onProgress: options.onProgress });
        reading.catch(() => undefined); // awaited below on every path
        // The pickle is parsed (its few entries read on their own) while the whole file is read in
        // the background: a file of many small tensors spends more time parsing than reading. With
        // a digest to check, the digest vouches for these entries, and is checked first on failure.
        let structure: TorchStructure;
        try {
          structure = await readTorchStructure(zip, { verifyCrc: expected === undefined && verifyCrc });
        } catch (error) {
          const whole = await reading;
          if (expected !== undefined) checkDigestCrc(whole.crc32!, expected.crc32);
          throw error;
        }
        const whole = await reading;
        zip = zip.withReader(whole.reader);
        if (expected !== undefined) {
          checkDigestCrc(whole.crc32!, expected.crc32);
          verifyCrc = false;
        } else if (vouch && (await zip.expectedFileCrc()) === whole.crc32) {
          verifyCrc = false; // if not, each entry is checked below, which names the damaged one
        }
        return await readTorchStorages(zip, structure, { verifyCrc, ...(options.into === undefined ? {} : { into: options.into }) });
      }
      if (expected !== undefined) {
        // Read piecewise, the file's CRC is what its checked entries and the bytes between them add up to.
        verifyCrc = true;
        checkDigestCrc(await zip.expectedFileCrc(), expected.crc32);
      }
      const onProgress = options.onProgress;
      return await readTorchArchive(zip, { verifyCrc, ...(options.into === undefined ? {} : { into: options.into }), ...(onProgress === undefined ? {} : { onProgress }) });
    });
  }
}

/**
 * The legacy format (before PyTorch 1.6): storage by storage with positioned reads into one arena
 * of aligned slots (see readLegacyTorchFile), never the whole file into one buffer and then again
 * into the storages. The file's CRC-32 comes from the same reads; in place, it is checked once the
 * targets are filled (the format has no checksums of its own to check first).
 */
async function loadLegacy(reader: RandomAccessReader, options: TensorLoadOptions): Promise<StateValue> {
  const expected = options.expectedDigest;
  const { state, crc32 } = await readLegacyTorchFile(reader, {
    crc: expected !== undefined,
    ...(options.into === undefined ? {} : { into: options.into }),
    ...(options.onProgress === undefined ? {} : { onProgress: options.onProgress }),
  });
  if (expected !== undefined) checkDigestCrc(crc32!, expected.crc32);
  return state;
}

/**
 * Average entry size from which entries count as large: a whole-file CRC then beats checking
 * them one by one, and reading them straight into targets beats reading the whole file.
 */
const LARGE_ENTRY_BYTES = 1 << 20;


export interface TorchTensorDumperOptions extends TorchWriteOptions {
  fileSystem?: FileSystem;
}

/**
 * Saves a state as a PyTorch `.pt` file that `torch.load` opens. Tensor data is streamed from the
 * tensors to the file without building the file in memory; the file is fsynced and appears whole.
 *
 * @example
 * await new TorchTensorDumper().dump({ weight: Tensor.from(new Float32Array(6), { shape: [2, 3] }) }, "model.pt");
 */
export class TorchTensorDumper implements TensorDumper {
  private readonly fileSystem: FileSystem;
  private readonly writeOptions: TorchWriteOptions;

  constructor(options: TorchTensorDumperOptions = {}) {
    const { fileSystem, ...writeOptions } = options;
    this.fileSystem = fileSystem ?? new LocalFileSystem();
    this.writeOptions = writeOptions;
  }

  async dump(state: StateValue, path: string, options: TensorDumpOptions = {}): Promise<FileDigest> {
    return writingFile(this.fileSystem, path, (writer) => writeTorchArchive(state, writer, { ...this.writeOptions, ...options }));
  }
}
