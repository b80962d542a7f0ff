import assert from "node:assert/strict";
import { cp, mkdir, rm, symlink } from "node:fs/promises";
import { join } from "node:path";
import { test } from "node:test";
import { CheckpointLoadError, FileCheckpointManager, Tensor, verifyCheckpoints } from "../src/index.js";
import { hostileInput } from "../torture/classes/hostile-input.js";
import { useTempDirs } from "./helpers/checkpoint-helpers.js";

const tempDir = useTempDirs("hostile-input");

test("mutated .pt, safetensors, index, manifest, score and model card files raise only the library's errors, never hang, and allocate within bounds", async () => {
  const result = await hostileInput({ seed: 1, budgetMs: 10 * 60_000, workDir: await tempDir(), quick: true });
  assert.deepEqual(result.failures, []);
  for (const group of [".pt written by ckpt", "zip .pt (torch-written)", "legacy .pt (torch-written)", "model.safetensors", "model.safetensors.index.json", "manifest.json", "score.txt", "model.yaml"]) {
    assert.ok((result.cases[group] ?? 0) >= 6, `${group}: ${JSON.stringify(result.cases)}`);
  }
  assert.ok((result.cases["crafted hostile case"] ?? 0) >= 16, JSON.stringify(result.cases));
  assert.ok(Number(result.figures["mutated files refused (CkptError)"]) > 0, JSON.stringify(result.figures));
});

test("a checkpoint holding a symbolic link out of it is listed as damaged and refused at load, naming the link", async () => {
  const root = await tempDir();
  const checkpointDir = join(root, "checkpoints");
  const manager = new FileCheckpointManager({ checkpointDir });
  for (const step of [1, 2]) {
    await manager.beginCheckpoint(step);
    await manager.saveState({ model: { w: Tensor.from(new Float32Array([step])) } });
    await manager.commitCheckpoint();
  }
  // step_1/model.pt becomes a link to a byte-identical copy outside: the checksums alone would pass it.
  await mkdir(join(root, "outside"));
  await cp(join(checkpointDir, "step_1/model.pt"), join(root, "outside/model.pt"));
  await rm(join(checkpointDir, "step_1/model.pt"));
  await symlink(join(root, "outside/model.pt"), join(checkpointDir, "step_1/model.pt"));
  await assert.rejects(manager.loadCheckpoint(1), (error: unknown) => error instanceof CheckpointLoadError && /model\.pt of step 1 is a symbolic link/.test(error.message));
  await assert.rejects(manager.loadModel(1), CheckpointLoadError);
  assert.deepEqual(await manager.getStepNumbers(), [2]);
  const report = await verifyCheckpoints(checkpointDir);
  assert.ok(report.checkpoints.find((c) => c.stepNr === 1)!.problems.some((p) => /symbolic link/.test(p.problem)), JSON.stringify(report.checkpoints));
  // Deleting it removes the link, never what it points to.
  await manager.deleteCheckpoint(1);
  await assert.doesNotReject(cp(join(root, "outside/model.pt"), join(root, "still-there.pt")));
  await manager.close();
});
