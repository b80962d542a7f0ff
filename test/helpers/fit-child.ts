/**
 * A `fit` run with checkpoints, for the SIGKILL tests. Run as
 * `node --import tsx fit-child.ts <checkpointDir> <weightsOut> [--dataset] [--background] [--kill-after-step N]`.
 * It trains a tiny network with resumeFit (or resumeFitDataset) and checkpointCallback, resuming
 * from whatever the directory holds; with --kill-after-step it SIGKILLs itself right after batch
 * N (once that batch's checkpoint, if any, is saved). At the end it writes the final weights,
 * float32 in modelWeights order, to <weightsOut> and prints `resumed <json>` and `done`.
 */
import { writeFileSync, writeSync } from "node:fs";
import * as tf from "@tensorflow/tfjs";
import { FileCheckpointManager } from "../../src/index.js";
import { checkpointCallback, modelWeights, resumeFit, resumeFitDataset } from "../../src/tfjs/index.js";
import { FIT_CHILD } from "./fit-child-config.js";


const [dir, weightsOut, ...flags] = process.argv.slice(2);
if (dir === undefined || weightsOut === undefined) throw new Error("usage: fit-child.ts <checkpointDir> <weightsOut> [flags]");
const killIndex = flags.indexOf("--kill-after-step");
const killAfter = killIndex >= 0 ? Number(flags[killIndex + 1]) : undefined;

await tf.setBackend("cpu");
(tf.backend() as unknown as { firstUse: boolean }).firstUse = false;

/** The same data in every process: mulberry32 from a fixed seed. */
function data(count: number, seed: number): Float32Array {
  let state = seed;
  return Float32Array.from({ length: count }, () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = Math.imul(state ^ (state >>> 15), state | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296 * 2 - 1;
  });
}

const { samples, batchSize, epochs, everyBatches } = FIT_CHILD;
const features = 3;
const xs = tf.tensor2d(data(samples * features, 7), [samples, features]);
const ys = tf.tidy(() => tf.sin(xs.sum(1, true)));
const valX = tf.tensor2d(data(16 * features, 8), [16, features]);
const valY = tf.tidy(() => tf.sin(valX.sum(1, true)));

const model = tf.sequential();
model.add(tf.layers.dense({ units: 8, inputShape: [features], activation: "tanh", kernelInitializer: tf.initializers.glorotUniform({ seed: 1 }) }));
model.add(tf.layers.dense({ units: 1, kernelInitializer: tf.initializers.glorotUniform({ seed: 2 }) }));
model.compile({ optimizer: tf.train.adam(0.02), loss: "meanSquaredError" });

const manager = new FileCheckpointManager({ checkpointDir: dir });
const checkpoints = checkpointCallback(manager, { everyBatches, everyEpochs: 1, monitor: "val_loss", keepLast: 3, background: flags.includes("--background") });
let step = 0;
const killer = new tf.CustomCallback({
  onTrainBegin: () => void (step = checkpoints.position.stepNr),
  onBatchEnd: () => {
    step++;
    if (step === killAfter) process.kill(process.pid, "SIGKILL");
  },
});
// The checkpoint callback first: the kill comes after its save of the same batch.
const callbacks = [checkpoints, killer];
const result = flags.includes("--dataset")
  ? await resumeFitDataset(model, tf.data.zip({ xs: tf.data.array(tf.unstack(xs)), ys: tf.data.array(tf.unstack(ys)) }).batch(batchSize), { epochs, validationData: [valX, valY], verbose: 0, callbacks })
  : await resumeFit(model, xs, ys, { epochs, batchSize, validationData: [valX, valY], verbose: 0, callbacks });
await manager.close();

const weights = modelWeights(model).map((weight) => Buffer.from((weight.variable.read().dataSync() as Float32Array).buffer));
writeFileSync(weightsOut, Buffer.concat(weights));
writeSync(1, `resumed ${JSON.stringify(result.resumedFrom ?? null)}\ndone\n`);
