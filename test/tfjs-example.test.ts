import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import * as tf from "@tensorflow/tfjs";
import { FileCheckpointManager, type StateDict } from "../src/index.js";
import { restoreModelState } from "../src/tfjs/index.js";
import { buildModel, MODEL_CONFIG } from "../examples/model.js";
import { requireTorch } from "./helpers/torch-python.js";

const TRAIN = join(import.meta.dirname, "..", "examples", "train.ts");
const LOAD_IN_PYTORCH = join(import.meta.dirname, "..", "examples", "load_in_pytorch.py");
const STEPS = 120;
const EVERY = 10;
const args = (dir: string): string[] => ["--import", "tsx", TRAIN, "--dir", dir, "--steps", String(STEPS), "--checkpoint-every", String(EVERY), "--log-every", "1"];

let root: string;
before(async () => {
  root = await mkdtemp(join(tmpdir(), "ckpt-example-"));
});
after(async () => {
  await rm(root, { recursive: true, force: true });
});

function runToEnd(dir: string): string {
  const result = spawnSync(process.execPath, args(dir), { encoding: "utf8" });
  assert.equal(result.status, 0, result.stderr);
  return result.stdout;
}

/** Runs the example and kills it with SIGKILL as soon as it reports finishing step `killAt`. */
function runAndKillAt(dir: string, killAt: number): Promise<number> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, args(dir), { stdio: ["ignore", "pipe", "pipe"] });
    let buffer = "";
    let lastStep = 0;
    child.stdout.setEncoding("utf8");
    child.stdout.on("data", (chunk: string) => {
      buffer += chunk;
      for (const match of buffer.matchAll(/^step (\d+)\//gm)) lastStep = Math.max(lastStep, Number(match[1]));
      buffer = buffer.slice(buffer.lastIndexOf("\n") + 1);
      if (lastStep >= killAt && child.exitCode === null) child.kill("SIGKILL");
    });
    child.on("error", reject);
    child.on("exit", (code, signal) => {
      if (signal !== "SIGKILL") reject(new Error(`the example ended by itself (code ${code}) before step ${killAt}`));
      else resolve(lastStep);
    });
  });
}

async function finalModelBytes(dir: string): Promise<Buffer> {
  return readFile(join(dir, `step_${STEPS}`, "model.pt"));
}

describe("the training example", () => {
  it("resumes after SIGKILL at random steps and ends with bitwise the same weights as an uninterrupted run", async () => {
    const straight = join(root, "straight");
    runToEnd(straight);
    const expected = await finalModelBytes(straight);

    const interrupted = join(root, "interrupted");
    const killSteps: number[] = [];
    // Three kills at random steps, each later than the last; every run resumes from the last checkpoint.
    let floor = 1;
    for (let kill = 0; kill < 3; kill++) {
      const killAt = floor + Math.floor(Math.random() * 25);
      killSteps.push(await runAndKillAt(interrupted, killAt));
      floor = killAt + 10;
    }
    const resumedOutput = runToEnd(interrupted);
    assert.match(resumedOutput, /resuming from step \d+/, `killed at steps ${killSteps.join(", ")}`);
    const actual = await finalModelBytes(interrupted);
    assert.ok(actual.equals(expected), `final model.pt differs after kills at steps ${killSteps.join(", ")}`);

    // The full training state matches too, not only the model.
    const [a, b] = await Promise.all([readFile(join(straight, `step_${STEPS}`, "rank_0.pt")), readFile(join(interrupted, `step_${STEPS}`, "rank_0.pt"))]);
    assert.ok(a.equals(b), "optimizer and data state differ after resuming");
  });

  it("writes a model.pt that PyTorch runs to the same outputs as the tfjs model (max abs diff <= 1e-5)", async (t) => {
    const python = requireTorch(t);
    if (python === null) return;
    const dir = join(root, "straight");
    if (!(await new FileCheckpointManager({ checkpointDir: dir }).hasCheckpoint(STEPS))) runToEnd(dir);

    const rows = Array.from({ length: 16 }, (_, r) => Array.from({ length: MODEL_CONFIG.inputSize }, (_, f) => Math.sin(r * 7 + f * 3)));
    const inputs = join(root, "inputs.json");
    await writeFile(inputs, JSON.stringify(rows));
    const step = join(dir, `step_${STEPS}`);
    const result = spawnSync(python, [LOAD_IN_PYTORCH, step, "--inputs", inputs, "--json"], { encoding: "utf8" });
    assert.equal(result.status, 0, result.stderr);
    const torchOutputs = JSON.parse(result.stdout) as number[][];

    await tf.setBackend("cpu");
    const model = buildModel();
    const manager = new FileCheckpointManager({ checkpointDir: dir });
    restoreModelState(model, await manager.loadModel(STEPS) as StateDict);
    const tfjsOutputs = tf.tidy(() => (model.predict(tf.tensor2d(rows)) as tf.Tensor).arraySync() as number[][]);

    assert.equal(torchOutputs.length, rows.length);
    let maxDiff = 0;
    torchOutputs.forEach((row, r) => row.forEach((value, c) => (maxDiff = Math.max(maxDiff, Math.abs(value - tfjsOutputs[r]![c]!)))));
    assert.ok(maxDiff <= 1e-5, `max abs diff ${maxDiff}`);
    // Not vacuous: the outputs are not all equal to each other.
    assert.ok(new Set(torchOutputs.map((row) => row[0]!.toFixed(4))).size > 1);
  });
});
