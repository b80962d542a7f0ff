import { ShardedTensor, copyShardInto } from "../tensor/sharded-tensor.js";
import { Tensor } from "../tensor/tensor.js";
import type { StateValue } from "../values/py-values.js";
import type { ManifestShardedTensor } from "./manifest.js";
import { mapTree } from "./snapshot.js";

/** A sharded tensor found in a state, with its key path. */
export interface ShardedEntry {
  path: (string | number)[];
  tensor: ShardedTensor;
}

/** Every ShardedTensor in `root` with its key path, in a fixed order (keys in order, depth first). */
export function findShardedTensors(root: unknown): ShardedEntry[] {
  const found: ShardedEntry[] = [];
  const seen = new Set<object>();
  const pending: { value: unknown; path: (string | number)[] }[] = [{ value: root, path: [] }];
  while (pending.length > 0) {
    const { value, path } = pending.pop()!;
    if (value instanceof ShardedTensor) {
      found.push({ path, tensor: value });
      continue;
    }
    if (typeof value !== "object" || value === null || value instanceof Tensor || ArrayBuffer.isView(value) || seen.has(value)) continue;
    seen.add(value);
    // Runs on every save: leaves (tensors, numbers, strings: tens of thousands in a state) are
    // dropped before a pair, a pending entry and a path are made for them.
    const children: [string | number, unknown][] = [];
    const meet = (key: string | number, child: unknown): void => {
      if (typeof child === "object" && child !== null && !(child instanceof Tensor) && !ArrayBuffer.isView(child)) children.push([key, child]);
    };
    if (value instanceof Map) for (const [key, child] of value) meet(typeof key === "number" ? key : String(key), child);
    else if (Array.isArray(value)) for (let i = 0; i < value.length; i++) meet(i, value[i]);
    else for (const key of Object.keys(value)) meet(key, (value as Record<string, unknown>)[key]);
    for (let i = children.length - 1; i >= 0; i--) pending.push({ value: children[i]![1], path: [...path, children[i]![0]] });
  }
  return found;
}

/** What the manifest records of the sharded tensors one rank wrote into `file`. */
export function describeShards(file: string, tpRank: number, entries: ShardedEntry[]): ManifestShardedTensor[] {
  return entries.map(({ path, tensor }) => ({
    path,
    tpRank,
    dtype: tensor.shard.dtype,
    globalShape: [...tensor.globalShape],
    shards: [{ file, offsets: [...tensor.offsets], shape: [...tensor.shard.shape] }],
  }));
}

/** Merges the ranks' descriptions: one entry per (tp rank, key path) with every rank's shard. */
export function mergeShardDescriptions(reported: ManifestShardedTensor[][]): ManifestShardedTensor[] {
  const merged = new Map<string, ManifestShardedTensor>();
  for (const entries of reported) {
    for (const entry of entries) {
      const key = JSON.stringify([entry.tpRank, entry.path]);
      const known = merged.get(key);
      if (known === undefined) merged.set(key, { ...entry, shards: [...entry.shards] });
      else known.shards.push(...entry.shards);
    }
  }
  for (const entry of merged.values()) entry.shards.sort((a, b) => a.file.localeCompare(b.file));
  return [...merged.values()];
}

/**
 * The full model from this rank's model state and every data-parallel rank's shards (`shardsByRank`,
 * each a list in findShardedTensors order): each sharded tensor becomes a full contiguous tensor
 * with every shard copied in; the shards' sizes must add up to the whole tensor.
 */
export function assembleModel(model: StateValue, shardsByRank: ShardedTensor[][]): StateValue {
  const own = findShardedTensors(model);
  const full = new Map<ShardedTensor, Tensor>();
  own.forEach(({ path, tensor }, i) => {
    const where = JSON.stringify(path);
    const target = Tensor.zeros(tensor.globalShape, tensor.shard.dtype);
    let covered = 0;
    shardsByRank.forEach((shards, rank) => {
      const shard = shards[i];
      if (shard === undefined) throw new Error(`data-parallel rank ${rank} has no shard of ${where}: every rank must pass the same model structure`);
      if (shard.globalShape.join() !== tensor.globalShape.join() || shard.shard.dtype !== tensor.shard.dtype) {
        throw new Error(`the shards of ${where} disagree: rank ${rank} has a ${shard.shard.dtype} shard of [${shard.globalShape.join(", ")}], rank 0 of [${tensor.globalShape.join(", ")}] ${tensor.shard.dtype}`);
      }
      copyShardInto(target, shard.shard, shard.offsets);
      covered += shard.shard.numel;
    });
    if (covered !== target.numel) throw new Error(`the shards of ${where} cover ${covered} of its ${target.numel} elements: they must tile it exactly`);
    full.set(tensor, target);
  });
  return mapTree(model, (leaf) => (leaf instanceof ShardedTensor ? full.get(leaf)! : leaf)) as StateValue;
}
