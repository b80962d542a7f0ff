import assert from "node:assert/strict";
import { test } from "node:test";

import { CheckpointLoadError, ShardedTensor, Tensor, type StateDict } from "../src/index.js";
import { arange, inProcessGangs, managersFor, onAllRanks, useTempDirs } from "./helpers/checkpoint-helpers.js";

const tempDir = useTempDirs("reshard");

/** The full 3-D tensor the shards come from: element i holds i. */
const FULL_SHAPE = [5, 3, 4];

/** The block of the full tensor at `offsets` of size `shape`, element by element. */
function block(offsets: readonly number[], shape: readonly number[]): number[] {
  const out: number[] = [];
  for (let a = 0; a < shape[0]!; a++) for (let b = 0; b < shape[1]!; b++) for (let c = 0; c < shape[2]!; c++) {
    out.push(((offsets[0]! + a) * FULL_SHAPE[1]! + offsets[1]! + b) * FULL_SHAPE[2]! + offsets[2]! + c);
  }
  return out;
}

/** Saves the full tensor split along `dim` over `dpSize` ranks (uneven: 5 rows over 2 or 3). */
async function saveSplit(dir: string, dpSize: number, tpSize: number, dim: number, perTpCopy = false): Promise<void> {
  const gangs = inProcessGangs(dpSize, tpSize);
  await onAllRanks(managersFor(dir, gangs), async (manager, rank) => {
    const [index, count] = perTpCopy ? [gangs[rank]!.dp.rank, dpSize] : [rank, dpSize * tpSize];
    const size = FULL_SHAPE[dim]!;
    const start = Math.floor((index * size) / count);
    const offsets = FULL_SHAPE.map((_, d) => (d === dim ? start : 0));
    const shape = FULL_SHAPE.map((s, d) => (d === dim ? Math.floor(((index + 1) * size) / count) - start : s));
    const shard = Tensor.from(Float32Array.from(block(offsets, shape)), { shape });
    await manager.beginCheckpoint(1);
    await manager.saveState({ model: { w: new ShardedTensor(shard, { globalShape: FULL_SHAPE, offsets }) }, step_nr: 1 });
    await manager.commitCheckpoint();
    await manager.close();
  });
}

function assertFromFull(value: unknown, offsets: number[], shape: number[], where: string): void {
  assert.ok(value instanceof ShardedTensor, `${where}: a ShardedTensor`);
  assert.deepEqual([...value.offsets], offsets, `${where}: offsets`);
  assert.deepEqual([...value.shard.shape], shape, `${where}: shape`);
  assert.deepEqual([...value.shard.data], block(offsets, shape), `${where}: every element from the full tensor`);
}

test("a 3-D tensor split along dim 1 over 3 ranks is recut along dim 1 over 2, rows of uneven sizes included", async () => {
  const dir = await tempDir();
  await saveSplit(dir, 3, 1, 1);
  const managers = managersFor(dir, inProcessGangs(2, 1));
  const states = await onAllRanks(managers, (manager) => manager.loadCheckpoint(1, { reshard: true }));
  assertFromFull((states[0]!.model as StateDict).w, [0, 0, 0], [5, 1, 4], "rank 0");
  assertFromFull((states[1]!.model as StateDict).w, [0, 1, 0], [5, 2, 4], "rank 1");
  assert.equal(states[1]!.step_nr, 1, "a value equal on every rank comes back as it was");
});

test("a per-key plan: another split dimension, or a block computed from the rank's place", async () => {
  const dir = await tempDir();
  await saveSplit(dir, 2, 1, 0);
  const byDim = await onAllRanks(managersFor(dir, inProcessGangs(2, 1)), (manager) => manager.loadCheckpoint(1, { reshard: { plan: { "model/w": { dim: 2 } } } }));
  assertFromFull((byDim[0]!.model as StateDict).w, [0, 0, 0], [5, 3, 2], "dim 2, rank 0");
  assertFromFull((byDim[1]!.model as StateDict).w, [0, 0, 2], [5, 3, 2], "dim 2, rank 1");
  const plan = { "model/w": ({ index }: { index: number }) => ({ offsets: [index, 1, 1], shape: [3, 2, 3] }) };
  const byBlock = await onAllRanks(managersFor(dir, inProcessGangs(3, 1)), (manager) => manager.loadCheckpoint(1, { reshard: { plan } }));
  byBlock.forEach((state, rank) => assertFromFull((state.model as StateDict).w, [rank, 1, 1], [3, 2, 3], `block of rank ${rank}`));
  const [outside] = managersFor(dir, inProcessGangs(1, 1));
  await assert.rejects(outside!.loadCheckpoint(1, { reshard: { plan: { "model/w": { offsets: [4, 0, 0], shape: [2, 3, 4] } } } }), /the reshard plan for "model\/w" asks for a block that does not fit \[5, 3, 4\]/);
});

test("without reshard another layout is still refused, and the message says how to reshard", async () => {
  const dir = await tempDir();
  await saveSplit(dir, 2, 1, 0);
  const [manager] = managersFor(dir, inProcessGangs(1, 1));
  await assert.rejects(manager!.loadCheckpoint(1), (error: unknown) => error instanceof CheckpointLoadError && /saved with dp=2, tp=1 but this job has dp=1, tp=1.*reshard: true/.test(error.message));
});

test("shards that each tensor-parallel rank holds whole recut over dp within the same tp size, and are refused for another tp size by name", async () => {
  const dir = await tempDir();
  await saveSplit(dir, 2, 2, 0, true);
  const sameTp = await onAllRanks(managersFor(dir, inProcessGangs(1, 2)), (manager) => manager.loadCheckpoint(1, { reshard: true }));
  for (const state of sameTp) assertFromFull((state.model as StateDict).w, [0, 0, 0], [5, 3, 4], "dp=1");
  const [other] = managersFor(dir, inProcessGangs(1, 1));
  await assert.rejects(other!.loadCheckpoint(1, { reshard: true }), /the shards of "model\/w" in checkpoint 1 .*each tensor-parallel rank holds its own full copy, which cannot be resharded to tp=1/);
});

test("a plain tensor in the rank files is a per-rank value: rank 0's copy on request, else refused naming it", async () => {
  const dir = await tempDir();
  const gangs = inProcessGangs(2, 1);
  await onAllRanks(managersFor(dir, gangs), async (manager, rank) => {
    await manager.beginCheckpoint(3);
    await manager.saveState({ rng: arange(rank * 10, [2]), seen: rank, step_nr: 3 });
    await manager.commitCheckpoint();
    await manager.close();
  });
  const [single] = managersFor(dir, inProcessGangs(1, 1));
  await assert.rejects(single!.loadCheckpoint(3, { reshard: true }), /the per-rank keys "rng", "seen" differ by rank and cannot be resharded/);
  const state = await single!.loadCheckpoint(3, { reshard: { perRank: { rng: "rank0", seen: (values) => values.length } } });
  assert.deepEqual([...(state.rng as Tensor).data], [0, 1]);
  assert.equal(state.seen, 2);
  assert.equal(state.step_nr, 3);
});

test("loadModel with reshard: a tensor-parallel model of tp=2 loads at tp=1 and tp=4, also once pruned to its model files", async () => {
  const dir = await tempDir();
  const gangs = inProcessGangs(1, 2);
  await onAllRanks(managersFor(dir, gangs), async (manager, rank) => {
    // Column-parallel: tp rank r holds columns [2r, 2r + 2) of the full [5, 3, 4] tensor's last dimension.
    const offsets = [0, 0, rank * 2];
    const w = new ShardedTensor(Tensor.from(Float32Array.from(block(offsets, [5, 3, 2])), { shape: [5, 3, 2] }), { globalShape: FULL_SHAPE, offsets });
    await manager.beginCheckpoint(1);
    await manager.saveState({ model: { w, norm: arange(0, [3]) }, data: { cursor: rank } });
    await manager.commitCheckpoint();
    await manager.beginCheckpoint(2);
    await manager.saveState({ model: { w, norm: arange(0, [3]) }, data: { cursor: rank } });
    await manager.commitCheckpoint();
    await manager.keepLastNCheckpoints(1, { preserveModel: true });
    await manager.close();
  });
  for (const stepNr of [1, 2]) {
    const [whole] = managersFor(dir, inProcessGangs(1, 1));
    await assert.rejects(whole!.loadModel(stepNr), /saved with dp=1, tp=2 but this job has dp=1, tp=1/);
    const model = await whole!.loadModel(stepNr, { reshard: true });
    assertFromFull(model.w, [0, 0, 0], [5, 3, 4], `step ${stepNr} at tp=1`);
    assert.deepEqual([...(model.norm as Tensor).data], [0, 1, 2]);
    const four = await onAllRanks(managersFor(dir, inProcessGangs(1, 4)), (manager) => manager.loadModel(stepNr, { reshard: true }));
    four.forEach((m, rank) => assertFromFull(m.w, [0, 0, rank], [5, 3, 1], `step ${stepNr} at tp=4, rank ${rank}`));
  }
});

test("a tensor-parallel shard saved as a plain tensor (shapes differ between tp files) is refused by name, not taken from tp rank 0", async () => {
  const dir = await tempDir();
  await onAllRanks(managersFor(dir, inProcessGangs(1, 2)), async (manager, rank) => {
    await manager.beginCheckpoint(1);
    await manager.saveState({ model: { w: arange(0, [2 + rank]) } });
    await manager.commitCheckpoint();
    await manager.close();
  });
  const [whole] = managersFor(dir, inProcessGangs(1, 1));
  await assert.rejects(whole!.loadModel(1, { reshard: true }), /"model\/w" is a plain tensor of \[2\] in model\.0\.pt but not in model\.1\.pt: save tensor-parallel shards as ShardedTensor/);
});

test("shards that claim a huge full tensor they do not cover are refused before anything that size is allocated", async () => {
  const dir = await tempDir();
  await onAllRanks(managersFor(dir, inProcessGangs(1, 2)), async (manager, rank) => {
    await manager.beginCheckpoint(1);
    await manager.saveState({ model: { w: new ShardedTensor(arange(0, [2]), { globalShape: [1e12], offsets: [rank * 2] }) } });
    await manager.commitCheckpoint();
    await manager.close();
  });
  const [whole] = managersFor(dir, inProcessGangs(1, 1));
  await assert.rejects(whole!.loadModel(1, { reshard: true }), (error: unknown) => error instanceof CheckpointLoadError && /the saved shards cover 4 of the 1000000000000 elements asked for/.test(error.message));
});

test("a model saved under its own key (modelKey \"net\") reshards under that key, and plan keys use it", async () => {
  const dir = await tempDir();
  await onAllRanks(managersFor(dir, inProcessGangs(1, 2)), async (manager, rank) => {
    const offsets = [rank * 2, 0, 0];
    const shape = [rank === 0 ? 2 : 3, 3, 4];
    const w = new ShardedTensor(Tensor.from(Float32Array.from(block(offsets, shape)), { shape }), { globalShape: FULL_SHAPE, offsets });
    await manager.beginCheckpoint(1);
    await manager.saveState({ net: { w }, step_nr: 1 }, { modelKey: "net" });
    await manager.commitCheckpoint();
    await manager.close();
  });
  const states = await onAllRanks(managersFor(dir, inProcessGangs(1, 3)), (manager) => manager.loadCheckpoint(1, { reshard: { plan: { "net/w": { dim: 1 } } } }));
  states.forEach((state, rank) => {
    assert.deepEqual(Object.keys(state).sort(), ["net", "step_nr"]);
    assertFromFull((state.net as StateDict).w, [0, rank, 0], [5, 1, 4], `tp rank ${rank}`);
  });
});
