// Trains a small TensorFlow.js model with model.fit and checkpoints: run it, interrupt it (Ctrl-C), run it again.
//
//   npm start                                   # 20 epochs, a checkpoint every 25 batches and every epoch, in ./checkpoints
//   npm start -- --dir /tmp/run --epochs 40     # see `npm start -- --help` for every option
import * as tf from "@tensorflow/tfjs";
import { FileCheckpointManager } from "ckpt";
import { checkpointCallback, resumeFit } from "ckpt/tfjs";
import { parseCommandLine } from "./command-line.js";
import { MODEL_CONFIG, MODEL_FAMILY, buildModel, makeDataset } from "./model.js";

const USAGE = `Usage: npm start -- [options]

Trains a small TensorFlow.js network with model.fit and a checkpoint callback. Interrupt it and run
it again: it resumes from the last checkpoint (in the middle of an epoch if that is where it was) and
ends with the same weights as a run that was never interrupted.

Options:
  --dir DIR                 checkpoint directory (default: checkpoints)
  --epochs N                train until epoch N (default: 20)
  --batch-size N            batch size (default: 32)
  --checkpoint-every N      also checkpoint every N batches, besides every epoch (default: 25)
  --keep-best N             keep the N best checkpoints by validation loss whole, and the last; the
                            others keep only their model (default: 2)
  --quiet                   print only the summary at the end
  -h, --help                show this help`;

const commandLine = parseCommandLine("fit", USAGE, {
  dir: { type: "string", default: "checkpoints" },
  epochs: { type: "string", default: "20" },
  "batch-size": { type: "string", default: "32" },
  "checkpoint-every": { type: "string", default: "25" },
  "keep-best": { type: "string", default: "2" },
  quiet: { type: "boolean", default: false },
});
const { dir, quiet } = commandLine.values;
const epochs = commandLine.positiveInt("epochs");
const batchSize = commandLine.positiveInt("batch-size");
const log = (line: string): void => {
  if (!quiet) console.log(line);
};

await tf.setBackend("cpu"); // deterministic kernels: a resumed run matches an uninterrupted one bit for bit
// Silence the CPU backend's one-time banner advising tfjs-node (a native build this project avoids).
(tf.backend() as unknown as { firstUse: boolean }).firstUse = false;

// The data's order is fixed (resumeFit needs shuffle: false to replay an interrupted epoch).
const [TRAIN_SIZE, VALID_SIZE] = [512, 128];
const data = makeDataset(TRAIN_SIZE + VALID_SIZE, 1234);
const features = MODEL_CONFIG.inputSize;
const x = tf.tensor2d(data.x.subarray(0, TRAIN_SIZE * features), [TRAIN_SIZE, features]);
const y = tf.tensor2d(data.y.subarray(0, TRAIN_SIZE), [TRAIN_SIZE, 1]);
const validX = tf.tensor2d(data.x.subarray(TRAIN_SIZE * features), [VALID_SIZE, features]);
const validY = tf.tensor2d(data.y.subarray(TRAIN_SIZE), [VALID_SIZE, 1]);

const model = buildModel();
model.compile({ optimizer: tf.train.adam(0.01), loss: "meanSquaredError" });

const manager = new FileCheckpointManager({ checkpointDir: dir });
if (!(await manager.hasCheckpoint())) await manager.saveModelMetadata({ family: MODEL_FAMILY, config: MODEL_CONFIG });

const checkpoints = checkpointCallback(manager, {
  everyEpochs: 1,
  everyBatches: commandLine.positiveInt("checkpoint-every"),
  monitor: "val_loss", // the score; an epoch's checkpoint has it, one made after a batch has none
  keepBest: commandLine.positiveInt("keep-best"),
  preserveModel: true,
  onSave: ({ stepNr, position, score }) =>
    log(`checkpoint step_${stepNr} (epoch ${position.epoch}, batch ${position.batch})${score === undefined ? "" : `  validation loss ${score.toFixed(5)}`}`),
});
const progress = new tf.CustomCallback({
  onEpochEnd: (epoch, logs) => log(`epoch ${epoch + 1}/${epochs}  loss ${logs?.loss?.toFixed(5)}  validation loss ${logs?.val_loss?.toFixed(5)}`),
});

const { resumedFrom } = await resumeFit(model, x, y, {
  epochs,
  batchSize,
  validationData: [validX, validY],
  verbose: 0,
  callbacks: [checkpoints, progress],
});
const best = await manager.getBestStepNumber();
const last = checkpoints.position.stepNr;
await manager.close();

console.log(`
${resumedFrom === undefined ? "Trained" : `Resumed from step ${resumedFrom.stepNr} (epoch ${resumedFrom.epoch}, batch ${resumedFrom.batch}) and trained`} to epoch ${epochs}, step ${last}. Checkpoints are in ${dir}/ (best: step_${best}, last: step_${last}).
Next:
  npx ckpt ls ${dir}                               # what is on disk: steps, scores, sizes
  /usr/bin/python3 examples/load_in_pytorch.py ${dir}   # the same network in PyTorch, from model.pt
  npm start -- --dir ${dir} --epochs ${epochs * 2}        # train further: resumes from step ${last}`);
