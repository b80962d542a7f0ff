import assert from "node:assert/strict";
import { mkdir, readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { test } from "node:test";

import {
  CheckpointLoadError,
  CheckpointNotFoundError,
  FileCheckpointManager,
  InvalidArgumentError,
  type RetentionResult,
} from "../src/index.js";
import {
  assertManifestMatchesFiles,
  assertSameState,
  entries,
  inProcessGangs,
  listFiles,
  managersFor,
  modelState,
  onAllRanks,
  readManifest,
  saveStep,
  trainingState,
  useTempDirs,
} from "./helpers/checkpoint-helpers.js";

const tempDir = useTempDirs("retention");

/** A manager over a fresh directory holding committed checkpoints of `steps`, with `scores` (higher is better). */
async function withCheckpoints(steps: number[], scores: Record<number, number> = {}, lowerBetter = false): Promise<{ dir: string; manager: FileCheckpointManager }> {
  const dir = await tempDir();
  const manager = new FileCheckpointManager({ checkpointDir: dir });
  for (const stepNr of steps) {
    const score = scores[stepNr];
    await saveStep(manager, stepNr, score === undefined ? {} : { score, lowerBetter });
  }
  return { dir, manager };
}

// ------------------------------------------------------------------ queries

test("getStepNumbers lists committed steps in ascending numeric order; hasCheckpoint and getLastStepNumber agree", async () => {
  const { dir, manager } = await withCheckpoints([10, 2, 100, 9]);
  assert.deepEqual(await manager.getStepNumbers(), [2, 9, 10, 100], "numeric, not string order");
  assert.equal(await manager.getLastStepNumber(), 100);
  assert.equal(await manager.hasCheckpoint(), true);
  assert.equal(await manager.hasCheckpoint(9), true);
  assert.equal(await manager.hasCheckpoint(11), false);
  const infos = await manager.listCheckpoints();
  assert.deepEqual(infos.map((info) => info.stepNr), [2, 9, 10, 100]);
  assert.equal(infos[0]!.path, join(dir, "step_2"));
  assert.ok(infos.every((info) => info.manifest !== undefined && !info.modelOnly && info.score === undefined));
  assert.ok(infos[0]!.files.includes("rank_0.pt"));
  await manager.close();

  const empty = new FileCheckpointManager({ checkpointDir: join(await tempDir(), "missing") });
  assert.deepEqual(await empty.getStepNumbers(), []);
  assert.equal(await empty.hasCheckpoint(), false);
  assert.equal(await empty.getLastStepNumber(), undefined);
  assert.deepEqual(await empty.getScores(), []);
  assert.deepEqual(await empty.listCheckpoints(), []);
});

test("step 0 is a checkpoint like any other", async () => {
  const { manager } = await withCheckpoints([0]);
  assert.deepEqual(await manager.getStepNumbers(), [0]);
  assert.equal(await manager.hasCheckpoint(0), true);
  assertSameState(await manager.loadCheckpoint(0), trainingState(0));
  await manager.close();
});

test("the largest step number the manager accepts is listed and loads", async () => {
  const { dir, manager } = await withCheckpoints([Number.MAX_SAFE_INTEGER, 1]);
  assert.deepEqual(await manager.getStepNumbers(), [1, Number.MAX_SAFE_INTEGER]);
  assertSameState(await manager.loadCheckpoint(Number.MAX_SAFE_INTEGER), trainingState(Number.MAX_SAFE_INTEGER));
  await manager.close();
  await mkdir(join(dir, "step_9007199254740993")); // beyond 2^53: no step number can name it
  assert.deepEqual(await new FileCheckpointManager({ checkpointDir: dir }).getStepNumbers(), [1, Number.MAX_SAFE_INTEGER]);
});

test("unfinished, half-deleted and junk entries are never listed", async () => {
  const { dir, manager } = await withCheckpoints([5]);
  await manager.close();
  for (const name of ["step_6.tmp", "step_7.deleting", "step_abc", "step_-1", "stepx_3", "step_", "step_1e3", "step_ 4", "step_08", "step_0012", "Step_8", "step_9.bak", "step_10x"]) {
    await mkdir(join(dir, name));
    await writeFile(join(dir, name, "rank_0.pt"), "junk");
  }
  await writeFile(join(dir, "step_11"), "a file, not a directory");
  await writeFile(join(dir, "notes.txt"), "hello");
  const reader = new FileCheckpointManager({ checkpointDir: dir });
  assert.deepEqual(await reader.getStepNumbers(), [5]);
  assert.deepEqual(await reader.getStepNumbers({ includeModelOnly: true }), [5]);
  assert.equal(await reader.hasCheckpoint(6), false);
  assert.equal(await reader.hasCheckpoint(7), false);
  assert.equal(await reader.hasCheckpoint(11), false);
  await assert.rejects(reader.loadCheckpoint(6), CheckpointNotFoundError);
  await assert.rejects(reader.loadCheckpoint(11), CheckpointNotFoundError);
  assert.equal(await reader.getLastStepNumber(), 5);
});

test("getScores returns every scored checkpoint's stored score (higher is better), in step order", async () => {
  const { manager } = await withCheckpoints([1, 2, 3, 4], { 1: 0.5, 3: -2, 4: 0 }, true);
  assert.deepEqual(await manager.getScores(), [
    { stepNr: 1, score: -0.5 },
    { stepNr: 3, score: 2 },
    { stepNr: 4, score: 0 },
  ]);
  await manager.close();
});

// ------------------------------------------------------------------ deleteCheckpoint

test("deleteCheckpoint removes a checkpoint; a missing one is CheckpointNotFoundError unless missingOk", async () => {
  const { dir, manager } = await withCheckpoints([1, 2, 3]);
  await manager.deleteCheckpoint(2);
  assert.deepEqual(await entries(dir), [".ckpt.lock", "step_1", "step_3"]);
  assert.deepEqual(await manager.getStepNumbers(), [1, 3]);
  await assert.rejects(manager.deleteCheckpoint(2), (error: unknown) => {
    assert.ok(error instanceof CheckpointNotFoundError);
    assert.equal(error.stepNr, 2);
    return true;
  });
  await manager.deleteCheckpoint(2, { missingOk: true });
  await manager.deleteCheckpoint(3);
  assert.equal(await manager.getLastStepNumber(), 1);
  assertSameState(await manager.loadCheckpoint(1), trainingState(1));
  await manager.close();
});

test("deleteCheckpoint with preserveModel keeps the model files, score and carbon copies, and rewrites the manifest", async () => {
  const dir = await tempDir();
  await mkdir(join(dir, "cc"));
  await writeFile(join(dir, "cc", "tokenizer.model"), "vocab");
  const manager = new FileCheckpointManager({ checkpointDir: dir });
  await saveStep(manager, 1);
  await saveStep(manager, 2, { score: 0.5, lowerBetter: true, metadata: { note: "x" } });
  assert.deepEqual(await listFiles(join(dir, "step_2")), ["manifest.json", "metadata.pt", "model.pt", "rank_0.pt", "replicated.pt", "score.txt", "tokenizer.model"]);
  const before = await readManifest(dir, 2);

  await manager.deleteCheckpoint(2, { preserveModel: true });
  assert.deepEqual(await listFiles(join(dir, "step_2")), ["manifest.json", "model.pt", "score.txt", "tokenizer.model"]);
  const after = await assertManifestMatchesFiles(dir, 2);
  assert.equal(after.modelOnly, true);
  assert.deepEqual(after.files["model.pt"], before.files["model.pt"], "the model file is untouched");
  assert.equal(after.createdAt, before.createdAt);
  assert.equal(await readFile(join(dir, "step_2", "score.txt"), "utf8"), "-0.5\n");

  // Not offered for resuming ...
  assert.deepEqual(await manager.getStepNumbers(), [1]);
  assert.equal(await manager.hasCheckpoint(2), false);
  assert.equal(await manager.getLastStepNumber(), 1);
  assert.equal((await manager.loadLastCheckpoint()).stepNr, 1);
  await assert.rejects(manager.loadCheckpoint(2), (error: unknown) => {
    assert.ok(error instanceof CheckpointLoadError);
    assert.equal(error.stepNr, 2);
    assert.match(error.message, /keeps only its model .*load it with loadModel\(2\)/);
    return true;
  });
  // ... but listed on request, and loadable as a model, with its score and metadata gone.
  assert.deepEqual(await manager.getStepNumbers({ includeModelOnly: true }), [1, 2]);
  assert.equal(await manager.hasCheckpoint(2, { includeModelOnly: true }), true);
  assert.equal(await manager.getLastStepNumber({ includeModelOnly: true }), 2);
  assertSameState(await manager.loadModel(2), modelState(2));
  assert.deepEqual(await manager.getScores(), [{ stepNr: 2, score: -0.5 }]);
  assert.equal(await manager.loadMetadata(2), null);
  assert.equal((await manager.listCheckpoints()).find((c) => c.stepNr === 2)?.modelOnly, true);

  // Stripping again changes nothing; deleting without preserveModel removes it.
  await manager.deleteCheckpoint(2, { preserveModel: true });
  assert.deepEqual(await listFiles(join(dir, "step_2")), ["manifest.json", "model.pt", "score.txt", "tokenizer.model"]);
  await manager.deleteCheckpoint(2);
  assert.deepEqual(await manager.getStepNumbers({ includeModelOnly: true }), [1]);
  await manager.close();
});

// ------------------------------------------------------------------ keepLastN / keepBestN

test("n that is not a positive integer is InvalidArgumentError for both retention rules, and nothing is deleted", async () => {
  const { manager } = await withCheckpoints([1, 2, 3], { 1: 1, 2: 2, 3: 3 });
  for (const n of [0, -1, 1.5, Number.NaN, Number.POSITIVE_INFINITY, "3", null, undefined, 2n]) {
    await assert.rejects(manager.keepLastNCheckpoints(n as number), InvalidArgumentError, `keepLastNCheckpoints(${String(n)})`);
    await assert.rejects(manager.keepBestNCheckpoints(n as number), InvalidArgumentError, `keepBestNCheckpoints(${String(n)})`);
  }
  assert.deepEqual(await manager.getStepNumbers(), [1, 2, 3]);
  await manager.close();
});

test("keepLastNCheckpoints deletes all but the last n and returns what it deleted", async () => {
  const { dir, manager } = await withCheckpoints([100, 200, 300, 400, 500]);
  assert.deepEqual(await manager.keepLastNCheckpoints(10), { deleted: [], stripped: [] });
  assert.deepEqual(await manager.keepLastNCheckpoints(5), { deleted: [], stripped: [] });
  assert.deepEqual(await manager.keepLastNCheckpoints(3), { deleted: [100, 200], stripped: [] });
  assert.deepEqual(await manager.getStepNumbers(), [300, 400, 500]);
  assert.deepEqual(await manager.keepLastNCheckpoints(1), { deleted: [300, 400], stripped: [] });
  assert.deepEqual(await entries(dir), [".ckpt.lock", "step_500"]);
  assertSameState(await manager.loadCheckpoint(500), trainingState(500));
  await manager.close();
});

test("keepLastNCheckpoints with preserveModel strips the older checkpoints to their models", async () => {
  const { dir, manager } = await withCheckpoints([1, 2, 3, 4]);
  const result: RetentionResult = await manager.keepLastNCheckpoints(2, { preserveModel: true });
  assert.deepEqual(result, { deleted: [], stripped: [1, 2] });
  assert.deepEqual(await manager.getStepNumbers(), [3, 4]);
  assert.deepEqual(await manager.getStepNumbers({ includeModelOnly: true }), [1, 2, 3, 4]);
  for (const stepNr of [1, 2]) {
    assert.deepEqual(await listFiles(join(dir, `step_${stepNr}`)), ["manifest.json", "model.pt"]);
    assert.equal((await assertManifestMatchesFiles(dir, stepNr)).modelOnly, true);
    assertSameState(await manager.loadModel(stepNr), modelState(stepNr));
  }
  // The model-only ones are not counted as resumable and are left alone the next time.
  await saveStep(manager, 5);
  assert.deepEqual(await manager.keepLastNCheckpoints(2, { preserveModel: true }), { deleted: [], stripped: [3] });
  assert.deepEqual(await manager.getStepNumbers(), [4, 5]);
  assert.deepEqual(await manager.getStepNumbers({ includeModelOnly: true }), [1, 2, 3, 4, 5]);
  await manager.close();
});

test("keepBestNCheckpoints keeps the n best scores and always the last checkpoint", async () => {
  const { manager } = await withCheckpoints([1, 2, 3, 4, 5], { 1: 5, 2: 9, 3: 7, 4: 1, 5: 0 });
  assert.deepEqual(await manager.keepBestNCheckpoints(2), { deleted: [1, 4], stripped: [] });
  assert.deepEqual(await manager.getStepNumbers(), [2, 3, 5], "5 has the worst score but is the last");
  assert.deepEqual(await manager.keepBestNCheckpoints(1), { deleted: [3], stripped: [] });
  assert.deepEqual(await manager.getStepNumbers(), [2, 5]);
  assert.equal(await manager.getBestStepNumber(), 2);
  await manager.close();
});

test("keepBestNCheckpoints with lower-better negative scores keeps the lowest losses", async () => {
  // Losses (lower is better): -3 is the best, then -1, 0.5, 2; step 5 is the last.
  const { manager } = await withCheckpoints([1, 2, 3, 4, 5], { 1: 0.5, 2: -1, 3: 2, 4: -3, 5: 1 }, true);
  assert.deepEqual(await manager.getScores(), [
    { stepNr: 1, score: -0.5 },
    { stepNr: 2, score: 1 },
    { stepNr: 3, score: -2 },
    { stepNr: 4, score: 3 },
    { stepNr: 5, score: -1 },
  ]);
  assert.deepEqual(await manager.keepBestNCheckpoints(2), { deleted: [1, 3], stripped: [] });
  assert.deepEqual(await manager.getStepNumbers(), [2, 4, 5]);
  assert.equal(await manager.getBestStepNumber(), 4);
  await manager.close();
});

test("keepBestNCheckpoints breaks a tie in favour of the later step", async () => {
  const { manager } = await withCheckpoints([1, 2, 3, 4], { 1: 5, 2: 5, 3: 5, 4: 1 });
  assert.deepEqual(await manager.keepBestNCheckpoints(2), { deleted: [1], stripped: [] });
  assert.deepEqual(await manager.getStepNumbers(), [2, 3, 4]);
  await manager.close();
});

test("keepBestNCheckpoints never deletes a checkpoint without a score", async () => {
  const { manager } = await withCheckpoints([1, 2, 3, 4, 5, 6], { 2: 1, 4: 3, 5: 2 });
  assert.deepEqual(await manager.keepBestNCheckpoints(1), { deleted: [2, 5], stripped: [] });
  assert.deepEqual(await manager.getStepNumbers(), [1, 3, 4, 6]);
  assert.deepEqual(await manager.keepBestNCheckpoints(1), { deleted: [], stripped: [] }, "nothing more to do");
  await manager.close();
});

test("keepBestNCheckpoints with preserveModel strips the worse checkpoints, and scored model-only ones still compete", async () => {
  const { dir, manager } = await withCheckpoints([1, 2, 3, 4], { 1: 4, 2: 3, 3: 2, 4: 1 });
  assert.deepEqual(await manager.keepBestNCheckpoints(2, { preserveModel: true }), { deleted: [], stripped: [3] });
  assert.deepEqual(await manager.getStepNumbers(), [1, 2, 4]);
  assert.deepEqual(await listFiles(join(dir, "step_3")), ["manifest.json", "model.pt", "score.txt"]);
  // A model-only checkpoint with a top score counts among the n best, and one that is not is deleted.
  assert.deepEqual(await manager.keepBestNCheckpoints(1), { deleted: [2, 3], stripped: [] });
  assert.deepEqual(await manager.getStepNumbers({ includeModelOnly: true }), [1, 4]);
  await manager.close();
});

test("retention on four InProcessGang ranks deletes once and every rank gets the same result", async () => {
  const dir = await tempDir();
  const managers = managersFor(dir, inProcessGangs(4, 1));
  for (const stepNr of [1, 2, 3, 4]) {
    await onAllRanks(managers, (m) => m.beginCheckpoint(stepNr));
    await onAllRanks(managers, (m) => m.saveState({ model: modelState(stepNr), step_nr: stepNr }, { replicatedKeys: ["model"] }));
    await onAllRanks(managers, (m) => m.saveScore(10 - stepNr));
    await onAllRanks(managers, (m) => m.commitCheckpoint());
  }
  assert.deepEqual(await onAllRanks(managers, (m) => m.keepLastNCheckpoints(3, { preserveModel: true })), Array(4).fill({ deleted: [], stripped: [1] }));
  assert.deepEqual(await onAllRanks(managers, (m) => m.keepBestNCheckpoints(1)), Array(4).fill({ deleted: [2, 3], stripped: [] }));
  await onAllRanks(managers, (m) => m.deleteCheckpoint(1, { missingOk: true }));
  assert.deepEqual(await entries(dir), [".ckpt.lock", "step_4"]);
  await onAllRanks(managers, (m) => m.close());
});
