import { posix } from "node:path";
import { FormatError, TensorLoadError } from "../errors.js";
import { MAX_INDEX_BYTES, parseShardIndex, type ShardIndex } from "../formats/shard-index.js";
import type { FileSystem } from "../fs/file-system.js";
import { joinPath } from "../fs/paths.js";
import { Tensor } from "../tensor/tensor.js";
import { objectKeepsOrder, setOwn, type StateDict, type StateValue } from "../values/py-values.js";
import type { TensorLoadOptions } from "./tensor-io.js";

/** One shard of an index as it was loaded. */
export interface LoadedShard {
  /** The file name as the index gives it. */
  file: string;
  /** Its path (the index's directory joined with `file`). */
  path: string;
  size: number;
  /** The tensor names it held, in its order. */
  tensors: string[];
}

export interface IndexedState {
  /** Every tensor of every shard: the index's names in its order, then any the index does not list. */
  state: StateDict | Map<string, StateValue>;
  index: ShardIndex;
  shards: LoadedShard[];
}

/**
 * Loads a model published in shards as one state dict: reads the index, checks that every shard it
 * names is there (before reading any, so a missing last shard is not found after gigabytes), then
 * loads each shard once with `loadShard`. A tensor in two shards, a tensor in another shard than
 * the index says, or an indexed tensor no shard holds is a TensorLoadError naming the index.
 */
export async function loadIndexedState(
  fileSystem: FileSystem,
  indexPath: string,
  loadShard: (path: string, options: TensorLoadOptions) => Promise<StateValue>,
  options: TensorLoadOptions = {},
): Promise<IndexedState> {
  const fail = (message: string, cause?: unknown): never => {
    throw new TensorLoadError(indexPath, message, cause === undefined ? {} : { cause });
  };
  if (options.expectedDigest !== undefined) fail("a recorded digest describes one file, and an index names several: load the shards one by one to check digests");
  const index = await readIndex(fileSystem, indexPath);
  const dir = posix.dirname(indexPath);

  const shards: LoadedShard[] = [];
  for (const file of index.shards) {
    const path = joinPath(dir, file);
    let size: number;
    try {
      const reader = await fileSystem.openReader(path);
      size = reader.size;
      await reader.close();
    } catch (error) {
      const missing = (error as { code?: string }).code === "ENOENT";
      return fail(missing ? `the shard ${file} named in the index is missing` : `the shard ${file} named in the index cannot be opened: ${(error as Error).message}`, error);
    }
    shards.push({ file, path, size, tensors: [] });
  }

  const total = shards.reduce((sum, shard) => sum + shard.size, 0);
  const found = new Map<string, { tensor: Tensor; shard: string }>();
  let before = 0;
  for (const shard of shards) {
    const shardOptions: TensorLoadOptions = {};
    if (options.into !== undefined) shardOptions.into = options.into;
    const onProgress = options.onProgress;
    if (onProgress !== undefined) shardOptions.onProgress = (done) => onProgress(before + Math.min(done, shard.size), total);
    const content = await loadShard(shard.path, shardOptions);
    for (const [name, value] of dictEntries(content) ?? fail(`the shard ${shard.file} does not hold a dict of tensors by name`)) {
      if (!(value instanceof Tensor)) fail(`the shard ${shard.file} holds ${JSON.stringify(name)}, which is not a tensor`);
      const earlier = found.get(name);
      if (earlier !== undefined) fail(`the tensor ${JSON.stringify(name)} is in two shards, ${earlier.shard} and ${shard.file}`);
      const indexed = index.weightMap.get(name);
      if (indexed !== undefined && indexed !== shard.file) fail(`the tensor ${JSON.stringify(name)} is in the shard ${shard.file}, but the index puts it in ${indexed}`);
      found.set(name, { tensor: value as Tensor, shard: shard.file });
      shard.tensors.push(name);
    }
    before += shard.size;
    options.onProgress?.(before, total); // a shard's own progress may not count its header bytes
  }
  for (const [name, file] of index.weightMap) {
    if (!found.has(name)) fail(`the index puts the tensor ${JSON.stringify(name)} in the shard ${file}, which does not hold it`);
  }

  const names = [...index.weightMap.keys(), ...[...found.keys()].filter((name) => !index.weightMap.has(name))];
  // As the unpickler does: a plain object unless it would reorder integer-like names.
  if (!objectKeepsOrder(names)) return { state: new Map(names.map((name) => [name, found.get(name)!.tensor])), index, shards };
  const state: StateDict = Object.create(Object.prototype) as StateDict;
  for (const name of names) setOwn(state, name, found.get(name)!.tensor);
  return { state, index, shards };
}

async function readIndex(fileSystem: FileSystem, indexPath: string): Promise<ShardIndex> {
  let reader;
  try {
    reader = await fileSystem.openReader(indexPath);
  } catch (error) {
    throw new TensorLoadError(indexPath, `cannot open the file: ${(error as Error).message}`, { cause: error });
  }
  try {
    if (reader.size > MAX_INDEX_BYTES) throw new FormatError("INDEX_SIZE", `${reader.size} bytes is more than an index holds (MAX_INDEX_BYTES = ${MAX_INDEX_BYTES})`);
    return parseShardIndex(await reader.read(0, reader.size));
  } catch (error) {
    throw new TensorLoadError(indexPath, `not a valid shard index: ${(error as Error).message}`, { cause: error });
  } finally {
    await reader.close();
  }
}

/** The entries of a dict with string keys (a plain object or a Map), or undefined for anything else. */
function dictEntries(value: StateValue): [string, StateValue][] | undefined {
  if (value instanceof Map) return [...value].every(([key]) => typeof key === "string") ? ([...value] as [string, StateValue][]) : undefined;
  if (typeof value !== "object" || value === null || Array.isArray(value) || value instanceof Tensor || ArrayBuffer.isView(value)) return undefined;
  const prototype = Object.getPrototypeOf(value);
  if (prototype !== Object.prototype && prototype !== null) return undefined;
  return Object.entries(value as StateDict);
}
