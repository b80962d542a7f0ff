import { TensorDumpError, TensorLoadError } from "../errors.js";
import { readTorchArchive } from "../formats/torch/torch-reader.js";
import { writeTorchArchive, type TorchWriteOptions } from "../formats/torch/torch-writer.js";
import { ZipReader } from "../formats/zip/zip-reader.js";
import type { RandomAccessReader } from "../formats/byte-io.js";
import type { FileSystem } from "../fs/file-system.js";
import { LocalFileSystem } from "../fs/local-file-system.js";
import type { StateValue } from "../values/py-values.js";
import { DigestingSink } from "./digesting-sink.js";
import type { FileDigest, TensorDumper, TensorLoader } from "./tensor-io.js";

export interface TorchTensorLoaderOptions {
  fileSystem?: FileSystem;
  /** Check every zip entry's CRC-32 (default true). */
  verifyCrc?: boolean;
}

/**
 * Loads PyTorch `.pt` files (the zip format of `torch.save`, PyTorch 1.6 and later) safely: only
 * tensors, storages, dtypes and plain Python values are accepted, never arbitrary objects.
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

  async load(path: string): Promise<StateValue> {
    let reader;
    try {
      reader = await this.fileSystem.openReader(path);
    } catch (error) {
      throw new TensorLoadError(path, `cannot open the file: ${(error as Error).message}`, { cause: error });
    }
    try {
      const zip = await ZipReader.open(reader);
      return await readTorchArchive(zip, { verifyCrc: this.verifyCrc });
    } catch (error) {
      throw new TensorLoadError(path, `not a valid PyTorch file: ${await explainNonZip(reader, error)}`, { cause: error });
    } finally {
      await reader.close();
    }
  }
}

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

  async dump(state: StateValue, path: string): Promise<FileDigest> {
    let writer;
    try {
      writer = await this.fileSystem.createWriter(path);
    } catch (error) {
      throw new TensorDumpError(path, `cannot create the file: ${(error as Error).message}`, { cause: error });
    }
    try {
      const sink = new DigestingSink(writer);
      await writeTorchArchive(state, sink, this.writeOptions);
      await writer.close();
      return sink.digest;
    } catch (error) {
      await writer.abort().catch(() => undefined);
      throw new TensorDumpError(path, `cannot save the state: ${(error as Error).message}`, { cause: error });
    }
  }
}

/** A file without a zip end record that starts like a pickle was written by torch.save before 1.6. */
async function explainNonZip(reader: RandomAccessReader, error: unknown): Promise<string> {
  const message = (error as Error).message;
  if ((error as { code?: string }).code !== "ZIP_END" || reader.size < 2) return message;
  const head = await reader.read(0, 2).catch(() => undefined);
  if (head?.[0] === 0x80 && head[1]! <= 5) {
    return `${message}; it looks like the legacy format of torch.save before PyTorch 1.6, which is not supported: re-save it with a current PyTorch`;
  }
  return message;
}
