import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { readdir, readFile, rename, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { before, describe, it } from "node:test";
import * as tf from "@tensorflow/tfjs";
import { CheckpointLoadError, CkptError, FileCheckpointManager, InvalidArgumentError, type StateDict, type Tensor } from "../src/index.js";
import { captureModelState, checkpointCallback, resumeFit, type CheckpointCallbackOptions } from "../src/tfjs/index.js";
import { useTempDirs } from "./helpers/checkpoint-helpers.js";
import { FIT_CHILD } from "./helpers/fit-child-config.js";
import { bundledOnce } from "../torture/lib/bundle-child.js";

const tempDir = useTempDirs("tfjs-fit");
const CHILD = join(import.meta.dirname, "helpers", "fit-child.ts");

before(async () => {
  await tf.setBackend("cpu");
  (tf.backend() as unknown as { firstUse: boolean }).firstUse = false;
});

/** A tiny regression problem: 40 training rows (5 batches of 8), 8 validation rows. */
function problem() {
  const x = tf.tensor2d(Array.from({ length: 40 * 3 }, (_, i) => Math.sin(i * 1.7)), [40, 3]);
  const y = tf.tidy(() => x.sum(1, true).mul(0.5));
  const valX = tf.tensor2d(Array.from({ length: 8 * 3 }, (_, i) => Math.cos(i * 0.9)), [8, 3]);
  const valY = tf.tidy(() => valX.sum(1, true).mul(0.5));
  return { x, y, valX, valY };
}

function tinyModel(): tf.Sequential {
  const model = tf.sequential();
  model.add(tf.layers.dense({ units: 4, inputShape: [3], activation: "tanh", kernelInitializer: tf.initializers.glorotUniform({ seed: 3 }) }));
  model.add(tf.layers.dense({ units: 1, kernelInitializer: tf.initializers.glorotUniform({ seed: 4 }) }));
  model.compile({ optimizer: tf.train.adam(0.05), loss: "meanSquaredError" });
  return model;
}

/** Counts the batches `fit` trained, to show where training stopped. */
function batchCounter(): { callback: tf.CustomCallback; count: () => number } {
  let batches = 0;
  return { callback: new tf.CustomCallback({ onBatchEnd: () => void batches++ }), count: () => batches };
}

async function positionOf(manager: FileCheckpointManager, stepNr: number): Promise<StateDict> {
  return (await manager.loadCheckpoint(stepNr)).fit_position as StateDict;
}

describe("checkpointCallback in model.fit", () => {
  it("saves every N batches and every epoch at the expected steps, with the epoch's val_loss as score and the position to resume", async () => {
    const dir = await tempDir();
    const { x, y, valX, valY } = problem();
    const model = tinyModel();
    const manager = new FileCheckpointManager({ checkpointDir: dir });
    const history = await model.fit(x, y, {
      epochs: 3,
      batchSize: 8,
      shuffle: false,
      verbose: 0,
      validationData: [valX, valY],
      callbacks: [checkpointCallback(manager, { everyBatches: 3, everyEpochs: 1, monitor: "val_loss" })],
    });
    // 5 batches per epoch: batch saves at steps 3, 6, 9, 12; the one at 15 falls on an epoch's last
    // batch and is made at the epoch's end; epoch ends at 5, 10, 15.
    assert.deepEqual(await manager.getStepNumbers(), [3, 5, 6, 9, 10, 12, 15]);
    const valLoss = history.history.val_loss as number[];
    // Scores are stored higher-is-better: a loss is saved negated. Batch saves have no val_loss yet.
    assert.deepEqual(await manager.getScores(), [
      { stepNr: 5, score: -Math.fround(valLoss[0]!) },
      { stepNr: 10, score: -Math.fround(valLoss[1]!) },
      { stepNr: 15, score: -Math.fround(valLoss[2]!) },
    ]);
    assert.deepEqual(await positionOf(manager, 3), { epoch: 0, batch: 3, step_nr: 3 });
    assert.deepEqual(await positionOf(manager, 6), { epoch: 1, batch: 1, step_nr: 6 });
    assert.deepEqual(await positionOf(manager, 12), { epoch: 2, batch: 2, step_nr: 12 });
    assert.deepEqual(await positionOf(manager, 15), { epoch: 3, batch: 0, step_nr: 15 });
    // The last checkpoint holds the model as fit left it, in captureModelState's keys.
    const saved = (await manager.loadModel(15)) as StateDict;
    const live = captureModelState(model);
    assert.deepEqual(Object.keys(saved), ["0.weight", "0.bias", "1.weight", "1.bias"]);
    const values = (tensor: unknown): number[] => Array.from((tensor as Tensor).contiguous().data as Float32Array);
    for (const key of Object.keys(live)) assert.deepEqual(values(saved[key]), values(live[key]), key);
    await manager.close();
  });

  it("applies keepBest/keepLast with preserveModel after each save", async () => {
    const dir = await tempDir();
    const { x, y, valX, valY } = problem();
    const model = tinyModel();
    const manager = new FileCheckpointManager({ checkpointDir: dir });
    const history = await model.fit(x, y, {
      epochs: 5,
      batchSize: 8,
      shuffle: false,
      verbose: 0,
      validationData: [valX, valY],
      callbacks: [checkpointCallback(manager, { everyEpochs: 1, monitor: "val_loss", keepBest: 1, keepLast: 1, preserveModel: true })],
    });
    const valLoss = history.history.val_loss as number[];
    const bestEpoch = valLoss.indexOf(Math.min(...valLoss));
    const best = (bestEpoch + 1) * 5;
    const resumable = [...new Set([best, 25])].sort((a, b) => a - b);
    assert.deepEqual(await manager.getStepNumbers(), resumable);
    // The others keep their model files only.
    assert.deepEqual(await manager.getStepNumbers({ includeModelOnly: true }), [5, 10, 15, 20, 25]);
    await manager.close();
  });

  it("with keepBest, prunes the unscored checkpoints saved after batches once newer ones exist", async () => {
    const dir = await tempDir();
    const { x, y, valX, valY } = problem();
    const manager = new FileCheckpointManager({ checkpointDir: dir });
    const history = await tinyModel().fit(x, y, {
      epochs: 5,
      batchSize: 8,
      shuffle: false,
      verbose: 0,
      validationData: [valX, valY],
      callbacks: [checkpointCallback(manager, { everyBatches: 3, everyEpochs: 1, monitor: "val_loss", keepBest: 1 })],
    });
    const valLoss = history.history.val_loss as number[];
    const best = (valLoss.indexOf(Math.min(...valLoss)) + 1) * 5;
    // Saved after batches without a score: 3, 6, 9, 12, 18, 21, 24; all gone, as are the epochs' but the best and the last.
    assert.deepEqual(await manager.getStepNumbers({ includeModelOnly: true }), [...new Set([best, 25])].sort((a, b) => a - b));
    await manager.close();
  });

  it("scores with a batch metric and mode max, and saves in the background with fit resolving once every checkpoint is committed", async () => {
    const dir = await tempDir();
    const { x, y } = problem();
    const model = tinyModel();
    const manager = new FileCheckpointManager({ checkpointDir: dir });
    const losses: number[] = [];
    await model.fit(x, y, {
      epochs: 2,
      batchSize: 8,
      shuffle: false,
      verbose: 0,
      callbacks: [
        checkpointCallback(manager, { everyBatches: 2, monitor: "loss", mode: "max", background: true }),
        new tf.CustomCallback({ onBatchEnd: (_batch, logs) => void losses.push(logs!.loss!) }),
      ],
    });
    assert.equal(manager.hasPendingSave, false);
    const fresh = new FileCheckpointManager({ checkpointDir: dir });
    assert.deepEqual(await fresh.getStepNumbers(), [2, 4, 6, 8, 10]);
    // mode "max": stored as is. Step 10 falls on the last batch: saved at the epoch's end, with the epoch's mean loss.
    const scores = await fresh.getScores();
    assert.deepEqual(scores.slice(0, 4), [2, 4, 6, 8].map((stepNr) => ({ stepNr, score: Math.fround(losses[stepNr - 1]!) })));
    await manager.close();
    await fresh.close();
  });

  it("refuses bad options with errors that name the option", () => {
    const manager = new FileCheckpointManager({ checkpointDir: "/nonexistent-never-created" });
    const cases: [unknown, RegExp][] = [
      [{}, /everyEpochs, everyBatches or both/],
      [{ everyEpochs: 0 }, /everyEpochs must be a positive integer, got 0/],
      [{ everyBatches: 2.5 }, /everyBatches must be a positive integer, got 2.5/],
      [{ everyEpoch: 1 }, /unknown option everyEpoch/],
      [{ everyEpochs: 1, keepBest: 2 }, /keepBest needs monitor/],
      [{ everyEpochs: 1, monitor: "val_loss", mode: "lowest" }, /mode must be "min", "max" or "auto"/],
      [{ everyEpochs: 1, mode: "min" }, /mode needs monitor/],
      [{ everyEpochs: 1, preserveModel: true }, /preserveModel applies to retention/],
      [{ everyEpochs: 1, keepLast: -1 }, /keepLast must be a positive integer/],
      [{ everyEpochs: 1, background: "yes" }, /background must be true or false/],
      [{ everyEpochs: 1, monitor: "" }, /monitor must be a metric name/],
      [null, /options must be an object/],
    ];
    for (const [options, message] of cases) {
      assert.throws(() => checkpointCallback(manager, options as CheckpointCallbackOptions), (error: unknown) => error instanceof InvalidArgumentError && message.test(error.message), JSON.stringify(options));
    }
    assert.throws(() => checkpointCallback({} as FileCheckpointManager, { everyEpochs: 1 }), /must be a checkpoint manager/);
  });

  it("rejects fit before any training when the monitored metric does not exist", async () => {
    const dir = await tempDir();
    const { x, y } = problem();
    const counter = batchCounter();
    const manager = new FileCheckpointManager({ checkpointDir: dir });
    await assert.rejects(
      tinyModel().fit(x, y, { epochs: 1, batchSize: 8, verbose: 0, callbacks: [checkpointCallback(manager, { everyEpochs: 1, monitor: "val_loss" }), counter.callback] }),
      /monitor "val_loss" is not one of this fit's metrics: loss \(validation metrics need validationData/,
    );
    assert.equal(counter.count(), 0);
    assert.deepEqual(await readdir(dir).catch(() => []), []);
    await manager.close();
  });
  it("says what is wrong when tfjs hides the model from it (a plain-object callback first in the array)", async () => {
    const dir = await tempDir();
    const { x, y } = problem();
    const manager = new FileCheckpointManager({ checkpointDir: dir });
    await assert.rejects(
      tinyModel().fit(x, y, { epochs: 1, batchSize: 8, verbose: 0, callbacks: [{ onBatchEnd: async () => undefined }, checkpointCallback(manager, { everyEpochs: 1 })] as tf.CustomCallbackArgs[] }),
      /checkpointCallback was not given the model: .*put the checkpoint callback first/,
    );
    await manager.close();
  });
});

describe("a failing save stops fit with its error", () => {
  it("rejects fit at the first save when the checkpoint directory cannot be created, and trains no further", async () => {
    const root = await tempDir();
    await writeFile(join(root, "not-a-directory"), "a file");
    const { x, y } = problem();
    const counter = batchCounter();
    const manager = new FileCheckpointManager({ checkpointDir: join(root, "not-a-directory", "checkpoints") });
    const model = tinyModel();
    const error = await tinyFitError(model, x, y, [checkpointCallback(manager, { everyBatches: 2 }), counter.callback]);
    assert.ok(error instanceof CkptError, `not a ckpt error: ${String(error)}`);
    assert.match(String((error as Error).message) + String((error as Error).cause), /ENOTDIR|not a directory/i);
    // The failed save was after batch 2; the counter (after the checkpoint callback) never saw it.
    assert.equal(counter.count(), 1);
    // fit is over: the model trains again.
    await model.fit(x, y, { epochs: 1, batchSize: 8, verbose: 0 });
  });

  for (const background of [false, true]) {
    it(`rejects fit when the directory is replaced by a file mid-run${background ? " (background saves: raised at the next save or when training ends)" : ""}, and keeps the earlier checkpoint`, async () => {
      const root = await tempDir();
      const dir = join(root, "checkpoints");
      const { x, y } = problem();
      const manager = new FileCheckpointManager({ checkpointDir: dir });
      let step = 0;
      // Before the checkpoint callback: after batch 3 (checkpoint 2 is saved), the directory goes away and a file takes its place.
      const sabotage = new tf.CustomCallback({
        onBatchEnd: async () => {
          if (++step !== 3) return;
          await manager.waitForPendingSave();
          await rename(dir, `${dir}.moved`);
          await writeFile(dir, "not a directory");
        },
      });
      const error = await tinyFitError(tinyModel(), x, y, [sabotage, checkpointCallback(manager, { everyBatches: 2, background })]);
      assert.ok(error instanceof CkptError, `not a ckpt error: ${String(error)}`);
      assert.equal(step < 10, true, `fit trained ${step} batches after the failure`);
      const survivor = new FileCheckpointManager({ checkpointDir: `${dir}.moved` });
      assert.deepEqual(await survivor.getStepNumbers(), [2]);
      await survivor.loadCheckpoint(2);
      await survivor.close();
    });
  }
});

async function tinyFitError(model: tf.LayersModel, x: tf.Tensor, y: tf.Tensor, callbacks: NonNullable<tf.ModelFitArgs["callbacks"]>): Promise<unknown> {
  try {
    await model.fit(x, y, { epochs: 2, batchSize: 8, shuffle: false, verbose: 0, callbacks });
  } catch (error) {
    return error;
  }
  assert.fail("fit resolved although a save failed");
}

describe("resumeFit", () => {
  it("refuses shuffle: true, initialEpoch, a missing checkpoint callback, and data with fewer batches than the checkpoint's position", async () => {
    const dir = await tempDir();
    const { x, y } = problem();
    const model = tinyModel();
    const manager = new FileCheckpointManager({ checkpointDir: dir });
    const checkpoints = checkpointCallback(manager, { everyBatches: 4 });
    await assert.rejects(resumeFit(model, x, y, { shuffle: true, callbacks: [checkpoints] }), /shuffle must be false/);
    await assert.rejects(resumeFit(model, x, y, { initialEpoch: 1, callbacks: [checkpoints] } as never), /do not pass initialEpoch/);
    await assert.rejects(resumeFit(model, x, y, { callbacks: [] }), /exactly one checkpointCallback \(it has 0\)/);
    await resumeFit(model, x, y, { epochs: 1, batchSize: 8, verbose: 0, callbacks: [checkpoints] });
    assert.deepEqual(await manager.getStepNumbers(), [4]);
    // Checkpoint 4 is after batch 4 of epoch 0; with 2 batches per epoch that position does not exist.
    const fewer = tf.tidy(() => [x.slice(0, 16), y.slice(0, 16)]);
    await assert.rejects(
      resumeFit(tinyModel(), fewer[0]!, fewer[1]!, { epochs: 2, batchSize: 8, verbose: 0, callbacks: [checkpointCallback(manager, { everyBatches: 4 })] }),
      (error: unknown) => error instanceof CheckpointLoadError && /saved after batch 4 of epoch 0, but this data has 2 batches per epoch/.test(error.message),
    );
    await manager.close();
  });
});

describe("resumeFit with validationSplit", () => {
  it("after a run stopped by an error mid-epoch, ends with the same weights as an uninterrupted run", async () => {
    const { x, y } = problem();
    // 40 rows, 20% for validation: 32 training rows, 4 batches of 8 per epoch.
    const args = { epochs: 3, batchSize: 8, validationSplit: 0.2, verbose: 0 as const };
    const run = async (dir: string, stopAt?: number) => {
      const model = tinyModel();
      const manager = new FileCheckpointManager({ checkpointDir: dir });
      let step = 0;
      const stopper = new tf.CustomCallback({
        onBatchEnd: () => {
          if (++step === stopAt) throw new Error("stopped on purpose");
        },
      });
      try {
        const result = await resumeFit(model, x, y, { ...args, callbacks: [checkpointCallback(manager, { everyBatches: 3, monitor: "val_loss" }), stopper] });
        return { model, result };
      } finally {
        await manager.close();
      }
    };
    const straight = await run(await tempDir());
    const dir = await tempDir();
    await assert.rejects(run(dir, 7), /stopped on purpose/);
    const resumed = await run(dir);
    assert.deepEqual(resumed.result.resumedFrom, { epoch: 1, batch: 2, stepNr: 6 });
    const weights = (model: tf.LayersModel) => model.getWeights().map((w) => Array.from(w.dataSync()));
    assert.deepEqual(weights(resumed.model), weights(straight.model));
    // The resumed call trained the rest of epoch 1 and epoch 2; validation saw the same models.
    assert.deepEqual(resumed.result.epoch, [1, 2]);
    assert.equal(resumed.result.history.val_loss?.length, 2);
    assert.deepEqual(resumed.result.history.val_loss, straight.result.history.val_loss?.slice(1));
  });
});

describe("a fit run killed with SIGKILL and resumed", () => {
  /** CHILD bundled into plain JavaScript (torture/lib/bundle-child.ts): it is started seven times here. */
  let bundledChild: string;
  const runChild = (dir: string, out: string, flags: string[]) => spawnSync(process.execPath, [bundledChild, dir, out, ...flags], { encoding: "utf8" });
  let straightWeights: Buffer;
  let straightDir: string;

  before(async () => {
    bundledChild = await bundledOnce(CHILD);
    const root = await tempDir();
    straightDir = join(root, "straight");
    const result = runChild(straightDir, join(root, "straight.bin"), []);
    assert.equal(result.status, 0, result.stderr);
    assert.match(result.stdout, /^resumed null$/m);
    straightWeights = await readFile(join(root, "straight.bin"));
  });

  const totalSteps = (FIT_CHILD.samples / FIT_CHILD.batchSize) * FIT_CHILD.epochs;

  async function assertSameEnd(dir: string, weightsFile: string): Promise<void> {
    assert.ok((await readFile(weightsFile)).equals(straightWeights), "final weights differ from the uninterrupted run's");
    for (const file of ["model.pt", "rank_0.pt"]) {
      const [a, b] = await Promise.all([readFile(join(straightDir, `step_${totalSteps}`, file)), readFile(join(dir, `step_${totalSteps}`, file))]);
      assert.ok(a.equals(b), `step_${totalSteps}/${file} differs from the uninterrupted run's`);
    }
  }

  for (const variant of [
    { name: "fit", flags: [] as string[], killAfter: 23 },
    { name: "fitDataset", flags: ["--dataset"], killAfter: 27 },
  ]) {
    it(`${variant.name}: killed in the middle of an epoch, it resumes there (skipping the trained batches) and ends bit for bit as an uninterrupted run`, async () => {
      const root = await tempDir();
      const dir = join(root, "run");
      const out = join(root, "run.bin");
      const killed = runChild(dir, out, [...variant.flags, "--kill-after-step", String(variant.killAfter)]);
      assert.equal(killed.signal, "SIGKILL", killed.stderr);
      const resumed = runChild(dir, out, variant.flags);
      assert.equal(resumed.status, 0, resumed.stderr);
      // 16 batches per epoch, a checkpoint every 5 batches: the last before the kill is mid-epoch.
      const last = Math.floor(variant.killAfter / FIT_CHILD.everyBatches) * FIT_CHILD.everyBatches;
      const perEpoch = FIT_CHILD.samples / FIT_CHILD.batchSize;
      assert.match(resumed.stdout, new RegExp(`^resumed ${JSON.stringify({ epoch: Math.floor(last / perEpoch), batch: last % perEpoch, stepNr: last }).replace(/[{}]/g, "\\$&")}$`, "m"));
      await assertSameEnd(dir, out);
    });
  }

  it("killed at an arbitrary moment once a checkpoint exists (background saves), it resumes to the same final weights", async () => {
    const root = await tempDir();
    const dir = join(root, "run");
    const out = join(root, "run.bin");
    // Kill once checkpoint `waitFor` (or a later one) is committed; the child is then anywhere: training, saving, pruning.
    const waitFor = FIT_CHILD.everyBatches * (1 + Math.floor(Math.random() * 6));
    const child = spawn(process.execPath, [bundledChild, dir, out, "--background"], { stdio: ["ignore", "pipe", "pipe"] });
    let stderr = "";
    child.stderr.setEncoding("utf8").on("data", (chunk: string) => (stderr += chunk));
    const exited = new Promise<NodeJS.Signals | null>((resolve) => child.on("exit", (_code, signal) => resolve(signal)));
    let killedAt: number | undefined;
    while (child.exitCode === null && child.signalCode === null) {
      const steps = (await readdir(dir).catch(() => [] as string[])).map((name) => /^step_(\d+)$/.exec(name)?.[1]).filter((step) => step !== undefined).map(Number);
      if (steps.some((step) => step >= waitFor)) {
        killedAt = Math.max(...steps);
        child.kill("SIGKILL");
        break;
      }
      await new Promise((resolve) => setTimeout(resolve, 2));
    }
    assert.equal(await exited, "SIGKILL", `the child ended by itself before checkpoint ${waitFor}: ${stderr}`);
    const resumed = runChild(dir, out, ["--background"]);
    assert.equal(resumed.status, 0, resumed.stderr);
    const from = JSON.parse(/^resumed (.*)$/m.exec(resumed.stdout)![1]!) as { stepNr: number } | null;
    // Normally mid-run; on a machine so loaded that the poll saw the directory only at the very end,
    // the last step (then nothing is left to train, and the weights must still match).
    assert.ok(from !== null && from.stepNr >= waitFor && from.stepNr <= totalSteps, `resumed from ${JSON.stringify(from)} (killed when step ${killedAt} was on disk)`);
    await assertSameEnd(dir, out);
  });
});

describe("the fit example (npm start)", () => {
  const EXAMPLE = join(import.meta.dirname, "..", "examples", "fit.ts");
  const args = (dir: string): string[] => ["--import", "tsx", EXAMPLE, "--dir", dir, "--epochs", "3", "--checkpoint-every", "5"];

  it("killed with SIGKILL after a mid-epoch checkpoint, run again, ends with the uninterrupted run's last checkpoint", async () => {
    const root = await tempDir();
    const straight = spawnSync(process.execPath, args(join(root, "straight")), { encoding: "utf8" });
    assert.equal(straight.status, 0, straight.stderr);
    assert.match(straight.stdout, /Trained to epoch 3, step 48/);

    const dir = join(root, "interrupted");
    const child = spawn(process.execPath, args(dir), { stdio: ["ignore", "pipe", "pipe"] });
    let output = "";
    child.stdout.setEncoding("utf8").on("data", (chunk: string) => {
      output += chunk;
      // Step 20 is batch 4 of epoch 1 (16 batches per epoch).
      if (/checkpoint step_20 \(epoch 1, batch 4\)/.test(output) && child.exitCode === null) child.kill("SIGKILL");
    });
    const signal = await new Promise<NodeJS.Signals | null>((resolve) => child.on("exit", (_code, sig) => resolve(sig)));
    assert.equal(signal, "SIGKILL", `the example ended by itself: ${output}`);
    const resumed = spawnSync(process.execPath, args(dir), { encoding: "utf8" });
    assert.equal(resumed.status, 0, resumed.stderr);
    assert.match(resumed.stdout, /Resumed from step \d+ \(epoch \d, batch \d+\) and trained to epoch 3, step 48/);
    for (const file of ["model.pt", "rank_0.pt"]) {
      const [a, b] = await Promise.all([readFile(join(root, "straight", "step_48", file)), readFile(join(dir, "step_48", file))]);
      assert.ok(a.equals(b), `step_48/${file} differs`);
    }
  });
});
