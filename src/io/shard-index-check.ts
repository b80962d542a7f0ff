import { TensorLoadError } from "../errors.js";
import type { ShardIndex } from "../formats/shard-index.js";
import type { FileSystem } from "../fs/file-system.js";
import { LocalFileSystem } from "../fs/local-file-system.js";
import { Tensor } from "../tensor/tensor.js";
import { dictEntries, findIndexProblems, readShardIndex, shardPath } from "./shard-index-io.js";
import { checkTensorFile, readTensorFileOutline } from "./tensor-file-outline.js";

/** One shard of an index, as verifyShardIndex found it. */
export interface ShardCheck {
  /** The file name as the index gives it. */
  file: string;
  path: string;
  /** Its size; undefined when it is missing. */
  size: number | undefined;
  status: "sound" | "damaged" | "missing";
  /** What is wrong with it, when it is not sound. */
  problem: string | undefined;
  /** How many tensors it holds (0 unless it parses). */
  tensors: number;
}

export interface ShardIndexVerification {
  path: string;
  /** Every shard sound, and the index and the shards agree. */
  sound: boolean;
  shards: ShardCheck[];
  /** What is wrong with the index itself, or between it and the shards (a tensor in two shards, …). */
  problems: string[];
  /** Bytes of the shards that were read and checked. */
  bytesChecked: number;
}

/**
 * Checks a model published in shards without holding it in memory: the index parses, every shard
 * it names is there and parses (streamed, as checkTensorFile does: a `.pt` shard's entries against
 * their CRC-32), every indexed tensor is in the shard the index names and no tensor is in two
 * shards. Reports every problem found, rather than throwing at the first.
 *
 * @example
 * const { sound, shards, problems } = await verifyShardIndex("llama/model.safetensors.index.json");
 */
export async function verifyShardIndex(indexPath: string, options: { fileSystem?: FileSystem; onProgress?: (bytesDone: number, bytesTotal: number) => void } = {}): Promise<ShardIndexVerification> {
  const fileSystem = options.fileSystem ?? new LocalFileSystem();
  let index: ShardIndex;
  try {
    index = await readShardIndex(fileSystem, indexPath);
  } catch (error) {
    return { path: indexPath, sound: false, shards: [], problems: [withoutPath(error, indexPath)], bytesChecked: 0 };
  }
  const shards: ShardCheck[] = [];
  for (const file of index.shards) {
    const path = shardPath(indexPath, file);
    try {
      const reader = await fileSystem.openReader(path);
      shards.push({ file, path, size: reader.size, status: "sound", problem: undefined, tensors: 0 });
      await reader.close();
    } catch (error) {
      const missing = (error as { code?: string }).code === "ENOENT";
      shards.push({ file, path, size: undefined, status: missing ? "missing" : "damaged", problem: missing ? "missing: the index names it" : `cannot be opened: ${(error as Error).message}`, tensors: 0 });
    }
  }
  const total = shards.reduce((sum, shard) => sum + (shard.size ?? 0), 0);
  let before = 0;
  const readable: { file: string; names: string[] }[] = [];
  for (const shard of shards) {
    if (shard.size === undefined) continue;
    const size = shard.size;
    const onProgress = options.onProgress;
    try {
      await checkTensorFile(shard.path, { fileSystem, ...(onProgress === undefined ? {} : { onProgress: (done: number) => onProgress(before + Math.min(done, size), total) }) });
      const entries = dictEntries((await readTensorFileOutline(shard.path, { fileSystem })).state);
      const names = entries?.filter(([, value]) => value instanceof Tensor).map(([name]) => name);
      if (entries === undefined || names!.length !== entries.length) throw new Error("it does not hold a flat dict of tensors by name");
      shard.tensors = names!.length;
      readable.push({ file: shard.file, names: names! });
    } catch (error) {
      shard.status = "damaged";
      shard.problem = withoutPath(error, shard.path);
    }
    before += size;
  }
  const problems = findIndexProblems(index, readable);
  return { path: indexPath, sound: problems.length === 0 && shards.every((shard) => shard.status === "sound"), shards, problems, bytesChecked: before };
}

/** An error's message without the "<path>: " a TensorLoadError starts with. */
function withoutPath(error: unknown, path: string): string {
  const message = (error as Error).message;
  return error instanceof TensorLoadError && message.startsWith(`${error.path}: `) ? message.slice(error.path.length + 2) : message.replace(`${path}: `, "");
}
