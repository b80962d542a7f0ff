import { CheckpointError, CheckpointLoadError, InvalidArgumentError } from "../errors.js";
import { joinPath } from "../fs/paths.js";
import { openTensorRegions, type TensorRegionFile } from "../io/tensor-regions.js";
import { ShardedTensor } from "../tensor/sharded-tensor.js";
import { Tensor } from "../tensor/tensor.js";
import { setOwn, type StateDict, type StateValue } from "../values/py-values.js";
import type { CheckpointInfo } from "./checkpoint-directory.js";
import type { PerRankPolicy, ReshardOptions, ReshardPlanEntry } from "./checkpoint-manager.js";
import { modelFileName, rankFileName, replicatedFileName } from "./layout.js";
import { isPlainDict, type ManagerContext } from "./manager-context.js";
import { evenSplit, readRegion, savedSplitDim, type Region, type SourceShard } from "./shard-regions.js";
import { mapTree } from "./snapshot.js";
import { dropModelKeyEntry, mergeInto, unwrapModelFile } from "./state-split.js";

type KeyPath = (string | number)[];

/** The layout a checkpoint was saved with and the one it is loaded into. */
export interface ReshardLayouts {
  saved: { dpSize: number; tpSize: number };
  current: { dpRank: number; dpSize: number; tpRank: number; tpSize: number };
}

/**
 * Loads a checkpoint saved with another dp/tp layout as this rank's share under the current one
 * (issue 15). Files whose layout did not change are read as usual by `loadUnchanged` (checked
 * against the manifest); the others are opened for region reads: each ShardedTensor is cut anew
 * (the saved split dimension evenly over the new ranks, or the plan's) and only the bytes of this
 * rank's new shard are read; plain values come from the first file (they are equal on every rank
 * that shares the file kind); per-rank values follow the declared policy or are refused by name.
 */
export class ReshardReader {
  private readonly opened: TensorRegionFile[] = [];

  constructor(
    private readonly context: ManagerContext,
    private readonly info: CheckpointInfo,
    private readonly layouts: ReshardLayouts,
    private readonly options: ReshardOptions,
    private readonly loadUnchanged: (name: string) => Promise<StateValue>,
  ) {}

  async load(): Promise<StateDict> {
    const { saved, current } = this.layouts;
    const state: StateDict = Object.create(Object.prototype) as StateDict;
    try {
      // fairseq2's order, as loadCheckpoint: rank files, then replicated, then the model file.
      mergeInto(state, await this.loadRankFiles());
      const tpRanks = range(saved.tpSize);
      for (const kind of ["replicated", "model"] as const) {
        const fileName = kind === "model" ? modelFileName : replicatedFileName;
        const names = tpRanks.map((tp) => fileName(tp, saved.tpSize));
        if (!names.every((name) => this.has(name))) continue;
        const part = saved.tpSize === current.tpSize ? await this.loadUnchanged(fileName(current.tpRank, current.tpSize)) : await this.loadShared(names);
        if (!isPlainDict(part)) throw new CheckpointLoadError(this.info.stepNr, `${names[0]} of checkpoint ${this.info.stepNr} does not hold a dict of string keys`);
        if (kind === "model") {
          const { modelKey: savedKey, model, rest } = unwrapModelFile(part);
          mergeInto(state, rest);
          if (model !== undefined) setOwn(state, savedKey, model);
        } else {
          mergeInto(state, part);
        }
      }
      dropModelKeyEntry(state);
      return state;
    } catch (error) {
      if (error instanceof CheckpointError || error instanceof InvalidArgumentError) throw error;
      throw new CheckpointLoadError(this.info.stepNr, `cannot reshard checkpoint ${this.info.stepNr} (${this.describeLayouts()}): ${(error as Error).message}`, { cause: error });
    } finally {
      await Promise.all(this.opened.map((file) => file.close().catch(() => undefined)));
    }
  }

  /** The model files only, recut over the new tp ranks: `{ model, model_key }` as in a model file. */
  async loadModelFiles(): Promise<StateValue> {
    const { saved } = this.layouts;
    const names = range(saved.tpSize).map((tp) => modelFileName(tp, saved.tpSize));
    const missing = names.filter((name) => !this.has(name));
    if (missing.length > 0) {
      throw new CheckpointLoadError(this.info.stepNr, `checkpoint ${this.info.stepNr} has no ${missing.join(", ")}: its model is sharded across data-parallel ranks; load it with loadCheckpoint(${this.info.stepNr}, { reshard })`);
    }
    try {
      return await this.loadShared(names);
    } catch (error) {
      if (error instanceof CheckpointError || error instanceof InvalidArgumentError) throw error;
      throw new CheckpointLoadError(this.info.stepNr, `cannot reshard the model of checkpoint ${this.info.stepNr} (${this.describeLayouts()}): ${(error as Error).message}`, { cause: error });
    } finally {
      await Promise.all(this.opened.map((file) => file.close().catch(() => undefined)));
    }
  }

  /**
   * A file kind replicated over dp and split over tp (model, replicated): its ShardedTensors are
   * tensor-parallel shards, recut over the new tp ranks; everything else is taken from tp rank 0's file.
   */
  private async loadShared(names: string[]): Promise<StateValue> {
    const files = await Promise.all(names.map((name) => this.open(name)));
    const { tpRank, tpSize } = this.layouts.current;
    // Plan keys name the state as loaded: a model stored under "model" for a custom key (older ckpt) goes by that key.
    const first = files[0]!.state;
    const modelKey = isPlainDict(first) && /^model\b/.test(names[0] ?? "") ? unwrapModelFile(first).modelKey : undefined;
    const stored = modelKey !== undefined && (first as StateDict)[modelKey] === undefined ? "model" : modelKey;
    const userPath = (path: KeyPath): KeyPath => (modelKey !== undefined && path[0] === stored ? [modelKey, ...path.slice(1)] : path);
    checkReplicatedOverTp(files, names);
    return (await this.rebuild(files[0]!, files[0]!.state, [], async (path, sharded) => {
      const sources = files.map((file) => shardAt(file, path, names));
      return this.recut(userPath(path), sharded, sources, tpRank, tpSize);
    })) as StateValue;
  }

  /** The rank files: reshardable keys recut over the new ranks, per-rank keys by their policy. */
  private async loadRankFiles(): Promise<StateDict> {
    const { saved, current } = this.layouts;
    const names: string[] = [];
    for (let dp = 0; dp < saved.dpSize; dp++) for (let tp = 0; tp < saved.tpSize; tp++) names.push(rankFileName(dp, tp, saved.tpSize));
    const missing = names.filter((name) => !this.has(name));
    if (missing.length > 0) throw new CheckpointLoadError(this.info.stepNr, `checkpoint ${this.info.stepNr} lacks ${missing.join(", ")}: it cannot be resharded`);
    const files = await Promise.all(names.map((name) => this.open(name)));
    const states = files.map((file, i) => {
      if (!isPlainDict(file.state)) throw new CheckpointLoadError(this.info.stepNr, `${names[i]} of checkpoint ${this.info.stepNr} does not hold a dict of string keys`);
      return file.state;
    });
    const keys = [...new Set(states.flatMap((s) => Object.keys(s)))];
    const policies = this.options.perRank ?? {};
    const perRank = keys.filter((key) => !isReshardable(states.map((s) => s[key])));
    const policyOf = (key: string): PerRankPolicy | undefined => policies[key] ?? policies["*"];
    const refused = perRank.filter((key) => policyOf(key) === undefined || policyOf(key) === "refuse");
    if (refused.length > 0) {
      throw new CheckpointLoadError(
        this.info.stepNr,
        `checkpoint ${this.info.stepNr} was saved with ${this.describeLayouts()}: the per-rank key${refused.length > 1 ? "s" : ""} ${refused.map((k) => JSON.stringify(k)).join(", ")} ` +
          `differ${refused.length > 1 ? "" : "s"} by rank and cannot be resharded; declare a policy, e.g. reshard: { perRank: { ${JSON.stringify(refused[0])}: "rank0" } } or a function that combines every rank's value`,
      );
    }
    const newRank = current.dpRank * current.tpSize + current.tpRank;
    const result: StateDict = Object.create(Object.prototype) as StateDict;
    for (const key of keys) {
      const policy = policyOf(key);
      if (perRank.includes(key) && typeof policy === "function") {
        const values: StateValue[] = [];
        for (const file of files) values.push(await this.materialize(file, (file.state as StateDict)[key] ?? null));
        result[key] = policy(values, { ...current, savedDpSize: saved.dpSize, savedTpSize: saved.tpSize });
        continue;
      }
      // Reshardable, or "rank0": plain values from the first rank's file, ShardedTensors recut.
      result[key] = (await this.rebuild(files[0]!, states[0]![key] ?? null, [key], async (path, sharded) => {
        const sources = files.map((file) => shardAt(file, path, names));
        const all = sources.reduce((n, s) => n + s.tensor.numel, 0);
        const whole = sharded.globalShape.reduce((n, size) => n * size, 1);
        if (all === whole) return this.recut(path, sharded, sources, newRank, current.dpSize * current.tpSize);
        // Each tp rank's shards tile the whole tensor by themselves: recut over dp within the same tp rank.
        if (all === whole * saved.tpSize && saved.tpSize === current.tpSize) {
          return this.recut(path, sharded, sources.filter((_, i) => i % saved.tpSize === current.tpRank), current.dpRank, current.dpSize);
        }
        throw new CheckpointLoadError(
          this.info.stepNr,
          `the shards of ${JSON.stringify(path.join("/"))} in checkpoint ${this.info.stepNr} hold ${all} elements for a tensor of ${whole}` +
            (all === whole * saved.tpSize ? `: each tensor-parallel rank holds its own full copy, which cannot be resharded to tp=${current.tpSize}` : ": they do not tile it"),
        );
      })) as StateValue;
    }
    return result;
  }

  /** Cuts this rank's new shard of a sharded tensor and reads it from the saved shards. */
  private async recut(path: KeyPath, like: ShardedTensor, sources: SourceShard[], index: number, count: number): Promise<ShardedTensor> {
    const region = this.regionFor(path, like.globalShape, sources, index, count);
    return new ShardedTensor(await readRegion(sources, like.shard.dtype, region), { globalShape: like.globalShape, offsets: region.offsets });
  }

  private regionFor(path: KeyPath, globalShape: readonly number[], sources: SourceShard[], index: number, count: number): Region {
    const key = path.join("/");
    const entry: ReshardPlanEntry | undefined = this.options.plan?.[key];
    if (entry === undefined) return evenSplit(globalShape, savedSplitDim(sources, globalShape), index, count);
    if ("dim" in entry) {
      if (!Number.isInteger(entry.dim) || entry.dim < 0 || (entry.dim >= globalShape.length && globalShape.length > 0)) {
        throw new InvalidArgumentError(`the reshard plan for ${JSON.stringify(key)} splits dimension ${entry.dim} of a ${globalShape.length}-dimensional tensor`);
      }
      return evenSplit(globalShape, entry.dim, index, count);
    }
    const region = typeof entry === "function" ? entry({ globalShape, index, count }) : entry;
    const fits = region.offsets.length === globalShape.length && region.shape.length === globalShape.length &&
      globalShape.every((size, d) => Number.isInteger(region.offsets[d]) && Number.isInteger(region.shape[d]) && region.offsets[d]! >= 0 && region.shape[d]! >= 0 && region.offsets[d]! + region.shape[d]! <= size);
    if (!fits) throw new InvalidArgumentError(`the reshard plan for ${JSON.stringify(key)} asks for a block that does not fit [${globalShape.join(", ")}]`);
    return { offsets: [...region.offsets], shape: [...region.shape] };
  }

  /**
   * A copy of `value` (from `file`) with each ShardedTensor replaced by `recut(path, it)` and each
   * plain tensor read whole from `file`.
   */
  private async rebuild(file: TensorRegionFile, value: unknown, at: KeyPath, recut: (path: KeyPath, sharded: ShardedTensor) => Promise<ShardedTensor>): Promise<unknown> {
    const replaced = new Map<Tensor | ShardedTensor, Tensor | ShardedTensor>();
    for (const { path, leaf } of leavesWithPaths(value, at)) {
      if (replaced.has(leaf)) continue;
      if (leaf instanceof ShardedTensor) replaced.set(leaf, await recut(path, leaf));
      else {
        await file.readWhole(leaf);
        replaced.set(leaf, leaf);
      }
    }
    return mapTree(value, (leaf) => replaced.get(leaf) ?? leaf);
  }

  /** A value of one file with all its tensors read (for a user's combine function). */
  private async materialize(file: TensorRegionFile, value: StateValue): Promise<StateValue> {
    for (const { leaf } of leavesWithPaths(value, [])) await file.readWhole(leaf instanceof ShardedTensor ? leaf.shard : leaf);
    return value;
  }

  private async open(name: string): Promise<TensorRegionFile> {
    const expected = this.info.manifest?.files[name];
    let file: TensorRegionFile;
    try {
      file = await openTensorRegions(this.context.fileSystem, joinPath(this.info.path, name));
    } catch (error) {
      throw new CheckpointLoadError(this.info.stepNr, `${name} of checkpoint ${this.info.stepNr} cannot be loaded: ${(error as Error).message}`, { cause: error });
    }
    this.opened.push(file);
    if (expected !== undefined && file.size !== expected.size) {
      throw new CheckpointLoadError(this.info.stepNr, `${name} of checkpoint ${this.info.stepNr} is corrupt: the manifest says ${expected.size} bytes, the file has ${file.size}`);
    }
    return file;
  }

  private has(name: string): boolean {
    return this.info.files.includes(name) || this.info.manifest?.files[name] !== undefined;
  }

  private describeLayouts(): string {
    const { saved, current } = this.layouts;
    return `dp=${saved.dpSize}, tp=${saved.tpSize}, loaded with dp=${current.dpSize}, tp=${current.tpSize}`;
  }
}

/** Every tensor and ShardedTensor under `root` with its key path (Map keys as findShardedTensors gives them). */
function leavesWithPaths(root: unknown, at: KeyPath): { path: KeyPath; leaf: Tensor | ShardedTensor }[] {
  const found: { path: KeyPath; leaf: Tensor | ShardedTensor }[] = [];
  const seen = new Set<object>();
  const pending: { value: unknown; path: KeyPath }[] = [{ value: root, path: at }];
  while (pending.length > 0) {
    const { value, path } = pending.pop()!;
    if (value instanceof Tensor || value instanceof ShardedTensor) {
      found.push({ path, leaf: value });
      continue;
    }
    if (typeof value !== "object" || value === null || ArrayBuffer.isView(value) || seen.has(value)) continue;
    seen.add(value);
    for (const [key, child] of childrenOf(value)) pending.push({ value: child, path: [...path, key] });
  }
  return found;
}

function childrenOf(value: object): [string | number, unknown][] {
  if (value instanceof Map) return [...value].map(([key, child]) => [typeof key === "number" ? key : String(key), child]);
  if (Array.isArray(value)) return value.map((child, i) => [i, child]);
  return Object.entries(value);
}

/**
 * Plain tensors of the tp files are taken as replicated over tp and read from the first file;
 * one whose shape differs between tp ranks is a tensor-parallel shard saved as a plain tensor,
 * which cannot be recut: refused by name rather than silently taken from tp rank 0.
 */
function checkReplicatedOverTp(files: TensorRegionFile[], names: string[]): void {
  for (const { path, leaf } of leavesWithPaths(files[0]!.state, [])) {
    if (!(leaf instanceof Tensor)) continue;
    files.forEach((file, i) => {
      const other = valueAt(file.state, path);
      if (!(other instanceof Tensor) || other.dtype !== leaf.dtype || other.shape.join() !== leaf.shape.join()) {
        throw new Error(
          `${JSON.stringify(path.join("/"))} is a plain tensor of [${leaf.shape.join(", ")}] in ${names[0]} but not in ${names[i]}: ` +
            "save tensor-parallel shards as ShardedTensor (globalShape, offsets) so they can be resharded",
        );
      }
    });
  }
}

function valueAt(root: unknown, path: KeyPath): unknown {
  let value = root;
  for (const key of path) {
    if (value instanceof Map) value = value.has(key) ? value.get(key) : value.get(String(key));
    else if (typeof value === "object" && value !== null && Object.hasOwn(value, key)) value = (value as Record<string | number, unknown>)[key];
    else return undefined;
  }
  return value;
}

/** The ShardedTensor at `path` in a file, or an error naming the file where it is missing. */
function shardAt(file: TensorRegionFile, path: KeyPath, names: string[]): SourceShard {
  const value = valueAt(file.state, path);
  if (!(value instanceof ShardedTensor)) {
    throw new Error(`${file.path.split("/").pop()} has no sharded tensor at ${JSON.stringify(path.join("/"))} (every one of ${names.join(", ")} must have the same structure)`);
  }
  return { file, tensor: value.shard, offsets: value.offsets };
}

/**
 * Whether one key of the rank files can be resharded: its tensors are all ShardedTensors and
 * everything else is equal on every rank (e.g. an optimizer's step count beside sharded moments).
 */
function isReshardable(values: unknown[]): boolean {
  const signatures = values.map((value) => {
    let plainTensor = false;
    const text = JSON.stringify(value ?? null, (_key, item: unknown) => {
      if (item instanceof Tensor) {
        plainTensor = true;
        return "tensor";
      }
      if (item instanceof ShardedTensor) return { sharded: item.globalShape, dtype: item.shard.dtype };
      if (item instanceof Map) return { map: [...item] };
      if (typeof item === "bigint") return `${item}n`;
      if (ArrayBuffer.isView(item)) return { bytes: Buffer.from(item.buffer, item.byteOffset, item.byteLength).toString("base64") };
      return item;
    });
    return plainTensor ? undefined : text;
  });
  return signatures.every((signature) => signature !== undefined && signature === signatures[0]);
}

function range(n: number): number[] {
  return Array.from({ length: n }, (_, i) => i);
}
