// The advanced example: a hand-written training loop with checkpoints (examples/fit.ts does the same
// with model.fit). Run it, interrupt it (Ctrl-C), run it again.
//
//   npm run start:loop                                   # trains 300 steps, checkpoints every 25 in ./checkpoints-loop
//   npm run start:loop -- --dir /tmp/run --steps 600     # see `npm run start:loop -- --help` for every option
import * as tf from "@tensorflow/tfjs";
import cliProgress from "cli-progress";
import { CheckpointNotFoundError, FileCheckpointManager, Tensor, type StateDict } from "ckpt";
import { captureModelState, captureOptimizerState, restoreModelState, restoreOptimizerState } from "ckpt/tfjs";
import { parseCommandLine } from "./command-line.js";
import { MODEL_CONFIG, MODEL_FAMILY, Random, buildModel, makeDataset } from "./model.js";

const USAGE = `Usage: npm run start:loop -- [options]

Trains a small TensorFlow.js network with checkpoints. Interrupt it and run it again: it resumes
from the last checkpoint and ends with the same weights as a run that was never interrupted.

Options:
  --dir DIR                 checkpoint directory (default: checkpoints-loop)
  --steps N                 train until step N (default: 300)
  --checkpoint-every N      checkpoint every N steps (default: 25)
  --keep-best N             keep the N best checkpoints whole, and the last; the others keep only their model (default: 2)
  --log-every N             print a progress line every N steps instead of a progress bar (default: a bar on a
                            terminal, a line every 25 steps otherwise)
  --quiet                   print only the summary at the end
  -h, --help                show this help`;

const commandLine = parseCommandLine("train", USAGE, {
  dir: { type: "string", default: "checkpoints-loop" },
  steps: { type: "string", default: "300" },
  "checkpoint-every": { type: "string", default: "25" },
  "keep-best": { type: "string", default: "2" },
  "log-every": { type: "string" },
  quiet: { type: "boolean", default: false },
});
const options = commandLine.values;
const totalSteps = commandLine.positiveInt("steps");
const checkpointEvery = commandLine.positiveInt("checkpoint-every");
const keepBest = commandLine.positiveInt("keep-best");
const logEvery = options["log-every"] === undefined ? undefined : commandLine.positiveInt("log-every");
const progress = progressReporter();
const log = (line: string): void => {
  if (!options.quiet) progress.log(line);
};

const BATCH_SIZE = 32;
const TRAIN_SIZE = 512;
const VALID_SIZE = 128;

await tf.setBackend("cpu"); // deterministic kernels: a resumed run matches an uninterrupted one bit for bit
// Silence the CPU backend's one-time banner advising tfjs-node (a native build this project avoids).
(tf.backend() as unknown as { firstUse: boolean }).firstUse = false;
const data = makeDataset(TRAIN_SIZE + VALID_SIZE, 1234);
const features = MODEL_CONFIG.inputSize;
const trainX = data.x.subarray(0, TRAIN_SIZE * features);
const trainY = data.y.subarray(0, TRAIN_SIZE);
const validX = tf.tensor2d(data.x.subarray(TRAIN_SIZE * features), [VALID_SIZE, features]);
const validY = tf.tensor2d(data.y.subarray(TRAIN_SIZE), [VALID_SIZE, 1]);

const model = buildModel();
const optimizer = tf.train.adam(0.01);
model.compile({ optimizer, loss: "meanSquaredError" });

// The data order is part of the state: the shuffling RNG, the epoch's order and the position in it.
const random = new Random(42);
let epoch = 0;
let order = random.permutation(TRAIN_SIZE);
let cursor = 0;
let stepNr = 0;

const manager = new FileCheckpointManager({ checkpointDir: options.dir });
try {
  const { stepNr: resumedStep, state } = await manager.loadLastCheckpoint();
  restoreModelState(model, state.model as StateDict);
  await restoreOptimizerState(optimizer, model, state.optimizer as StateDict);
  const progress = state.data as StateDict;
  random.state = progress.rng_state as number;
  epoch = progress.epoch as number;
  cursor = progress.cursor as number;
  order = Int32Array.from((progress.order as Tensor).data as Int32Array);
  stepNr = resumedStep;
  log(`resuming from step ${stepNr} (${options.dir}/step_${stepNr})`);
} catch (error) {
  if (!(error instanceof CheckpointNotFoundError)) throw error;
  log(`no checkpoint in ${options.dir}: starting fresh`);
  await manager.saveModelMetadata({ family: MODEL_FAMILY, config: MODEL_CONFIG });
}

while (stepNr < totalSteps) {
  if (cursor + BATCH_SIZE > TRAIN_SIZE) {
    epoch++;
    order = random.permutation(TRAIN_SIZE);
    cursor = 0;
  }
  const batch = order.subarray(cursor, cursor + BATCH_SIZE);
  cursor += BATCH_SIZE;
  const x = new Float32Array(BATCH_SIZE * features);
  const y = new Float32Array(BATCH_SIZE);
  batch.forEach((row, i) => {
    x.set(trainX.subarray(row * features, (row + 1) * features), i * features);
    y[i] = trainY[row]!;
  });
  const [xs, ys] = [tf.tensor2d(x, [BATCH_SIZE, features]), tf.tensor2d(y, [BATCH_SIZE, 1])];
  const loss = (await model.trainOnBatch(xs, ys)) as number;
  tf.dispose([xs, ys]);
  stepNr++;
  progress.step(stepNr, loss);

  if (stepNr % checkpointEvery === 0 || stepNr === totalSteps) {
    const validLoss = tf.tidy(() => tf.losses.meanSquaredError(validY, model.predict(validX) as tf.Tensor).dataSync()[0]!);
    await manager.beginCheckpoint(stepNr);
    await manager.saveState({
      model: captureModelState(model),
      optimizer: await captureOptimizerState(optimizer, model),
      data: { epoch, cursor, rng_state: random.state, order: Tensor.from(Int32Array.from(order)) },
      step_nr: stepNr,
    });
    await manager.saveScore(validLoss, { lowerBetter: true });
    await manager.commitCheckpoint();
    const { stripped } = await manager.keepBestNCheckpoints(keepBest, { preserveModel: true });
    log(`checkpoint step_${stepNr}  validation loss ${validLoss.toFixed(5)}${stripped.length > 0 ? `  (kept only the model of step ${stripped.join(", ")})` : ""}`);
  }
}

progress.stop();
const best = await manager.getBestStepNumber();
await manager.close();
console.log(`
Trained ${totalSteps} steps. Checkpoints are in ${options.dir}/ (best: step_${best}, last: step_${stepNr}).
Next:
  npx ckpt ls ${options.dir}                               # what is on disk: steps, scores, sizes
  npx ckpt verify ${options.dir}                           # re-check every file against its manifest
  /usr/bin/python3 examples/load_in_pytorch.py ${options.dir}   # the same network in PyTorch, from model.pt
  npm run start:loop -- --dir ${options.dir} --steps ${totalSteps * 2}   # train further: resumes from step ${stepNr}`);

/**
 * Training progress: a bar on a terminal, else (or with --log-every) a line every N steps, so a
 * log is not one line per step. Other messages go above the bar.
 */
function progressReporter() {
  const useBar = logEvery === undefined && process.stdout.isTTY === true && !options.quiet;
  const every = logEvery ?? 25;
  const bar = useBar ? new cliProgress.SingleBar({ format: "step {value}/{total} [{bar}] loss {loss}", hideCursor: true, barsize: 30 }, cliProgress.Presets.shades_classic) : undefined;
  let started = false;
  return {
    log(line: string): void {
      if (started) process.stdout.write("\r\x1b[K"); // clear the bar's line, print, draw it again below
      console.log(line);
      if (started) bar?.render();
    },
    step(step: number, loss: number): void {
      if (options.quiet) return;
      if (bar === undefined) {
        if (step % every === 0 || step === totalSteps) console.log(`step ${step}/${totalSteps}  loss ${loss.toFixed(5)}`);
        return;
      }
      if (!started) bar.start(totalSteps, step, { loss: loss.toFixed(5) });
      started = true;
      bar.update(step, { loss: loss.toFixed(5) });
    },
    stop(): void {
      bar?.stop();
    },
  };
}
