import { posix } from "node:path";
import { FormatError, TensorLoadError } from "../errors.js";
import { MAX_INDEX_BYTES, parseShardIndex, type ShardIndex } from "../formats/shard-index.js";
import type { FileSystem } from "../fs/file-system.js";
import { joinPath } from "../fs/paths.js";
import { Tensor } from "../tensor/tensor.js";
import { objectKeepsOrder, setOwn, type StateDict, type StateValue } from "../values/py-values.js";
import type { TensorLoadOptions } from "./tensor-io.js";

/** One shard of an index, found on disk. */
export interface LoadedShard {
  /** The file name as the index gives it. */
  file: string;
  /** Its path (the index's directory joined with `file`). */
  path: string;
  size: number;
  /** The tensor names it held, in its order (filled as it is read). */
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
  if (options.expectedDigest !== undefined) {
    throw new TensorLoadError(indexPath, "a recorded digest describes one file, and an index names several: load the shards one by one to check digests");
  }
  const index = await readShardIndex(fileSystem, indexPath);
  const shards = await findShards(fileSystem, indexPath, index);
  const total = shards.reduce((sum, shard) => sum + shard.size, 0);
  const contents: StateValue[] = [];
  let before = 0;
  for (const shard of shards) {
    const shardOptions: TensorLoadOptions = {};
    if (options.into !== undefined) shardOptions.into = options.into;
    const onProgress = options.onProgress;
    if (onProgress !== undefined) shardOptions.onProgress = (done) => onProgress(before + Math.min(done, shard.size), total);
    contents.push(await loadShard(shard.path, shardOptions));
    before += shard.size;
    onProgress?.(before, total); // a shard's own progress may not count its header bytes
  }
  return { state: assembleIndexedState(indexPath, index, shards, contents), index, shards };
}

/** Reads and parses an index file; a TensorLoadError naming it when it cannot be. */
export async function readShardIndex(fileSystem: FileSystem, indexPath: string): Promise<ShardIndex> {
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

/** Where a shard of an index is: the index's directory joined with the name it gives. */
export function shardPath(indexPath: string, file: string): string {
  return joinPath(posix.dirname(indexPath), file);
}

/** Every shard the index names with its size; a TensorLoadError naming the first that is missing. */
export async function findShards(fileSystem: FileSystem, indexPath: string, index: ShardIndex): Promise<LoadedShard[]> {
  const shards: LoadedShard[] = [];
  for (const file of index.shards) {
    const path = shardPath(indexPath, file);
    let size: number;
    try {
      const reader = await fileSystem.openReader(path);
      size = reader.size;
      await reader.close();
    } catch (error) {
      const missing = (error as { code?: string }).code === "ENOENT";
      const message = missing ? `the shard ${file} named in the index is missing` : `the shard ${file} named in the index cannot be opened: ${(error as Error).message}`;
      throw new TensorLoadError(indexPath, message, { cause: error });
    }
    shards.push({ file, path, size, tensors: [] });
  }
  return shards;
}

/**
 * What is wrong between an index and the tensor names its shards hold: a name in two shards, a
 * name in another shard than the index says, an indexed name no shard holds. `shards` are the
 * shards that could be read, with their names; indexed names of other shards are not reported.
 */
export function findIndexProblems(index: ShardIndex, shards: readonly { file: string; names: readonly string[] }[]): string[] {
  const problems: string[] = [];
  const seenIn = new Map<string, string>();
  for (const { file, names } of shards) {
    for (const name of names) {
      const earlier = seenIn.get(name);
      if (earlier !== undefined) {
        problems.push(`the tensor ${JSON.stringify(name)} is in two shards, ${earlier} and ${file}`);
        continue;
      }
      seenIn.set(name, file);
      const indexed = index.weightMap.get(name);
      if (indexed !== undefined && indexed !== file) problems.push(`the tensor ${JSON.stringify(name)} is in the shard ${file}, but the index puts it in ${indexed}`);
    }
  }
  const read = new Set(shards.map((shard) => shard.file));
  for (const [name, file] of index.weightMap) {
    if (read.has(file) && !seenIn.has(name)) problems.push(`the index puts the tensor ${JSON.stringify(name)} in the shard ${file}, which does not hold it`);
  }
  return problems;
}

/**
 * One state dict from the shards' contents (each a flat dict of tensors), checked against the
 * index (see findIndexProblems): the index's names in its order, then any it does not list.
 * Fills each shard's `tensors`. Works on loaded tensors and on outlines (tensors without bytes).
 */
export function assembleIndexedState(indexPath: string, index: ShardIndex, shards: LoadedShard[], contents: readonly StateValue[]): StateDict | Map<string, StateValue> {
  const found = new Map<string, Tensor>();
  shards.forEach((shard, i) => {
    const entries = dictEntries(contents[i]!);
    if (entries === undefined) throw new TensorLoadError(indexPath, `the shard ${shard.file} does not hold a dict of tensors by name`);
    for (const [name, value] of entries) {
      if (!(value instanceof Tensor)) throw new TensorLoadError(indexPath, `the shard ${shard.file} holds ${JSON.stringify(name)}, which is not a tensor`);
      shard.tensors.push(name);
      if (!found.has(name)) found.set(name, value);
    }
  });
  const [problem] = findIndexProblems(index, shards.map((shard) => ({ file: shard.file, names: shard.tensors })));
  if (problem !== undefined) throw new TensorLoadError(indexPath, problem);

  const names = [...index.weightMap.keys(), ...[...found.keys()].filter((name) => !index.weightMap.has(name))];
  // As the unpickler does: a plain object unless it would reorder integer-like names.
  if (!objectKeepsOrder(names)) return new Map(names.map((name) => [name, found.get(name)!]));
  const state: StateDict = Object.create(Object.prototype) as StateDict;
  for (const name of names) setOwn(state, name, found.get(name)!);
  return state;
}

/** The entries of a dict with string keys (a plain object or a Map), or undefined for anything else. */
export function dictEntries(value: StateValue): [string, StateValue][] | undefined {
  if (value instanceof Map) return [...value].every(([key]) => typeof key === "string") ? ([...value] as [string, StateValue][]) : undefined;
  if (typeof value !== "object" || value === null || Array.isArray(value) || value instanceof Tensor || ArrayBuffer.isView(value)) return undefined;
  const prototype = Object.getPrototypeOf(value);
  if (prototype !== Object.prototype && prototype !== null) return undefined;
  return Object.entries(value as StateDict);
}
