import { crc32 } from "../formats/crc32.js";
import { InvalidArgumentError, TensorDumpError } from "../errors.js";
import { readIntoExisting, type RandomAccessReader } from "../formats/byte-io.js";
import { readSafetensorsData, readSafetensorsHeader, type SafetensorsEntry, type SafetensorsHeader } from "../formats/safetensors/safetensors-reader.js";
import { segmentStarts } from "../formats/segmented-reader.js";
import { writeSafetensors } from "../formats/safetensors/safetensors-writer.js";
import type { FileSystem } from "../fs/file-system.js";
import { LocalFileSystem } from "../fs/local-file-system.js";
import { checkInPlaceTarget } from "../tensor/in-place-target.js";
import { Tensor } from "../tensor/tensor.js";
import { formatKeyPath } from "../values/key-path.js";
import type { StateValue } from "../values/py-values.js";
import { isShardIndexPath } from "../formats/shard-index.js";
import { DigestingSink } from "./digesting-sink.js";
import { loadIndexedState } from "./shard-index-io.js";
import { STATE_LAYOUT_KEY, flattenState, layoutPaths, unflattenState } from "./safetensors-state.js";
import { checkDigestCrc, checkDigestSize, readingFile, writingFile } from "./file-access.js";
import type { FileDigest, TensorDumpOptions, TensorDumper, TensorLoadOptions, TensorLoader } from "./tensor-io.js";
import { readFileInSegments, segmentsFitInBuffers } from "./whole-file.js";

export interface SafetensorsLoaderOptions {
  fileSystem?: FileSystem;
}

/**
 * Loads `.safetensors` files. A flat file (any safetensors file, e.g. from Hugging Face) loads as a
 * dict of tensors in the file's order; a file this library wrote from a nested state loads as that
 * state again (see SafetensorsDumper). Files are read whole, small tensors grouped into segments of up
 * to 1 MiB and each larger one in a buffer of its own, and the tensors are views of those (one
 * tensor can have up to 4 GiB, Node 20's largest buffer; a larger one is refused by name).
 *
 * @example
 * const weights = (await new SafetensorsLoader().load("model.safetensors")) as StateDict;
 */
export class SafetensorsLoader implements TensorLoader {
  private readonly fileSystem: FileSystem;

  constructor(options: SafetensorsLoaderOptions = {}) {
    this.fileSystem = options.fileSystem ?? new LocalFileSystem();
  }

  /** Checks `options.expectedDigest` itself, in the same pass as the read. */
  readonly verifiesDigest = true;

  async load(path: string, options: TensorLoadOptions = {}): Promise<StateValue> {
    return (await this.loadWithMetadata(path, options)).state;
  }

  /**
   * The state and the file's `__metadata__` (without the `ckpt.state` layout entry). Given a shard
   * index (`model.safetensors.index.json`), every shard it names as one dict, with the index's metadata.
   */
  async loadWithMetadata(path: string, options: TensorLoadOptions = {}): Promise<{ state: StateValue; metadata: Map<string, string> }> {
    if (isShardIndexPath(path)) {
      const { state, index } = await loadIndexedState(this.fileSystem, path, (shard, shardOptions) => this.load(shard, shardOptions), options);
      return { state, metadata: index.metadata };
    }
    return readingFile(this.fileSystem, path, "safetensors", async (reader) => {
      const expected = options.expectedDigest;
      checkDigestSize(reader.size, expected);
      const into = options.into;
      let source: RandomAccessReader;
      let sequential: SequentialCrcReader | undefined;
      let header: SafetensorsHeader;
      // A header that does not parse is reported after the digest is checked: the digest names
      // damage first. The file's CRC is then streamed, not read into memory.
      const headerOrDigestFirst = async (from: RandomAccessReader, fileCrc: () => Promise<number>): Promise<SafetensorsHeader> => {
        try {
          return await readSafetensorsHeader(from);
        } catch (error) {
          if (expected !== undefined) checkDigestCrc(await fileCrc(), expected.crc32);
          throw error;
        }
      };
      // Without `into`, the header first, from the file, to cut the file into segments at tensors (readFileInSegments).
      const parsed = into === undefined ? await headerOrDigestFirst(reader, () => new SequentialCrcReader(reader).fileCrc()) : undefined;
      const starts = parsed === undefined ? undefined : segmentStarts([parsed.dataStart, ...parsed.entries.map((entry) => entry.begin)].sort((a, b) => a - b), reader.size);
      if (parsed !== undefined && starts !== undefined && segmentsFitInBuffers(starts)) {
        const whole = await readFileInSegments(reader, starts, { crc: expected !== undefined, onProgress: options.onProgress });
        if (expected !== undefined) checkDigestCrc(whole.crc32!, expected.crc32);
        source = whole.reader;
        header = parsed;
      } else {
        // In place, or with a tensor larger than one Node.js buffer (refused by name before any is
        // read): the length, the header and the tensors tile the file, so reading them in order
        // checksums it all.
        const inOrder = new SequentialCrcReader(reader);
        source = sequential = inOrder;
        header = await headerOrDigestFirst(inOrder, () => inOrder.fileCrc());
      }

      const metadata = new Map(header.metadata ?? []);
      const layout = metadata.get(STATE_LAYOUT_KEY);
      metadata.delete(STATE_LAYOUT_KEY);
      // Every target is matched and checked before the first tensor is read into one.
      const targets = into === undefined ? new Map<string, Tensor>() : matchTargets(into, header.entries, layoutPaths(layout, header.entries.map((e) => e.name)));
      const tensors = await readSafetensorsData(source, header, {
        ...(into === undefined ? {} : { target: (entry: SafetensorsEntry) => targets.get(entry.name)?.bytes }),
        ...(sequential === undefined || options.onProgress === undefined ? {} : { onProgress: options.onProgress }),
      });
      if (expected !== undefined && sequential !== undefined) checkDigestCrc(await sequential.fileCrc(), expected.crc32);
      // Tensors read into `into` are returned in place of the new ones.
      const placed = tensors.map(([name, tensor]): [string, Tensor] => [name, targets.get(name) ?? tensor]);
      return { state: unflattenState(placed, layout), metadata };
    });
  }
}

/** The tensor in `into` for each entry that has one there; one of another dtype or shape is refused. */
function matchTargets(into: StateValue, entries: readonly SafetensorsEntry[], paths: Map<string, string[]>): Map<string, Tensor> {
  const targets = new Map<string, Tensor>();
  for (const entry of entries) {
    const path = paths.get(entry.name);
    const found = tensorAt(into, path);
    if (found === undefined) continue;
    checkInPlaceTarget(found, entry, () => formatKeyPath("into", path ?? []));
    targets.set(entry.name, found);
  }
  return targets;
}

/** The tensor at `path` (keys from the root) in a state, if there is one. */
function tensorAt(state: StateValue, path: readonly string[] | undefined): Tensor | undefined {
  if (path === undefined) return undefined;
  let node: unknown = state;
  for (const key of path) {
    if (node instanceof Map) node = node.get(key);
    else if (typeof node === "object" && node !== null && !(node instanceof Tensor) && Object.hasOwn(node, key)) node = (node as Record<string, unknown>)[key];
    else return undefined;
  }
  return node instanceof Tensor ? node : undefined;
}


/**
 * Passes reads through and checksums them while they come in file order; `fileCrc` finishes the
 * file's CRC-32 (reading whatever was skipped, which for a valid file is nothing).
 */
class SequentialCrcReader implements RandomAccessReader {
  private crc = 0;
  private next = 0;

  constructor(private readonly reader: RandomAccessReader) {}

  get size(): number {
    return this.reader.size;
  }

  async read(position: number, length: number, target?: Uint8Array): Promise<Uint8Array> {
    return this.checksummed(position, await this.reader.read(position, length, target));
  }

  async readIntoExisting(position: number, length: number, target: Uint8Array): Promise<Uint8Array> {
    return this.checksummed(position, await readIntoExisting(this.reader, position, length, target));
  }

  /** Adds `bytes`, read at `position`, to the file's CRC when they are the next bytes in order. */
  private checksummed(position: number, bytes: Uint8Array): Uint8Array {
    if (position === this.next) {
      this.crc = crc32(bytes, this.crc);
      this.next += bytes.byteLength;
    }
    return bytes;
  }

  async fileCrc(): Promise<number> {
    const piece = 8 << 20;
    while (this.next < this.size) await this.read(this.next, Math.min(piece, this.size - this.next));
    return this.crc;
  }
}

export interface SafetensorsDumperOptions {
  fileSystem?: FileSystem;
  /**
   * String metadata for the header's `__metadata__` (default `{ format: "pt" }`, which Hugging Face
   * libraries expect of PyTorch weights). `ckpt.state` is reserved.
   */
  metadata?: Readonly<Record<string, string>>;
}

/**
 * Saves a state as a `.safetensors` file. A flat dict of tensors (a model's state dict) is written
 * as it is. Nested dicts of string keys are flattened with "." and string values kept, with the
 * tree recorded in the metadata (`ckpt.state`) so SafetensorsLoader gives it back; any other value
 * (numbers, lists, int-keyed dicts: training state) is refused with a TensorDumpError naming it.
 * So a FileCheckpointManager using this dumper saves model-only states:
 * `saveState({ model })` works, `saveState({ model, optimizer, step_nr })` does not.
 *
 * @example
 * await new SafetensorsDumper().dump({ "linear.weight": weight, "linear.bias": bias }, "model.safetensors");
 */
export class SafetensorsDumper implements TensorDumper {
  private readonly fileSystem: FileSystem;
  private readonly metadata: Map<string, string>;

  constructor(options: SafetensorsDumperOptions = {}) {
    this.fileSystem = options.fileSystem ?? new LocalFileSystem();
    const metadata = options.metadata ?? { format: "pt" };
    for (const [key, value] of Object.entries(metadata)) {
      if (typeof value !== "string") throw new InvalidArgumentError(`safetensors metadata values must be strings; ${JSON.stringify(key)} is not`);
      if (key === STATE_LAYOUT_KEY) throw new InvalidArgumentError(`the metadata key ${STATE_LAYOUT_KEY} is reserved`);
    }
    this.metadata = new Map(Object.entries(metadata));
  }

  async dump(state: StateValue, path: string, options: TensorDumpOptions = {}): Promise<FileDigest> {
    let flat;
    try {
      flat = flattenState(state);
    } catch (error) {
      throw new TensorDumpError(path, `cannot save the state as safetensors: ${(error as Error).message}`, { cause: error });
    }
    const metadata = new Map(this.metadata);
    if (flat.layout !== undefined) metadata.set(STATE_LAYOUT_KEY, flat.layout);
    return writingFile(this.fileSystem, path, async (writer) => {
      const sink = new DigestingSink(writer);
      await writeSafetensors(flat.tensors, metadata.size > 0 ? metadata : undefined, sink, { onProgress: options.onProgress });
      return sink.digest;
    });
  }
}
