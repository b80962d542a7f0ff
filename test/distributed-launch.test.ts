import assert from "node:assert/strict";
import { join } from "node:path";
import { test } from "node:test";

import { entries, useTempDirs } from "./helpers/checkpoint-helpers.js";
import { assertSucceeded, launch } from "./helpers/launch-job.js";
import { requireTorch, runPython } from "./helpers/torch-python.js";

const tempDir = useTempDirs("launch");

test("dp=2 × tp=2 through ckpt launch: every file of the layout, each rank loads back exactly what it saved", async () => {
  const dir = await tempDir();
  const run = await launch(["--nproc", "4", "--dp", "2", "--tp", "2"], [dir, "replicated", "100"]);
  assertSucceeded(run, 4);
  for (const [rank, result] of run.results) {
    assert.equal(result.matches, true, `rank ${rank} loaded what it saved: ${JSON.stringify(result)}`);
    assert.deepEqual([result.dpRank, result.tpRank], [Math.floor(rank / 2), rank % 2], "rank = dp_rank × tp + tp_rank");
  }
  assert.deepEqual(await entries(join(dir, "step_100")), [
    "manifest.json", "model.0.pt", "model.1.pt", "rank_0.0.pt", "rank_0.1.pt", "rank_1.0.pt", "rank_1.1.pt", "replicated.0.pt", "replicated.1.pt", "score.txt",
  ]);
  assert.deepEqual(await entries(dir), ["step_100"], "the lock is released and nothing else is left");

  const resumed = await launch(["--nproc", "4", "--dp", "2", "--tp", "2"], [dir, "resume", "0", "epoch,model"]);
  assertSucceeded(resumed, 4);
  for (const result of resumed.results.values()) assert.deepEqual([result.last, result.matches], [100, true]);
});

for (const [scenario, files] of [
  ["save", ["manifest.json", "rank_0.pt", "rank_1.pt", "rank_2.pt", "rank_3.pt", "replicated.pt", "score.txt"]],
  ["replicated", ["manifest.json", "model.pt", "rank_0.pt", "rank_1.pt", "rank_2.pt", "rank_3.pt", "replicated.pt", "score.txt"]],
  ["everything", ["manifest.json", "model.pt", "rank_0.pt", "rank_1.pt", "rank_2.pt", "rank_3.pt", "replicated.pt", "score.txt"]],
] as const) {
  const what = { save: "a model that is not replicated (in the rank files)", replicated: 'replicatedKeys ["epoch", "model"]', everything: 'replicatedKeys ["*"]' }[scenario];
  test(`dp=4 through ckpt launch with ${what}`, async () => {
    const dir = await tempDir();
    const run = await launch(["--nproc", "4"], [dir, scenario, "7"]);
    assertSucceeded(run, 4);
    for (const [rank, result] of run.results) assert.equal(result.matches, true, `rank ${rank}: ${JSON.stringify(result)}`);
    assert.deepEqual(await entries(join(dir, "step_7")), [...files]);
  });
}

test("FSDP-style shards through ckpt launch: each rank gets its shard back, and torch.load reads the consolidated model.pt whole", async (t) => {
  const dir = await tempDir();
  const run = await launch(["--nproc", "4", "--dp", "2", "--tp", "2"], [dir, "fsdp", "5"]);
  assertSucceeded(run, 4);
  for (const [rank, result] of run.results) {
    const weight = (result.loaded as { model: Record<string, { shard: number[]; offsets: number[] }> }).model["0.weight"]!;
    const [dpRank, tpRank] = [Math.floor(rank / 2), rank % 2];
    assert.deepEqual(weight.offsets, [dpRank, 0]);
    assert.deepEqual(weight.shard, [0, 1, 2, 3].map((i) => dpRank * 4 + i + tpRank * 100));
  }
  const python = requireTorch(t);
  if (python === null) return;
  for (const tpRank of [0, 1]) {
    const full = JSON.parse(runPython(python, "import json, sys, torch; print(json.dumps(torch.load(sys.argv[1])['model']['0.weight'].tolist()))", [join(dir, "step_5", `model.${tpRank}.pt`)])) as number[][];
    assert.deepEqual(full, [0, 1].map((dpRank) => [0, 1, 2, 3].map((i) => dpRank * 4 + i + tpRank * 100)));
  }
});

test("a worker SIGKILLed in the middle of saveState: the launch fails naming it, nothing is committed, and a relaunch resumes from the last checkpoint", async () => {
  const dir = await tempDir();
  assertSucceeded(await launch(["--nproc", "4"], [dir, "save", "100"]), 4);
  const run = await launch(["--nproc", "4"], [dir, "kill-in-save", "200"]);
  assert.notEqual(run.code, 0);
  assert.match(run.stderr, /rank 1\b.*SIGKILL/, `the launcher names the dead worker: ${run.stderr}`);
  assert.ok(!(await entries(dir)).includes("step_200"), "nothing committed");

  const resumed = await launch(["--nproc", "4"], [dir, "resume"]);
  assertSucceeded(resumed, 4);
  for (const result of resumed.results.values()) assert.deepEqual([result.last, result.matches], [100, true]);
  assertSucceeded(await launch(["--nproc", "4"], [dir, "save", "300"]), 4);
  assert.deepEqual(await entries(dir), ["step_100", "step_300"], "the next run cleaned the unfinished step_200.tmp");
});

test("a worker whose saveState throws: every rank fails with a CheckpointSaveError, the launch fails, nothing is committed", async () => {
  const dir = await tempDir();
  const run = await launch(["--nproc", "4"], [dir, "throw-in-save", "200"]);
  assert.notEqual(run.code, 0);
  assert.ok(run.errors.size >= 1, run.stdout);
  assert.match(run.errors.get(2) ?? "", /CheckpointSaveError|InvalidArgumentError/);
  for (const [rank, error] of run.errors) if (rank !== 2) assert.match(error, /rank 2/, `rank ${rank} is told rank 2 failed: ${error}`);
  assert.ok(!(await entries(dir)).some((name) => name.startsWith("step_200") && !name.endsWith(".tmp")), "nothing committed");
});

test("a worker killed while the others wait in a barrier: they fail with a GangError naming it instead of hanging", async () => {
  const dir = await tempDir();
  const run = await launch(["--nproc", "4"], [dir, "kill-in-barrier"]);
  assert.notEqual(run.code, 0);
  assert.match(run.stderr, /rank 3\b/);
  assert.equal(run.results.size, 0, "no rank passed the barrier");
});
