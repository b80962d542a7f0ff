import { TensorLoadError } from "../errors.js";
import type { RandomAccessReader } from "../formats/byte-io.js";
import type { FileSystem } from "../fs/file-system.js";
import { LocalFileSystem } from "../fs/local-file-system.js";
import type { StateValue } from "../values/py-values.js";
import { isShardIndexPath } from "../formats/shard-index.js";
import { SafetensorsLoader } from "./safetensors-io.js";
import { loadIndexedState, type LoadedShard } from "./shard-index-io.js";
import type { TensorLoadOptions, TensorLoader } from "./tensor-io.js";
import { TorchTensorLoader } from "./torch-tensor-io.js";

export type TensorFileFormat = "pt" | "safetensors";

/**
 * Tells a file's format from its first bytes, not its name: a checkpoint saved with
 * SafetensorsDumper keeps fairseq2's file names (`model.pt`). A zip is PyTorch's format; 8 bytes of
 * plausible header length followed by "{" is safetensors; anything else is called "pt", so the
 * PyTorch loader explains what is wrong with it (e.g. the legacy pre-1.6 format).
 */
export async function detectTensorFormat(reader: RandomAccessReader): Promise<TensorFileFormat> {
  if (reader.size < 9) return "pt";
  const head = await reader.read(0, 9);
  if (head[0] === 0x50 && head[1] === 0x4b) return "pt"; // "PK"
  const length = new DataView(head.buffer, head.byteOffset, 8).getBigUint64(0, true);
  return head[8] === 0x7b && length <= BigInt(reader.size - 8) ? "safetensors" : "pt";
}

async function startsLikeZip(reader: RandomAccessReader): Promise<boolean> {
  if (reader.size < 2) return false;
  const head = await reader.read(0, 2);
  return head[0] === 0x50 && head[1] === 0x4b;
}

/** What AutoTensorLoader.loadAny read. */
export interface LoadedTensorFile {
  format: TensorFileFormat;
  state: StateValue;
  metadata: Map<string, string>;
  /** Set when the path was a shard index: each shard, its format and the tensors it held. */
  shards?: (LoadedShard & { format: TensorFileFormat })[];
}

export interface AutoTensorLoaderOptions {
  fileSystem?: FileSystem;
}

/**
 * Loads a PyTorch `.pt` or a safetensors file, whichever it is (see detectTensorFormat). For tools
 * that read checkpoints written with either format.
 *
 * @example
 * const { format, state } = await new AutoTensorLoader().loadAny("step_1000/model.pt");
 */
export class AutoTensorLoader implements TensorLoader {
  private readonly fileSystem: FileSystem;
  private readonly torch: TorchTensorLoader;
  private readonly safetensors: SafetensorsLoader;

  constructor(options: AutoTensorLoaderOptions = {}) {
    this.fileSystem = options.fileSystem ?? new LocalFileSystem();
    this.torch = new TorchTensorLoader({ fileSystem: this.fileSystem });
    this.safetensors = new SafetensorsLoader({ fileSystem: this.fileSystem });
  }

  readonly verifiesDigest = true;

  /**
   * Loads a file, or given a shard index (`model.safetensors.index.json`,
   * `pytorch_model.bin.index.json`) every shard it names, as one state dict (see loadAny).
   */
  async load(path: string, options: TensorLoadOptions = {}): Promise<StateValue> {
    return (await this.loadAny(path, options)).state;
  }

  /**
   * The state with the format it was read in, and the metadata of a safetensors file (else empty).
   * Given a shard index (a path ending in `.index.json`), each shard is read once, whatever its
   * format, into one state dict; `format` is the first shard's, `metadata` the index's, and
   * `shards` says what each shard held.
   *
   * @example
   * const { state, shards } = await new AutoTensorLoader().loadAny("llama/model.safetensors.index.json");
   */
  async loadAny(path: string, options: TensorLoadOptions = {}): Promise<LoadedTensorFile> {
    if (isShardIndexPath(path)) {
      const formats = new Map<string, TensorFileFormat>();
      const { state, index, shards } = await loadIndexedState(this.fileSystem, path, async (shardPath, shardOptions) => {
        const loaded = await this.loadAny(shardPath, shardOptions);
        formats.set(shardPath, loaded.format);
        return loaded.state;
      }, options);
      const described = shards.map((shard) => ({ ...shard, format: formats.get(shard.path)! }));
      return { format: described[0]?.format ?? "safetensors", state, metadata: index.metadata, shards: described };
    }
    const format = await this.detect(path);
    if (format === "safetensors") return { format, ...(await this.safetensors.loadWithMetadata(path, options)) };
    return { format, state: await this.torch.load(path, options), metadata: new Map() };
  }

  /** The format of the file at `path`: from its content, or for a file that is neither, from its name. */
  async detect(path: string): Promise<TensorFileFormat> {
    let reader;
    try {
      reader = await this.fileSystem.openReader(path);
    } catch (error) {
      throw new TensorLoadError(path, `cannot open the file: ${(error as Error).message}`, { cause: error });
    }
    try {
      const format = await detectTensorFormat(reader);
      // Not a zip, named .safetensors: a damaged safetensors file, whose loader says best what is wrong.
      if (format === "pt" && path.endsWith(".safetensors") && !(await startsLikeZip(reader))) return "safetensors";
      return format;
    } finally {
      await reader.close();
    }
  }
}
