import assert from "node:assert/strict";
import { mkdir, readFile, stat, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { test } from "node:test";
import { parse as parseYaml } from "yaml";

import {
  CheckpointError,
  CheckpointSaveError,
  FileCheckpointManager,
  InvalidArgumentError,
  TorchTensorLoader,
  fakeGangs,
  type StateDict,
} from "../src/index.js";
import {
  arange,
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

const tempDir = useTempDirs("saving");
const loader = new TorchTensorLoader();

async function loadPt(...path: string[]): Promise<StateDict> {
  return (await loader.load(join(...path))) as StateDict;
}

// ------------------------------------------------------------------ transactions

test("a checkpoint is written into step_N.tmp and becomes step_N only when it is committed", async () => {
  const dir = await tempDir();
  const manager = new FileCheckpointManager({ checkpointDir: dir });
  await manager.beginCheckpoint(100);
  assert.deepEqual(await entries(dir), [".ckpt.lock", "step_100.tmp"]);
  await manager.saveState(trainingState(100), { replicatedKeys: ["epoch"] });
  await manager.saveMetadata({ config: "base" });
  await manager.saveScore(1.5);
  assert.deepEqual(await listFiles(join(dir, "step_100.tmp")), ["metadata.pt", "model.pt", "rank_0.pt", "replicated.pt", "score.txt"]);
  assert.equal(await manager.hasCheckpoint(100), false, "an uncommitted checkpoint is not listed");
  assert.deepEqual(await manager.getStepNumbers(), []);

  await manager.commitCheckpoint();
  assert.deepEqual(await entries(dir), [".ckpt.lock", "step_100"]);
  assert.deepEqual(await manager.getStepNumbers(), [100]);
  await manager.close();
  assert.deepEqual(await entries(dir), ["step_100"], "close() releases the lock file");
});

test("abortCheckpoint drops the unfinished checkpoint and leaves the committed ones", async () => {
  const dir = await tempDir();
  const manager = new FileCheckpointManager({ checkpointDir: dir });
  const first = await saveStep(manager, 1);

  await manager.beginCheckpoint(2);
  await manager.saveState(trainingState(2));
  await manager.abortCheckpoint();
  assert.deepEqual(await entries(dir), [".ckpt.lock", "step_1"], "no step_2.tmp is left");
  assert.deepEqual(await manager.getStepNumbers(), [1]);
  assertSameState(await manager.loadCheckpoint(1), first);

  await manager.abortCheckpoint(); // nothing open: does nothing
  await assert.rejects(manager.commitCheckpoint(), /call beginCheckpoint\(stepNr\) first/, "the aborted checkpoint is closed");

  await saveStep(manager, 2);
  assert.deepEqual(await manager.getStepNumbers(), [1, 2], "the next begin works");
  await manager.close();
});

test("close() drops an open checkpoint and releases the directory", async () => {
  const dir = await tempDir();
  const manager = new FileCheckpointManager({ checkpointDir: dir });
  await saveStep(manager, 1);
  await manager.beginCheckpoint(2);
  await manager.saveState(trainingState(2));
  await manager.close();
  assert.deepEqual(await entries(dir), ["step_1"]);
  await saveStep(manager, 3); // usable again: it takes the lock anew
  assert.deepEqual(await manager.getStepNumbers(), [1, 3]);
  await manager.close();
});

test("calling the manager out of order is an error that says what to call instead", async () => {
  const dir = await tempDir();
  const manager = new FileCheckpointManager({ checkpointDir: dir });
  const needsBegin = /needs an open checkpoint: call beginCheckpoint\(stepNr\) first/;
  for (const [name, call] of [
    ["saveState", () => manager.saveState(trainingState(1))],
    ["saveMetadata", () => manager.saveMetadata({ a: 1 })],
    ["saveScore", () => manager.saveScore(1)],
    ["saveConsolidatedFsdpModel", () => manager.saveConsolidatedFsdpModel(modelState(1))],
    ["commitCheckpoint", () => manager.commitCheckpoint()],
  ] as const) {
    await assert.rejects(call(), (error: unknown) => {
      assert.ok(error instanceof CheckpointSaveError, `${name} without begin is a CheckpointSaveError`);
      assert.match(error.message, needsBegin);
      assert.match(error.message, new RegExp(`^${name}\\(\\)`), "the message names the method");
      return true;
    });
  }

  await manager.beginCheckpoint(5);
  await assert.rejects(manager.beginCheckpoint(6), (error: unknown) => {
    assert.ok(error instanceof CheckpointSaveError);
    assert.match(error.message, /checkpoint 5 is open: call commitCheckpoint\(\) or abortCheckpoint\(\) first/);
    return true;
  });
  const state = trainingState(5);
  await manager.saveState(state);
  await assert.rejects(manager.saveState(state), (error: unknown) => {
    assert.ok(error instanceof CheckpointSaveError);
    assert.equal(error.stepNr, 5);
    assert.match(error.message, /saveState was already called for checkpoint 5: pass the whole state in one call/);
    return true;
  });

  // Two calls at once on one manager would interleave its transaction.
  const running = manager.saveMetadata({ a: 1 });
  await assert.rejects(manager.saveScore(1), (error: unknown) => {
    assert.ok(error instanceof CheckpointError);
    assert.match(error.message, /still running: await each call before making the next/);
    return true;
  });
  await running;

  // None of the misuse above harmed the open checkpoint.
  await manager.commitCheckpoint();
  assertSameState(await manager.loadCheckpoint(5), state);
  assert.deepEqual(await manager.loadMetadata(5), { a: 1 });
  await manager.close();
});

test("step numbers that are not non-negative safe integers are InvalidArgumentError everywhere", async () => {
  const dir = await tempDir();
  const manager = new FileCheckpointManager({ checkpointDir: dir });
  await saveStep(manager, 1);
  const bad: unknown[] = [-1, 1.5, Number.NaN, Number.POSITIVE_INFINITY, "3", 2 ** 53, null];
  for (const stepNr of bad) {
    const n = stepNr as number;
    for (const [name, call] of [
      ["beginCheckpoint", () => manager.beginCheckpoint(n)],
      ["loadCheckpoint", () => manager.loadCheckpoint(n)],
      ["loadMetadata", () => manager.loadMetadata(n)],
      ["loadModel", () => manager.loadModel(n)],
      ["hasCheckpoint", () => manager.hasCheckpoint(n)],
      ["deleteCheckpoint", () => manager.deleteCheckpoint(n, { missingOk: true })],
    ] as const) {
      await assert.rejects(call(), InvalidArgumentError, `${name}(${String(stepNr)})`);
    }
  }
  // Nothing was opened or removed by the refused calls.
  await manager.beginCheckpoint(0);
  await manager.abortCheckpoint();
  assert.deepEqual(await manager.getStepNumbers(), [1]);
  await manager.close();
});

test("a score that is not a finite number is InvalidArgumentError and the checkpoint stays open", async () => {
  const dir = await tempDir();
  const manager = new FileCheckpointManager({ checkpointDir: dir });
  await manager.beginCheckpoint(1);
  for (const score of [Number.NaN, Number.POSITIVE_INFINITY, Number.NEGATIVE_INFINITY, "1", null, 1n]) {
    await assert.rejects(manager.saveScore(score as number), InvalidArgumentError, `saveScore(${String(score)})`);
  }
  await manager.saveState(trainingState(1));
  await manager.saveScore(2);
  await manager.commitCheckpoint();
  assert.deepEqual(await manager.getScores(), [{ stepNr: 1, score: 2 }]);
  await manager.close();
});

test("saveState refuses a state that is not a plain object and a bad modelKey or replicatedKeys", async () => {
  const dir = await tempDir();
  const manager = new FileCheckpointManager({ checkpointDir: dir });
  await manager.beginCheckpoint(1);
  for (const state of [null, [1, 2], new Map([["a", 1]]), 5]) {
    await assert.rejects(manager.saveState(state as unknown as StateDict), InvalidArgumentError);
  }
  await assert.rejects(manager.saveState({ model: {} }, { modelKey: "" }), InvalidArgumentError);
  await assert.rejects(manager.saveState({ model: {} }, { replicatedKeys: [1 as unknown as string] }), InvalidArgumentError);
  await manager.saveState({ model: {} });
  await manager.commitCheckpoint();
  await manager.close();
});

// ------------------------------------------------------------------ layout, one process

test("dp=1 writes model.pt, replicated.pt, rank_0.pt, metadata.pt, score.txt and manifest.json, each holding its part", async () => {
  const dir = await tempDir();
  const manager = new FileCheckpointManager({ checkpointDir: dir });
  const state = trainingState(1000);
  await manager.beginCheckpoint(1000);
  await manager.saveState(state, { replicatedKeys: ["epoch", "data_reader"] });
  await manager.saveMetadata({ config: { dim: 16 }, git: "abc123" });
  await manager.saveScore(0.75);
  await manager.commitCheckpoint();
  await manager.close();

  assert.deepEqual(await entries(dir), ["step_1000"]);
  const step = join(dir, "step_1000");
  assert.deepEqual(await listFiles(step), ["manifest.json", "metadata.pt", "model.pt", "rank_0.pt", "replicated.pt", "score.txt"]);

  const model = await loadPt(step, "model.pt");
  assert.deepEqual(Object.keys(model), ["model", "model_key"]);
  assert.equal(model.model_key, "model");
  assertSameState(model.model, state.model);

  const replicated = await loadPt(step, "replicated.pt");
  assertSameState(replicated, { epoch: state.epoch, data_reader: state.data_reader });

  const rank = await loadPt(step, "rank_0.pt");
  const { model: _model, epoch: _epoch, data_reader: _reader, ...rest } = state;
  assertSameState(rank, rest);

  assert.deepEqual(await loadPt(step, "metadata.pt"), { config: { dim: 16 }, git: "abc123" });
  assert.equal(await readFile(join(step, "score.txt"), "utf8"), "0.75\n");

  const manifest = await assertManifestMatchesFiles(dir, 1000);
  assert.equal(manifest.format, "ckpt-manifest");
  assert.equal(manifest.version, 2);
  assert.match(await readFile(join(step, "manifest.json"), "utf8"), /,\n {2}"checksum": "crc32:[0-9a-f]{8}"\n\}\n$/, "sealed: the checksum is its last field");
  assert.equal(manifest.stepNr, 1000);
  assert.equal(manifest.dpSize, 1);
  assert.equal(manifest.tpSize, 1);
  assert.equal(manifest.modelOnly, false);
  assert.ok(Math.abs(Date.parse(manifest.createdAt) - Date.now()) < 60_000, "createdAt is the time of the commit");
});

test("without replicatedKeys, metadata or score only model.pt, rank_0.pt and manifest.json are written", async () => {
  const dir = await tempDir();
  const manager = new FileCheckpointManager({ checkpointDir: dir });
  await manager.beginCheckpoint(3);
  await manager.saveState(trainingState(3));
  await manager.commitCheckpoint();
  await manager.close();
  assert.deepEqual(await listFiles(join(dir, "step_3")), ["manifest.json", "model.pt", "rank_0.pt"]);
  await assertManifestMatchesFiles(dir, 3);
});

test("a state holding a list that holds itself, and a dict shared twice, is saved and loads back with the cycle", async () => {
  const dir = await tempDir();
  const manager = new FileCheckpointManager({ checkpointDir: dir });
  const cycle: unknown[] = [1, arange(1, [2])];
  cycle.push(cycle);
  const shared = { w: arange(2, [3]) };
  await manager.beginCheckpoint(1);
  await manager.saveState({ model: modelState(1), cycle, a: shared, b: shared } as StateDict);
  await manager.commitCheckpoint();
  await manager.close();
  const loaded = await loadPt(dir, "step_1", "rank_0.pt");
  const loadedCycle = loaded.cycle as unknown[];
  assert.equal(loadedCycle.length, 3);
  assert.equal(loadedCycle[2], loadedCycle, "the list holds itself again");
  assert.equal(loaded.a, loaded.b, "the shared dict is one dict again");
  await assertManifestMatchesFiles(dir, 1);
});

test("replicatedKeys '*' puts the model in model.pt and every other key in replicated.pt", async () => {
  const dir = await tempDir();
  const manager = new FileCheckpointManager({ checkpointDir: dir });
  const state = trainingState(4);
  await manager.beginCheckpoint(4);
  await manager.saveState(state, { replicatedKeys: ["*"] });
  await manager.commitCheckpoint();
  const step = join(dir, "step_4");
  assertSameState((await loadPt(step, "model.pt")).model, state.model);
  const { model: _model, ...rest } = state;
  assertSameState(await loadPt(step, "replicated.pt"), rest);
  assert.deepEqual(await loadPt(step, "rank_0.pt"), {}, "nothing is left for the rank file");
  assertSameState(await manager.loadCheckpoint(4), state);
  await manager.close();
});

test("a custom modelKey is stored as fairseq2 0.4 does, {<key>: model, model_key: <key>} in model.pt, and restored under that key", async () => {
  const dir = await tempDir();
  const manager = new FileCheckpointManager({ checkpointDir: dir });
  const { model, ...rest } = trainingState(8);
  const state: StateDict = { module: model!, ...rest };
  await manager.beginCheckpoint(8);
  await manager.saveState(state, { modelKey: "module" });
  await manager.commitCheckpoint();
  const file = await loadPt(dir, "step_8", "model.pt");
  assert.deepEqual(Object.keys(file), ["module", "model_key"]);
  assert.equal(file.model_key, "module");
  assertSameState(file.module, model);
  assert.equal("module" in (await loadPt(dir, "step_8", "rank_0.pt")), false);
  const loaded = await manager.loadCheckpoint(8);
  assertSameState(loaded, state);
  assert.equal("model" in loaded, false, "the model is not also put under the default key");
  assertSameState(await manager.loadModel(8), model);
  await manager.close();
});

test("score.txt holds one number, higher is better: a lower-better score is stored negated", async () => {
  const dir = await tempDir();
  const manager = new FileCheckpointManager({ checkpointDir: dir });
  const cases: [number, boolean, string, number][] = [
    [3, false, "3\n", 3],
    [-1.5, false, "-1.5\n", -1.5],
    [0.25, true, "-0.25\n", -0.25],
    [-2, true, "2\n", 2],
    [0, true, "0\n", 0],
  ];
  for (const [index, [score, lowerBetter, text]] of cases.entries()) {
    await manager.beginCheckpoint(index + 1);
    await manager.saveState(trainingState(index + 1));
    await manager.saveScore(score, { lowerBetter });
    await manager.commitCheckpoint();
    assert.equal(await readFile(join(dir, `step_${index + 1}`, "score.txt"), "utf8"), text, `saveScore(${score}, { lowerBetter: ${lowerBetter} })`);
  }
  assert.deepEqual(
    await manager.getScores(),
    cases.map(([, , , stored], index) => ({ stepNr: index + 1, score: stored })),
  );
  await manager.close();
});

test("files in cc/ are copied into every committed checkpoint, nested ones too, and listed in the manifest", async () => {
  const dir = await tempDir();
  await mkdir(join(dir, "cc", "tokenizer", "extra"), { recursive: true });
  await writeFile(join(dir, "cc", "config.json"), '{"dim": 16}');
  await writeFile(join(dir, "cc", "tokenizer", "vocab.txt"), "a\nb\nc\n");
  await writeFile(join(dir, "cc", "tokenizer", "extra", "merges.bin"), Uint8Array.from([0, 1, 2, 255]));
  const manager = new FileCheckpointManager({ checkpointDir: dir });
  await saveStep(manager, 1);
  await saveStep(manager, 2);
  for (const stepNr of [1, 2]) {
    const step = join(dir, `step_${stepNr}`);
    assert.deepEqual(await listFiles(step), [
      "config.json",
      "manifest.json",
      "model.pt",
      "rank_0.pt",
      "replicated.pt",
      "tokenizer/extra/merges.bin",
      "tokenizer/vocab.txt",
    ]);
    assert.equal(await readFile(join(step, "config.json"), "utf8"), '{"dim": 16}');
    assert.equal(await readFile(join(step, "tokenizer", "vocab.txt"), "utf8"), "a\nb\nc\n");
    assert.deepEqual([...(await readFile(join(step, "tokenizer", "extra", "merges.bin")))], [0, 1, 2, 255]);
    await assertManifestMatchesFiles(dir, stepNr);
  }
  assertSameState(await manager.loadCheckpoint(2), trainingState(2), "carbon copies do not get into the state");
  await manager.close();
});

test("a cc/ file that would overwrite a checkpoint file fails the commit and drops the checkpoint", async () => {
  for (const clash of ["model.pt", "rank_0.pt", "manifest.json", "score.txt"]) {
    const dir = await tempDir();
    const manager = new FileCheckpointManager({ checkpointDir: dir });
    const first = await saveStep(manager, 1);
    await mkdir(join(dir, "cc"), { recursive: true });
    await writeFile(join(dir, "cc", clash), "not yours");

    await manager.beginCheckpoint(2);
    await manager.saveState(trainingState(2));
    await manager.saveScore(1);
    await assert.rejects(manager.commitCheckpoint(), (error: unknown) => {
      assert.ok(error instanceof CheckpointSaveError, `cc/${clash}`);
      assert.equal(error.stepNr, 2);
      assert.match(error.message, new RegExp(`cc/${clash.replace(".", "\\.")} would overwrite`));
      return true;
    });
    assert.deepEqual(await entries(dir), [".ckpt.lock", "cc", "step_1"], "the failed checkpoint is dropped");
    assertSameState(await manager.loadCheckpoint(1), first);

    await writeFile(join(dir, "cc", clash), ""); // still clashing: the next try fails the same way
    await manager.beginCheckpoint(2);
    await manager.saveState(trainingState(2));
    await manager.saveScore(1);
    await assert.rejects(manager.commitCheckpoint(), CheckpointSaveError);
    await manager.close();
  }
});

test("saveModelMetadata writes model.yaml with the family, the config and, under tensor parallelism, the number of shards", async () => {
  const dir = await tempDir();
  const manager = new FileCheckpointManager({ checkpointDir: dir });
  await manager.saveModelMetadata({ family: "llama", config: { dim: 4096, n_layers: 32, rope: { theta: 10000.5 }, tied: false } });
  assert.deepEqual(await entries(dir), [".ckpt.lock", "model.yaml"]);
  assert.deepEqual(parseYaml(await readFile(join(dir, "model.yaml"), "utf8")), {
    model_family: "llama",
    model_config: { dim: 4096, n_layers: 32, rope: { theta: 10000.5 }, tied: false },
  });
  await manager.saveModelMetadata({ family: "mistral" });
  assert.deepEqual(parseYaml(await readFile(join(dir, "model.yaml"), "utf8")), { model_family: "mistral" }, "a new card replaces the old one");
  await manager.close();

  const tpDir = await tempDir();
  const tp0 = new FileCheckpointManager({ checkpointDir: tpDir, gangs: fakeGangs({ tpRank: 0, tpSize: 2 }) });
  const tp1 = new FileCheckpointManager({ checkpointDir: tpDir, gangs: fakeGangs({ tpRank: 1, tpSize: 2 }) });
  await tp1.saveModelMetadata({ family: "llama", config: { dim: 8 } });
  assert.deepEqual(await entries(tpDir), [], "only rank 0 writes the card");
  await tp0.saveModelMetadata({ family: "llama", config: { dim: 8 } });
  assert.deepEqual(parseYaml(await readFile(join(tpDir, "model.yaml"), "utf8")), { model_family: "llama", model_config: { dim: 8 }, num_shards: 2 });
  await tp0.close();

  for (const bad of [{ family: "" }, { family: 3 }, {}, null]) {
    await assert.rejects(manager.saveModelMetadata(bad as never), InvalidArgumentError);
  }
});

test("saveConsolidatedFsdpModel writes one full model.pt beside the sharded rank files", async () => {
  const dir = await tempDir();
  const ranks = [0, 1].map((dpRank) => new FileCheckpointManager({ checkpointDir: dir, gangs: fakeGangs({ dpRank, dpSize: 2 }) }));
  const shards = [{ "w": arange(0, [2]) }, { "w": arange(2, [2]) }];
  const full = { w: arange(0, [4]) };
  await ranks[0]!.beginCheckpoint(10);
  await ranks[1]!.beginCheckpoint(10);
  for (const [dpRank, manager] of ranks.entries()) {
    await manager.saveState({ model: shards[dpRank]!, step_nr: 10 });
    await manager.saveConsolidatedFsdpModel(full);
  }
  await ranks[1]!.commitCheckpoint();
  await ranks[0]!.commitCheckpoint();

  assert.deepEqual(await listFiles(join(dir, "step_10")), ["manifest.json", "model.pt", "rank_0.pt", "rank_1.pt"]);
  await assertManifestMatchesFiles(dir, 10);
  assertSameState(await loadPt(dir, "step_10", "model.pt"), { model: full, model_key: "model" });
  for (const [dpRank, manager] of ranks.entries()) {
    assertSameState(await manager.loadCheckpoint(10), { model: shards[dpRank], step_nr: 10 }, "resuming gives each rank its shard");
    assertSameState(await manager.loadModel(10), full, "loadModel gives the whole model");
  }
  await ranks[0]!.close();

  // With a replicated model, saveState already wrote model.pt: a second copy is refused.
  const single = new FileCheckpointManager({ checkpointDir: await tempDir() });
  await single.beginCheckpoint(1);
  await single.saveState(trainingState(1));
  await assert.rejects(single.saveConsolidatedFsdpModel(full), (error: unknown) => {
    assert.ok(error instanceof CheckpointSaveError);
    assert.match(error.message, /model\.pt was already written by saveState/);
    return true;
  });
  await saveStep(single, 1); // the manager is usable again
  assert.deepEqual(await single.getStepNumbers(), [1]);
  await assert.rejects(single.saveConsolidatedFsdpModel([] as unknown as StateDict), /call beginCheckpoint/);
  await single.close();
});

// ------------------------------------------------------------------ layout, several ranks

/** What dp rank `dpRank` (of tp rank `tpRank`) would hold in a real job. */
function rankState(dpRank: number, tpRank = 0): StateDict {
  return {
    model: { shard: arange(100 * tpRank, [2, 2]), bias: arange(100 * tpRank + 50, [2]) },
    optimizer: { state: new Map([[0, { step: 7, exp_avg: arange(1000 * dpRank + 10 * tpRank, [3]) }]]), param_groups: [{ lr: 0.01 }] },
    data_reader: { position: 17 * dpRank + tpRank, rank: dpRank },
    epoch: 2,
    step_nr: 40,
  };
}

/** Four FakeGang dp ranks over one directory: rank 0 begins first, the others commit before rank 0. */
async function saveFourFakeRanks(dir: string, replicatedKeys: string[]): Promise<FileCheckpointManager[]> {
  const ranks = [0, 1, 2, 3].map((dpRank) => new FileCheckpointManager({ checkpointDir: dir, gangs: fakeGangs({ dpRank, dpSize: 4 }) }));
  for (const manager of ranks) await manager.beginCheckpoint(40);
  for (const [dpRank, manager] of ranks.entries()) {
    await manager.saveState(rankState(dpRank), { replicatedKeys });
    await manager.saveMetadata({ written_by: dpRank });
    await manager.saveScore(dpRank + 0.5);
  }
  for (const manager of ranks.slice(1)) {
    await manager.commitCheckpoint();
    assert.deepEqual(await manager.getStepNumbers(), [], "nothing is visible before rank 0 commits");
  }
  await ranks[0]!.commitCheckpoint();
  return ranks;
}

test("four data-parallel FakeGang ranks with a replicated model write model.pt and replicated.pt once and one rank file each", async () => {
  const dir = await tempDir();
  const ranks = await saveFourFakeRanks(dir, ["model", "epoch", "step_nr"]);
  const step = join(dir, "step_40");
  assert.deepEqual(await listFiles(step), ["manifest.json", "metadata.pt", "model.pt", "rank_0.pt", "rank_1.pt", "rank_2.pt", "rank_3.pt", "replicated.pt", "score.txt"]);
  assertSameState(await loadPt(step, "model.pt"), { model: rankState(0).model, model_key: "model" });
  assertSameState(await loadPt(step, "replicated.pt"), { epoch: 2, step_nr: 40 });
  for (const dpRank of [0, 1, 2, 3]) {
    const { optimizer, data_reader } = rankState(dpRank);
    assertSameState(await loadPt(step, `rank_${dpRank}.pt`), { optimizer, data_reader }, `rank_${dpRank}.pt`);
  }
  assert.deepEqual(await loadPt(step, "metadata.pt"), { written_by: 0 }, "metadata and score come from rank 0");
  assert.equal(await readFile(join(step, "score.txt"), "utf8"), "0.5\n");
  const manifest = await assertManifestMatchesFiles(dir, 40);
  assert.equal(manifest.dpSize, 4);
  assert.equal(manifest.tpSize, 1);
  for (const [dpRank, manager] of ranks.entries()) {
    assertSameState(await manager.loadCheckpoint(40), rankState(dpRank), `dp rank ${dpRank} resumes its own state`);
    assert.deepEqual(await manager.loadLastCheckpoint().then((r) => r.stepNr), 40);
  }
  await ranks[0]!.close();
});

test("four data-parallel FakeGang ranks with a sharded model keep the model in the rank files and write no model.pt", async () => {
  const dir = await tempDir();
  const ranks = await saveFourFakeRanks(dir, ["epoch"]);
  const step = join(dir, "step_40");
  assert.deepEqual(await listFiles(step), ["manifest.json", "metadata.pt", "rank_0.pt", "rank_1.pt", "rank_2.pt", "rank_3.pt", "replicated.pt", "score.txt"]);
  assertSameState(await loadPt(step, "replicated.pt"), { epoch: 2 });
  for (const dpRank of [0, 1, 2, 3]) {
    const { epoch: _epoch, ...rest } = rankState(dpRank);
    // As fairseq2 0.4: the rank file names the model's key, so a loader knows the model is there.
    assertSameState(await loadPt(step, `rank_${dpRank}.pt`), { ...rest, model_key: "model" });
    assertSameState(await ranks[dpRank]!.loadCheckpoint(40), rankState(dpRank));
  }
  await assertManifestMatchesFiles(dir, 40);
  await ranks[0]!.close();
});

test("four data-parallel FakeGang ranks with replicatedKeys '*' write everything once and empty rank files", async () => {
  const dir = await tempDir();
  const ranks = await saveFourFakeRanks(dir, ["*"]);
  const step = join(dir, "step_40");
  assert.deepEqual(await listFiles(step), ["manifest.json", "metadata.pt", "model.pt", "rank_0.pt", "rank_1.pt", "rank_2.pt", "rank_3.pt", "replicated.pt", "score.txt"]);
  const { model, ...rest } = rankState(0);
  assertSameState((await loadPt(step, "model.pt")).model, model);
  assertSameState(await loadPt(step, "replicated.pt"), rest);
  for (const dpRank of [0, 1, 2, 3]) assert.deepEqual(await loadPt(step, `rank_${dpRank}.pt`), {});
  for (const manager of ranks) assertSameState(await manager.loadCheckpoint(40), rankState(0), "every rank gets rank 0's replicated state");
  await ranks[0]!.close();
});

test("two tensor-parallel FakeGang ranks suffix every file with .<tp_rank>", async () => {
  const dir = await tempDir();
  const ranks = [0, 1].map((tpRank) => new FileCheckpointManager({ checkpointDir: dir, gangs: fakeGangs({ tpRank, tpSize: 2 }) }));
  for (const manager of ranks) await manager.beginCheckpoint(7);
  for (const [tpRank, manager] of ranks.entries()) {
    await manager.saveState(rankState(0, tpRank), { replicatedKeys: ["epoch"] });
    await manager.saveScore(1);
  }
  await ranks[1]!.commitCheckpoint();
  await ranks[0]!.commitCheckpoint();
  const step = join(dir, "step_7");
  assert.deepEqual(await listFiles(step), ["manifest.json", "model.0.pt", "model.1.pt", "rank_0.0.pt", "rank_0.1.pt", "replicated.0.pt", "replicated.1.pt", "score.txt"]);
  for (const tpRank of [0, 1]) {
    const { model, epoch, ...rest } = rankState(0, tpRank);
    assertSameState(await loadPt(step, `model.${tpRank}.pt`), { model, model_key: "model" });
    assertSameState(await loadPt(step, `replicated.${tpRank}.pt`), { epoch });
    assertSameState(await loadPt(step, `rank_0.${tpRank}.pt`), rest);
    assertSameState(await ranks[tpRank]!.loadCheckpoint(7), rankState(0, tpRank), `tp rank ${tpRank} resumes its shard`);
    assertSameState(await ranks[tpRank]!.loadModel(), model, `tp rank ${tpRank} loads its model shard`);
  }
  const manifest = await assertManifestMatchesFiles(dir, 7);
  assert.equal(manifest.dpSize, 1);
  assert.equal(manifest.tpSize, 2);
  await ranks[0]!.close();
});

test("dp=2 × tp=2 FakeGang ranks write rank_<dp>.<tp>.pt, and model and replicated files per tp rank", async () => {
  const dir = await tempDir();
  const ranks = [0, 1].flatMap((dpRank) => [0, 1].map((tpRank) => ({ dpRank, tpRank })));
  const managers = ranks.map(({ dpRank, tpRank }) => new FileCheckpointManager({ checkpointDir: dir, gangs: fakeGangs({ dpRank, dpSize: 2, tpRank, tpSize: 2 }) }));
  for (const manager of managers) await manager.beginCheckpoint(9);
  for (const [index, manager] of managers.entries()) await manager.saveState(rankState(ranks[index]!.dpRank, ranks[index]!.tpRank), { replicatedKeys: ["model", "epoch"] });
  for (const manager of managers.slice(1)) await manager.commitCheckpoint();
  await managers[0]!.commitCheckpoint();
  assert.deepEqual(await listFiles(join(dir, "step_9")), [
    "manifest.json",
    "model.0.pt",
    "model.1.pt",
    "rank_0.0.pt",
    "rank_0.1.pt",
    "rank_1.0.pt",
    "rank_1.1.pt",
    "replicated.0.pt",
    "replicated.1.pt",
  ]);
  const manifest = await assertManifestMatchesFiles(dir, 9);
  assert.deepEqual([manifest.dpSize, manifest.tpSize], [2, 2]);
  for (const [index, manager] of managers.entries()) {
    assertSameState(await manager.loadCheckpoint(9), rankState(ranks[index]!.dpRank, ranks[index]!.tpRank));
  }
  await managers[0]!.close();
});

test("four managers exchanging through InProcessGang save and load one dp=4 checkpoint concurrently", async () => {
  const dir = await tempDir();
  const managers = managersFor(dir, inProcessGangs(4, 1));
  await onAllRanks(managers, (m) => m.beginCheckpoint(40));
  await onAllRanks(managers, (m, rank) => m.saveState(rankState(rank), { replicatedKeys: ["model", "epoch"] }));
  await onAllRanks(managers, (m, rank) => m.saveMetadata({ written_by: rank }));
  await onAllRanks(managers, (m) => m.saveScore(2.5, { lowerBetter: true }));
  await onAllRanks(managers, (m) => m.commitCheckpoint());

  const step = join(dir, "step_40");
  assert.deepEqual(await listFiles(step), ["manifest.json", "metadata.pt", "model.pt", "rank_0.pt", "rank_1.pt", "rank_2.pt", "rank_3.pt", "replicated.pt", "score.txt"]);
  assert.equal(await readFile(join(step, "score.txt"), "utf8"), "-2.5\n");
  assert.deepEqual(await loadPt(step, "metadata.pt"), { written_by: 0 });
  const manifest = await assertManifestMatchesFiles(dir, 40);
  assert.deepEqual([manifest.dpSize, manifest.tpSize], [4, 1]);

  assert.deepEqual(await onAllRanks(managers, (m) => m.getStepNumbers()), [[40], [40], [40], [40]]);
  const loaded = await onAllRanks(managers, (m) => m.loadLastCheckpoint());
  for (const [rank, { stepNr, state }] of loaded.entries()) {
    assert.equal(stepNr, 40);
    assertSameState(state, rankState(rank), `rank ${rank}`);
  }
  await onAllRanks(managers, (m) => m.close());
});

test("four managers as dp=2 × tp=2 over InProcessGang write the suffixed layout and each loads its own part", async () => {
  const dir = await tempDir();
  const gangs = inProcessGangs(2, 2);
  const managers = managersFor(dir, gangs);
  const stateOf = (rank: number): StateDict => rankState(gangs[rank]!.dp.rank, gangs[rank]!.tp.rank);
  await onAllRanks(managers, (m) => m.saveModelMetadata({ family: "llama" }));
  await onAllRanks(managers, (m) => m.beginCheckpoint(12));
  await onAllRanks(managers, (m, rank) => m.saveState(stateOf(rank), { replicatedKeys: ["epoch"] }));
  await onAllRanks(managers, (m) => m.commitCheckpoint());

  assert.deepEqual(await listFiles(join(dir, "step_12")), ["manifest.json", "rank_0.0.pt", "rank_0.1.pt", "rank_1.0.pt", "rank_1.1.pt", "replicated.0.pt", "replicated.1.pt"]);
  assert.deepEqual(parseYaml(await readFile(join(dir, "model.yaml"), "utf8")), { model_family: "llama", num_shards: 2 });
  const manifest = await assertManifestMatchesFiles(dir, 12);
  assert.deepEqual([manifest.dpSize, manifest.tpSize], [2, 2]);
  const loaded = await onAllRanks(managers, (m) => m.loadCheckpoint(12));
  for (const [rank, state] of loaded.entries()) assertSameState(state, stateOf(rank), `rank ${rank}`);
  await onAllRanks(managers, (m) => m.close());
});

test("the manifest's sizes and checksums are the ones the writing ranks reported", async () => {
  // Under InProcessGang rank 0 learns the digests from the ranks; they must match the bytes on disk.
  const dir = await tempDir();
  const managers = managersFor(dir, inProcessGangs(2, 1));
  await onAllRanks(managers, (m) => m.beginCheckpoint(1));
  await onAllRanks(managers, (m, rank) => m.saveState(rankState(rank)));
  await onAllRanks(managers, (m) => m.commitCheckpoint());
  const manifest = await readManifest(dir, 1);
  assert.equal(manifest.files["rank_1.pt"]!.size, (await stat(join(dir, "step_1", "rank_1.pt"))).size);
  await assertManifestMatchesFiles(dir, 1);
  await onAllRanks(managers, (m) => m.close());
});

test("a cc/ file that would overwrite another rank's file fails the commit on every rank", async () => {
  const dir = await tempDir();
  await mkdir(join(dir, "cc"), { recursive: true });
  await writeFile(join(dir, "cc", "rank_1.pt"), "not yours");
  const managers = managersFor(dir, inProcessGangs(2, 1));
  await onAllRanks(managers, (m) => m.beginCheckpoint(1));
  await onAllRanks(managers, (m, rank) => m.saveState(rankState(rank)));
  const results = await Promise.allSettled(managers.map((m) => m.commitCheckpoint()));
  for (const [rank, result] of results.entries()) {
    assert.equal(result.status, "rejected", `rank ${rank} sees the failed commit`);
    assert.ok(result.reason instanceof CheckpointSaveError);
    assert.match((result.reason as Error).message, /cc\/rank_1\.pt would overwrite/);
  }
  assert.deepEqual(await entries(dir), [".ckpt.lock", "cc"]);
  await onAllRanks(managers, (m) => m.close());
});
