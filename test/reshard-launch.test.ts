import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { stat } from "node:fs/promises";
import { dirname, join } from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";

import { entries, useTempDirs } from "./helpers/checkpoint-helpers.js";
import { assertSucceeded, launch, type Launch } from "./helpers/launch-job.js";
import { requireTorch, runPython } from "./helpers/torch-python.js";

const tempDir = useTempDirs("reshard-launch");
const WORKER = join(dirname(fileURLToPath(import.meta.url)), "helpers", "reshard-worker.ts");
const CLI = join(dirname(dirname(fileURLToPath(import.meta.url))), "dist", "cli", "main.js");
/** What reading one file's structure costs (zip end and directory, pickle, local headers): well under this here. */
const STRUCTURE_BYTES_PER_FILE = 4096;

function run(flags: string[], args: string[]): Promise<Launch> {
  return launch(flags, args, { worker: WORKER });
}

/** The sizes of the tensor files of a checkpoint, which a rank must read only a share of. */
async function tensorFileBytes(dir: string, stepNr: number): Promise<{ files: number; bytes: number }> {
  const names = (await entries(join(dir, `step_${stepNr}`))).filter((name) => name.endsWith(".pt"));
  let bytes = 0;
  for (const name of names) bytes += (await stat(join(dir, `step_${stepNr}`, name))).size;
  return { files: names.length, bytes };
}

/**
 * Every rank of a resharded resume found each tensor equal, element by element, to its block of
 * the full tensor at the offsets of the new layout, and read about its share: its share of the
 * tensor bytes plus the structure of the files it opened, not whole files.
 */
function assertResumed(resumed: Launch, ranks: number, saved: { files: number; bytes: number }, cursor: number): void {
  assertSucceeded(resumed, ranks);
  for (const [rank, result] of resumed.results) {
    assert.deepEqual(result.problems, [], `rank ${rank}: ${JSON.stringify(result)}`);
    assert.equal(result.stepNr, 10);
    assert.equal(result.cursor, cursor, `rank ${rank}: the per-rank "data" follows its policy`);
    const [read, share] = [result.bytesRead as number, result.shareBytes as number];
    assert.ok(read >= share, `rank ${rank} read ${read} bytes, less than its share ${share}?`);
    assert.ok(read <= share + saved.files * STRUCTURE_BYTES_PER_FILE, `rank ${rank} read ${read} bytes for a share of ${share} (${saved.files} files of ${saved.bytes} bytes)`);
  }
}

/** One checkpoint saved at dp=4, shared by the tests that resume it (launches are the slow part). */
let savedAtDpFour: Promise<string> | undefined;
function checkpointSavedAtDpFour(): Promise<string> {
  savedAtDpFour ??= (async () => {
    const dir = await tempDir();
    assertSucceeded(await run(["--nproc", "4"], [dir, "save", "10"]), 4);
    return dir;
  })();
  return savedAtDpFour;
}

test("saved at dp=4, resumed at dp=2 (a combining policy) and dp=8 (rank 0's values): each rank gets its new share, reading about that share only", async () => {
  const dir = await checkpointSavedAtDpFour();
  const saved = await tensorFileBytes(dir, 10);
  const atTwo = await run(["--nproc", "2"], [dir, "resume", "sum"]);
  assertResumed(atTwo, 2, saved, 1000 + 1001 + 1002 + 1003);
  for (const result of atTwo.results.values()) assert.ok((result.bytesRead as number) < saved.bytes * 0.6, "about half of the files, not all of them");
  const atEight = await run(["--nproc", "8"], [dir, "resume", "rank0"]);
  assertResumed(atEight, 8, saved, 1000);
  for (const result of atEight.results.values()) assert.ok((result.bytesRead as number) < saved.bytes * 0.25, "about an eighth of the files");
});

test("a per-rank key without a policy is refused on every rank, naming it, and nothing in the directory changes", async () => {
  const dir = await checkpointSavedAtDpFour();
  const before = await tensorFileBytes(dir, 10);
  const refused = await run(["--nproc", "2"], [dir, "resume", "none"]);
  assert.notEqual(refused.code, 0);
  assert.equal(refused.errors.size, 2, refused.stdout);
  for (const message of refused.errors.values()) {
    assert.match(message, /^CheckpointLoadError: checkpoint 10 was saved with dp=4, tp=1, loaded with dp=2, tp=1: the per-rank key "data" differs by rank/);
    assert.match(message, /perRank: \{ "data": "rank0" \}/, "the message says how to declare a policy");
  }
  assert.deepEqual(await entries(dir), ["step_10"]);
  assert.deepEqual(await tensorFileBytes(dir, 10), before);
});

test("saved at tp=2, resumed at tp=1 and tp=4: tensor-parallel shards (dim 0 and dim 1) recut from the model files", async () => {
  const dir = await tempDir();
  assertSucceeded(await run(["--nproc", "2", "--dp", "1", "--tp", "2"], [dir, "save", "10"]), 2);
  assert.ok((await entries(join(dir, "step_10"))).includes("model.1.pt"));
  const saved = await tensorFileBytes(dir, 10);
  assertResumed(await run(["--nproc", "1"], [dir, "resume", "rank0"]), 1, saved, 1000);
  assertResumed(await run(["--nproc", "4", "--dp", "1", "--tp", "4"], [dir, "resume", "sum"]), 4, saved, 1000 + 1001);
});

test("saved at dp=2 × tp=2, resumed at dp=1 × tp=4", async () => {
  const dir = await tempDir();
  assertSucceeded(await run(["--nproc", "4", "--dp", "2", "--tp", "2"], [dir, "save", "10"]), 4);
  const saved = await tensorFileBytes(dir, 10);
  assertResumed(await run(["--nproc", "4", "--dp", "1", "--tp", "4"], [dir, "resume", "rank0"]), 4, saved, 1000);
});

test("ckpt reshard writes a regular checkpoint for dp=2 that loads under the new gangs without reshard, leaving the original as it was", async () => {
  const dir = await checkpointSavedAtDpFour();
  const before = await tensorFileBytes(dir, 10);
  const out = await tempDir();
  const refused = spawnSync(process.execPath, [CLI, "reshard", dir, out, "--step", "10", "--dp", "2", "--tp", "1"], { encoding: "utf8" });
  assert.equal(refused.status, 2, refused.stderr);
  assert.match(refused.stderr, /the per-rank key "data" differs by rank/);
  const done = spawnSync(process.execPath, [CLI, "reshard", dir, out, "--step", "10", "--dp", "2", "--tp", "1", "--per-rank", "rank0"], { encoding: "utf8" });
  assert.equal(done.status, 0, done.stderr);
  assert.deepEqual(await entries(join(out, "step_10")), ["manifest.json", "rank_0.pt", "rank_1.pt", "replicated.pt"]);
  const resumed = await run(["--nproc", "2"], [out, "resume", "plain"]);
  assertSucceeded(resumed, 2);
  for (const [rank, result] of resumed.results) assert.deepEqual([result.problems, result.cursor], [[], 1000], `rank ${rank}: ${JSON.stringify(result)}`);
  assert.deepEqual(await tensorFileBytes(dir, 10), before);
});

test("ckpt convert joins a checkpoint's tensor-parallel or FSDP shards into one model file that torch.load reads whole", async (t) => {
  const python = requireTorch(t);
  if (python === null) return;
  const tpDir = await tempDir();
  assertSucceeded(await run(["--nproc", "2", "--dp", "1", "--tp", "2"], [tpDir, "save", "10"]), 2);
  for (const dir of [tpDir, await checkpointSavedAtDpFour()]) {
    const out = join(await tempDir(), "model.pt");
    const converted = spawnSync(process.execPath, [CLI, "convert", dir, out], { encoding: "utf8" });
    assert.equal(converted.status, 0, converted.stderr);
    const seen = JSON.parse(runPython(python, `
import json, sys, torch
m = torch.load(sys.argv[1])
print(json.dumps({k: [list(v.shape), v.flatten()[:3].tolist(), v.flatten()[-1].item()] for k, v in m.items()}))
`, [out])) as Record<string, [number[], number[], number]>;
    // Element i of the n-th full tensor is n * 100000 + i (reshard-worker's fullTensor).
    assert.deepEqual(seen, {
      "col.weight": [[256, 64], [100000, 100001, 100002], 100000 + 256 * 64 - 1],
      "row.weight": [[64, 256], [200000, 200001, 200002], 200000 + 256 * 64 - 1],
      norm: [[64], [400000, 400001, 400002], 400063],
    });
  }
});
