// Trains the example's network data-parallel on several processes, with checkpoints:
//
//   npm run start:distributed                                  # ckpt launch --nproc 2 -- … (2 ranks)
//   npx ckpt launch --nproc 4 -- npx tsx examples/train-distributed.ts --dir /tmp/run
//
// Each rank trains on its own share of the data (its own order and random state, kept in its rank
// file); gradients are averaged across ranks through the gang (allReduceSum, fine for a model this
// small), so every rank holds the same weights. Kill any rank: the launch stops; run it again and
// it resumes, ending with the same weights, bit for bit, as a run that was never interrupted.
import { parseArgs } from "node:util";
import * as tf from "@tensorflow/tfjs";
import { CheckpointNotFoundError, FileCheckpointManager, Tensor, closeGangs, initGangs, type StateDict } from "ckpt";
import { captureModelState, captureOptimizerState, restoreModelState, restoreOptimizerState } from "ckpt/tfjs";
import { MODEL_CONFIG, MODEL_FAMILY, Random, buildModel, makeDataset } from "./model.js";

const USAGE = `Usage: ckpt launch --nproc N -- npx tsx examples/train-distributed.ts [options]

Options:
  --dir DIR               checkpoint directory (default: checkpoints-distributed)
  --steps N               train until step N (default: 200)
  --checkpoint-every N    checkpoint every N steps (default: 25)
  --log-every N           print a line every N steps (default: 25)
  -h, --help              show this help`;

const options = parseOptions();
const totalSteps = positiveInt(options.steps, "--steps");
const checkpointEvery = positiveInt(options["checkpoint-every"], "--checkpoint-every");
const logEvery = positiveInt(options["log-every"], "--log-every");

/** The global batch: each of the dp ranks takes BATCH_SIZE / dp of it. */
const BATCH_SIZE = 32;
const DATA_SIZE = 512;

await tf.setBackend("cpu"); // deterministic kernels
(tf.backend() as unknown as { firstUse: boolean }).firstUse = false;
const gangs = await initGangs();
const { dp } = gangs;
if (BATCH_SIZE % dp.size !== 0) fail(`the batch of ${BATCH_SIZE} does not split over ${dp.size} data-parallel ranks`);
const localBatch = BATCH_SIZE / dp.size;
const log = (line: string): void => {
  if (dp.rank === 0) console.log(line);
};
console.log(`pid ${process.pid}`); // lets a test kill one rank

// This rank's share of the data: every dp.size-th example, in its own shuffled order.
const data = makeDataset(DATA_SIZE, 1234);
const features = MODEL_CONFIG.inputSize;
const mine = Int32Array.from({ length: DATA_SIZE / dp.size }, (_, i) => i * dp.size + dp.rank);
const random = new Random(42 + dp.rank);
let order = random.permutation(mine.length);
let cursor = 0;
let epoch = 0;
let stepNr = 0;

const model = buildModel();
const optimizer = tf.train.adam(0.01);

const manager = new FileCheckpointManager({ checkpointDir: options.dir, gangs });
try {
  const { stepNr: resumedStep, state } = await manager.loadLastCheckpoint();
  restoreModelState(model, state.model as StateDict);
  await restoreOptimizerState(optimizer, model, state.optimizer as StateDict);
  const position = state.data as StateDict;
  random.state = position.rng_state as number;
  epoch = position.epoch as number;
  cursor = position.cursor as number;
  order = Int32Array.from((position.order as Tensor).data as Int32Array);
  stepNr = resumedStep;
  log(`resuming from step ${stepNr}`);
} catch (error) {
  if (!(error instanceof CheckpointNotFoundError)) throw error;
  log(`no checkpoint in ${options.dir}: starting fresh on ${dp.size} ranks`);
  await manager.saveModelMetadata({ family: MODEL_FAMILY, config: MODEL_CONFIG });
}

while (stepNr < totalSteps) {
  if (cursor + localBatch > order.length) {
    epoch++;
    order = random.permutation(mine.length);
    cursor = 0;
  }
  const x = new Float32Array(localBatch * features);
  const y = new Float32Array(localBatch);
  for (let i = 0; i < localBatch; i++) {
    const row = mine[order[cursor + i]!]!;
    x.set(data.x.subarray(row * features, (row + 1) * features), i * features);
    y[i] = data.y[row]!;
  }
  cursor += localBatch;
  const loss = await trainStep(x, y);
  stepNr++;
  if (stepNr % logEvery === 0 || stepNr === totalSteps) log(`step ${stepNr}/${totalSteps}  loss ${loss.toFixed(5)}`);

  if (stepNr % checkpointEvery === 0 || stepNr === totalSteps) {
    await manager.beginCheckpoint(stepNr);
    await manager.saveState(
      {
        model: captureModelState(model),
        optimizer: await captureOptimizerState(optimizer, model),
        data: { epoch, cursor, rng_state: random.state, order: Tensor.from(Int32Array.from(order)) },
        step_nr: stepNr,
      },
      // Equal on every rank after the averaged update: written once. `data` is each rank's own.
      { replicatedKeys: ["model", "optimizer", "step_nr"] },
    );
    await manager.commitCheckpoint();
    await manager.keepLastNCheckpoints(2);
    log(`checkpoint step_${stepNr}`);
  }
}
await manager.close();
await closeGangs(gangs);
log(`trained ${totalSteps} steps on ${dp.size} ranks; checkpoints in ${options.dir}/`);

/**
 * One data-parallel step: this rank's gradients of its local mean loss, averaged over the ranks
 * (in rank order, so every rank gets the same bits), applied by every rank's optimizer. Returns
 * the global batch's mean loss.
 */
async function trainStep(x: Float32Array, y: Float32Array): Promise<number> {
  const xs = tf.tensor2d(x, [localBatch, features]);
  const ys = tf.tensor2d(y, [localBatch, 1]);
  const variables = model.trainableWeights.map((w) => w.read() as tf.Variable);
  const { value, grads } = tf.variableGrads(() => tf.losses.meanSquaredError(ys, model.predict(xs) as tf.Tensor) as tf.Scalar, variables);
  const names = variables.map((v) => v.name);
  const sizes = names.map((name) => grads[name]!.size);
  const flat = new Float32Array(sizes.reduce((a, b) => a + b, 0) + 1);
  let at = 0;
  for (const name of names) {
    flat.set(grads[name]!.dataSync(), at);
    at += grads[name]!.size;
  }
  flat[at] = value.dataSync()[0]!;
  tf.dispose([xs, ys, value, ...Object.values(grads)]);

  const sum = await dp.allReduceSum(flat);
  at = 0;
  const averaged = names.map((name, i) => {
    const tensor = tf.tensor(sum.subarray(at, at + sizes[i]!).map((g: number) => g / dp.size), variables[i]!.shape);
    at += sizes[i]!;
    return { name, tensor };
  });
  optimizer.applyGradients(averaged);
  tf.dispose(averaged.map((g) => g.tensor));
  return sum[at]! / dp.size;
}

function parseOptions() {
  try {
    const { values } = parseArgs({
      options: {
        dir: { type: "string", default: "checkpoints-distributed" },
        steps: { type: "string", default: "200" },
        "checkpoint-every": { type: "string", default: "25" },
        "log-every": { type: "string", default: "25" },
        help: { type: "boolean", short: "h", default: false },
      },
    });
    if (values.help) {
      console.log(USAGE);
      process.exit(0);
    }
    return values;
  } catch (error) {
    fail(`${(error as Error).message.split("\n")[0]} (see --help)`);
  }
}

function positiveInt(text: string, name: string): number {
  const value = Number(text);
  if (!Number.isSafeInteger(value) || value < 1) fail(`${name} must be a positive integer, got ${JSON.stringify(text)}`);
  return value;
}

function fail(message: string): never {
  console.error(`train-distributed: ${message}`);
  process.exit(2);
}
