/**
 * A training process for the resharding tests, run by `ckpt launch` as
 * `node --import tsx reshard-worker.ts <checkpointDir> <scenario> [arg]`. Prints one line
 * `result <json>` on success, or `error <name>: <message>` and exits 1.
 *
 * Scenarios:
 * - `save <step>`: every rank saves its share of the same full tensors (`fullTensor`): sharded over
 *   all ranks (dim 0 for "col.weight" and the optimizer's "exp_avg", dim 1 for "row.weight"); a
 *   "norm" that is plain (replicated) when the model is in model files (dp = 1), sharded otherwise;
 *   a per-rank `data.cursor`; `epoch` replicated.
 * - `resume <policy>`: loads the last checkpoint with `reshard` (policy for the per-rank key
 *   "data": `rank0`, `sum` (a function adding every rank's cursor) or `none`; `plain` loads without
 *   `reshard`, for a checkpoint written for this layout), compares every
 *   tensor element by element with the full tensor it came from, and reports the bytes it read.
 */
import { FileCheckpointManager, LocalFileSystem, ShardedTensor, Tensor, closeGangs, initGangs, type FileSystem, type LoadOptions, type PerRankPolicy, type StateDict, type StateValue } from "../../src/index.js";

const [checkpointDir, scenario, arg] = process.argv.slice(2) as [string, string, string | undefined];

/** The full tensors every layout holds a share of; element i of `name` is a value unique to both. */
export const FULL_SHAPES: Record<string, number[]> = { "col.weight": [256, 64], "row.weight": [64, 256], exp_avg: [256, 64], norm: [64] };
const SPLIT_DIM: Record<string, number> = { "col.weight": 0, "row.weight": 1, exp_avg: 0, norm: 0 };

function fullTensor(name: string): Float32Array {
  const shape = FULL_SHAPES[name]!;
  const code = Object.keys(FULL_SHAPES).indexOf(name) + 1;
  return Float32Array.from({ length: shape.reduce((n, s) => n * s, 1) }, (_, i) => code * 100_000 + i);
}

/** Part `index` of `count` of `name`, split along its dimension like evenSplit. */
function shareOf(name: string, index: number, count: number): ShardedTensor {
  const shape = FULL_SHAPES[name]!;
  const dim = SPLIT_DIM[name]!;
  const start = Math.floor((index * shape[dim]!) / count);
  const size = Math.floor(((index + 1) * shape[dim]!) / count) - start;
  const offsets = shape.map((_, d) => (d === dim ? start : 0));
  const local = shape.map((s, d) => (d === dim ? size : s));
  return new ShardedTensor(regionOf(name, offsets, local), { globalShape: shape, offsets });
}

/** The block of a full tensor at `offsets` of size `local`, copied out element by element. */
function regionOf(name: string, offsets: readonly number[], local: readonly number[]): Tensor {
  const full = fullTensor(name);
  const shape = FULL_SHAPES[name]!;
  const out = new Float32Array(local.reduce((n, s) => n * s, 1));
  out.forEach((_, i) => {
    let rest = i;
    let at = 0;
    let stride = 1;
    for (let d = local.length - 1; d >= 0; d--) {
      const index = (rest % local[d]!) + offsets[d]!;
      rest = Math.floor(rest / local[d]!);
      at += index * stride;
      stride *= shape[d]!;
    }
    out[i] = full[at]!;
  });
  return Tensor.from(out, { shape: local });
}

/** Counts the bytes read through positioned reads (every tensor file is read through openReader). */
function countingFileSystem(): { fileSystem: FileSystem; bytesRead: () => number } {
  const local = new LocalFileSystem();
  let bytes = 0;
  const fileSystem = new Proxy(local, {
    get(target, property, receiver) {
      if (property !== "openReader") {
        const value = Reflect.get(target, property, receiver) as unknown;
        return typeof value === "function" ? (value as (...a: unknown[]) => unknown).bind(target) : value;
      }
      return async (path: string) => {
        const reader = await target.openReader(path);
        return {
          size: reader.size,
          read: (position: number, length: number, into?: Uint8Array) => {
            bytes += length;
            return reader.read(position, length, into);
          },
          close: () => reader.close(),
        };
      };
    },
  });
  return { fileSystem, bytesRead: () => bytes };
}

const gangs = await initGangs();
const { root, dp, tp } = gangs;
const counting = countingFileSystem();
const manager = new FileCheckpointManager({ checkpointDir, gangs, fileSystem: counting.fileSystem });
const say = (line: string): void => void process.stdout.write(`${line}\n`);
try {
  let result: unknown;
  if (scenario === "save") {
    const stepNr = Number(arg);
    const [index, count] = [root.rank, root.size];
    const model: StateDict = { "col.weight": shareOf("col.weight", index, count), "row.weight": shareOf("row.weight", index, count) };
    model.norm = dp.size === 1 ? Tensor.from(fullTensor("norm"), { shape: FULL_SHAPES.norm! }) : shareOf("norm", index, count);
    const state: StateDict = {
      model,
      optimizer: { state: new Map([[0, { step: stepNr, exp_avg: shareOf("exp_avg", index, count) }]]) },
      data: { cursor: 1000 + root.rank },
      epoch: 3,
      step_nr: stepNr,
    };
    await manager.beginCheckpoint(stepNr);
    await manager.saveState(state, { replicatedKeys: ["epoch"] });
    await manager.commitCheckpoint();
    result = { rank: root.rank, saved: true };
  } else if (scenario === "resume") {
    const data: PerRankPolicy | undefined = arg === "rank0" ? "rank0" : arg === "sum" ? (values: StateValue[]) => ({ cursor: values.reduce<number>((n, v) => n + ((v as StateDict).cursor as number), 0) }) : undefined;
    const reshard: LoadOptions["reshard"] = arg === "plain" ? undefined : data === undefined ? true : { perRank: { data } };
    const { stepNr, state } = await manager.loadLastCheckpoint(reshard === undefined ? {} : { reshard });
    const problems: string[] = [];
    let shareBytes = 0;
    const check = (name: string, value: unknown, world: { index: number; count: number }): void => {
      if (value instanceof Tensor) {
        const expected = fullTensor(name);
        if (value.shape.join() !== FULL_SHAPES[name]!.join() || value.data.some((x, i) => x !== expected[i])) problems.push(`${name} (whole) differs`);
        shareBytes += value.byteLength;
        return;
      }
      if (!(value instanceof ShardedTensor)) return void problems.push(`${name} is missing`);
      const want = shareOf(name, world.index, world.count);
      if (value.offsets.join() !== want.offsets.join() || value.shard.shape.join() !== want.shard.shape.join()) {
        problems.push(`${name}: offsets [${value.offsets.join()}] shape [${value.shard.shape.join()}], expected [${want.offsets.join()}] [${want.shard.shape.join()}]`);
      }
      // Element by element against the full tensor at the offsets the shard says it has.
      const expected = regionOf(name, value.offsets, value.shard.shape).data;
      const actual = value.shard.data;
      if (actual.length !== expected.length || actual.some((x, i) => x !== expected[i])) problems.push(`${name}: elements differ from the full tensor`);
      shareBytes += value.shard.byteLength;
    };
    const model = state.model as StateDict;
    // A model in model files is split over tp only (replicated over dp); in rank files over every rank.
    const inModelFiles = model.norm instanceof Tensor;
    const modelWorld = inModelFiles ? { index: tp.rank, count: tp.size } : { index: root.rank, count: root.size };
    for (const name of ["col.weight", "row.weight", "norm"]) check(name, model[name], modelWorld);
    const slot = ((state.optimizer as StateDict).state as Map<number, StateDict>).get(0)!;
    check("exp_avg", slot.exp_avg, { index: root.rank, count: root.size });
    if (slot.step !== stepNr || state.step_nr !== stepNr || state.epoch !== 3) problems.push("scalars differ");
    result = { rank: root.rank, stepNr, problems, cursor: (state.data as StateDict).cursor, bytesRead: counting.bytesRead(), shareBytes };
  } else {
    throw new Error(`unknown scenario ${scenario}`);
  }
  await manager.close();
  say(`result ${JSON.stringify(result)}`);
  await closeGangs(gangs);
} catch (error) {
  say(`error ${(error as Error).name}: ${(error as Error).message}`);
  process.exitCode = 1;
  await closeGangs(gangs).catch(() => undefined);
}
