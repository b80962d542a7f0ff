import * as tf from "@tensorflow/tfjs";
import type { CheckpointManager } from "../checkpoint/checkpoint-manager.js";
import { CheckpointLoadError, CheckpointNotFoundError, InvalidArgumentError } from "../errors.js";
import type { StateDict, StateValue } from "../values/py-values.js";
import { CheckpointCallback } from "./checkpoint-callback.js";
import { fitModelView } from "./fit-model-view.js";
import { readFitPosition, type FitPosition } from "./fit-position.js";
import { restoreModelState } from "./model-state.js";
import { restoreOptimizerState } from "./optimizer-state.js";

type FitInput = tf.Tensor | tf.Tensor[] | { [name: string]: tf.Tensor };

/** `fit`'s arguments, minus what resumeFit decides itself. */
export type ResumeFitArgs = Omit<tf.ModelFitArgs, "initialEpoch">;
export type ResumeFitDatasetArgs<T extends tf.TensorContainer> = Omit<tf.ModelFitDatasetArgs<T>, "initialEpoch">;

export interface ResumeFitResult {
  /** The position training resumed from; undefined when there was no checkpoint. */
  resumedFrom: FitPosition | undefined;
  /** The epochs this call trained and their logs (one entry per epoch, as tf.History). */
  epoch: number[];
  history: Record<string, (number | tf.Tensor)[]>;
}

/**
 * Restores the last resumable checkpoint saved by checkpointCallback into `model` and its
 * optimizer, and returns where training stood; undefined when `manager` has no checkpoint.
 *
 * @example
 * const position = await restoreFitCheckpoint(manager, model);
 * if (position !== undefined) checkpoints.startFrom(position); // then fit from position.epoch, skipping position.batch batches
 */
export async function restoreFitCheckpoint(manager: CheckpointManager, model: tf.LayersModel, optimizer: tf.Optimizer | undefined = model.optimizer): Promise<FitPosition | undefined> {
  let loaded: { stepNr: number; state: StateDict };
  try {
    loaded = await manager.loadLastCheckpoint();
  } catch (error) {
    if (error instanceof CheckpointNotFoundError && error.stepNr === undefined) return undefined;
    throw error;
  }
  const { stepNr, state } = loaded;
  const position = readFitPosition(state, stepNr);
  if (optimizer === undefined || optimizer === null) throw new InvalidArgumentError("restoreFitCheckpoint: the model has no optimizer: compile it first, or pass the optimizer");
  const view = fitModelView(model);
  restoreModelState(view, dictAt(state, "model", stepNr));
  await restoreOptimizerState(optimizer, view, dictAt(state, "optimizer", stepNr));
  return position;
}

/**
 * `model.fit` that resumes: restores the last checkpoint of the checkpointCallback in
 * `args.callbacks` (if there is one), trains the rest of the interrupted epoch on the batches not
 * yet trained, then the remaining epochs. With the same data, it ends with the same weights as a
 * run that was never interrupted. The data order must be deterministic, so `shuffle` defaults to
 * false and `true` is refused (tfjs shuffles with an unseeded Math.random): shuffle the data
 * yourself with a seed if you need it.
 *
 * @example
 * const checkpoints = checkpointCallback(manager, { everyBatches: 100, everyEpochs: 1, monitor: "val_loss" });
 * const { resumedFrom } = await resumeFit(model, xs, ys, { epochs: 10, batchSize: 32, validationData: [vx, vy], callbacks: [checkpoints] });
 */
export async function resumeFit(model: tf.LayersModel, x: FitInput, y: FitInput, args: ResumeFitArgs): Promise<ResumeFitResult> {
  const checkpoints = findCheckpointCallback(args, "resumeFit");
  if ((args as tf.ModelFitArgs).initialEpoch !== undefined) throw new InvalidArgumentError("resumeFit: do not pass initialEpoch: resumeFit takes it from the last checkpoint");
  if (args.shuffle !== undefined && args.shuffle !== false) {
    throw new InvalidArgumentError("resumeFit: shuffle must be false: tfjs shuffles with an unseeded Math.random, so a resumed epoch could not replay its order; shuffle the data yourself with a seed");
  }
  const epochs = args.epochs ?? 1;
  const batchSize = args.batchSize ?? 32;
  let fitArgs: tf.ModelFitArgs = { ...args, shuffle: false };
  let [trainX, trainY] = [x, y];
  const created: tf.Tensor[] = [];
  try {
    if (args.validationSplit !== undefined && args.validationSplit > 0 && args.validationData === undefined) {
      // Split once, as tfjs would, so the interrupted epoch's slice keeps the same validation set.
      const samples = sampleCount(x);
      const splitAt = Math.floor(samples * (1 - args.validationSplit));
      [trainX, trainY] = [sliceRows(x, 0, splitAt, created), sliceRows(y, 0, splitAt, created)];
      const { validationSplit: _split, ...rest } = fitArgs;
      fitArgs = { ...rest, validationData: [sliceRows(x, splitAt, samples, created), sliceRows(y, splitAt, samples, created)] as [tf.Tensor | tf.Tensor[], tf.Tensor | tf.Tensor[]] };
    }
    const batchesPerEpoch = Math.ceil(sampleCount(trainX) / batchSize);
    const position = await restoreFitCheckpoint(checkpoints.manager, model, checkpointsOptimizer(checkpoints, model));
    const runs: tf.History[] = [];
    let nextEpoch = 0;
    if (position !== undefined) {
      if (position.batch > batchesPerEpoch) {
        throw new CheckpointLoadError(position.stepNr, `checkpoint ${position.stepNr} was saved after batch ${position.batch} of epoch ${position.epoch}, but this data has ${batchesPerEpoch} batches per epoch: is it the same data and batchSize?`);
      }
      checkpoints.startFrom(position);
      nextEpoch = position.epoch;
      if (position.batch === batchesPerEpoch) {
        nextEpoch++; // every batch of that epoch was trained
      } else if (position.batch > 0 && position.epoch < epochs) {
        // The interrupted epoch, on the batches it had not trained: same batch boundaries, since
        // the slice starts on one.
        const start = position.batch * batchSize;
        const restX = sliceRows(trainX, start, sampleCount(trainX), created);
        const restY = sliceRows(trainY, start, sampleCount(trainY), created);
        runs.push(await model.fit(restX, restY, { ...fitArgs, initialEpoch: position.epoch, epochs: position.epoch + 1 }));
        nextEpoch++;
      }
    }
    if (nextEpoch < epochs) runs.push(await model.fit(trainX, trainY, { ...fitArgs, initialEpoch: nextEpoch, epochs }));
    return mergeHistories(position, runs);
  } finally {
    tf.dispose(created);
  }
}

/**
 * `model.fitDataset` that resumes, as resumeFit does: the interrupted epoch is trained on
 * `dataset.skip(batches already trained)`. The dataset must yield the same batches in the same
 * order every time it is iterated (no shuffle, or a seeded shuffle with reshuffleEachIteration
 * false). With `batchesPerEpoch`, tfjs reads one stream across epochs: the stream is skipped by
 * the global step.
 */
export async function resumeFitDataset<T extends tf.TensorContainer>(model: tf.LayersModel, dataset: tf.data.Dataset<T>, args: ResumeFitDatasetArgs<T>): Promise<ResumeFitResult> {
  const checkpoints = findCheckpointCallback(args, "resumeFitDataset");
  if ((args as tf.ModelFitDatasetArgs<T>).initialEpoch !== undefined) throw new InvalidArgumentError("resumeFitDataset: do not pass initialEpoch: it is taken from the last checkpoint");
  const position = await restoreFitCheckpoint(checkpoints.manager, model, checkpointsOptimizer(checkpoints, model));
  const runs: tf.History[] = [];
  let nextEpoch = 0;
  const perEpoch = args.batchesPerEpoch;
  // With batchesPerEpoch the stream continues across epochs: `consumed` batches of it are trained.
  let consumed = 0;
  if (position !== undefined) {
    checkpoints.startFrom(position);
    nextEpoch = position.epoch;
    consumed = position.stepNr;
    if (perEpoch !== undefined && position.batch >= perEpoch) {
      nextEpoch++;
    } else if (position.batch > 0 && position.epoch < args.epochs) {
      const rest = perEpoch === undefined ? dataset.skip(position.batch) : dataset.skip(consumed);
      const partial: tf.ModelFitDatasetArgs<T> = { ...args, initialEpoch: position.epoch, epochs: position.epoch + 1 };
      if (perEpoch !== undefined) partial.batchesPerEpoch = perEpoch - position.batch;
      runs.push(await model.fitDataset(rest, partial));
      consumed += perEpoch === undefined ? 0 : perEpoch - position.batch;
      nextEpoch++;
    }
  }
  if (nextEpoch < args.epochs) {
    runs.push(await model.fitDataset(perEpoch === undefined ? dataset : dataset.skip(consumed), { ...args, initialEpoch: nextEpoch }));
  }
  return mergeHistories(position, runs);
}

function findCheckpointCallback(args: { callbacks?: unknown }, caller: string): CheckpointCallback {
  const callbacks = Array.isArray(args.callbacks) ? args.callbacks : [args.callbacks];
  const found = callbacks.filter((callback): callback is CheckpointCallback => callback instanceof CheckpointCallback);
  if (found.length !== 1) {
    throw new InvalidArgumentError(`${caller}: args.callbacks must hold exactly one checkpointCallback (it has ${found.length}): resuming restores from its manager and continues its step count`);
  }
  return found[0]!;
}

function checkpointsOptimizer(checkpoints: CheckpointCallback, model: tf.LayersModel): tf.Optimizer | undefined {
  return checkpoints.givenOptimizer ?? model.optimizer;
}

function dictAt(state: StateDict, key: string, stepNr: number): StateDict {
  const value: StateValue | undefined = state[key];
  if (typeof value !== "object" || value === null || value instanceof Map || Array.isArray(value)) {
    throw new CheckpointLoadError(stepNr, `checkpoint ${stepNr} has no "${key}" state dict`);
  }
  return value as StateDict;
}

function tensorsOf(input: FitInput): tf.Tensor[] {
  if (input instanceof tf.Tensor) return [input];
  if (Array.isArray(input)) return input;
  return Object.values(input);
}

function sampleCount(input: FitInput): number {
  const first = tensorsOf(input)[0];
  if (first === undefined || first.shape.length === 0) throw new InvalidArgumentError("resumeFit: x and y must be tensors with a batch dimension");
  return first.shape[0]!;
}

/** Rows [start, end) of every tensor of `input`, in the same form (tensor, array or dict). */
function sliceRows(input: FitInput, start: number, end: number, created: tf.Tensor[]): FitInput {
  const slice = (tensor: tf.Tensor): tf.Tensor => {
    const part = tensor.slice(start, end - start);
    created.push(part);
    return part;
  };
  if (input instanceof tf.Tensor) return slice(input);
  if (Array.isArray(input)) return input.map(slice);
  return Object.fromEntries(Object.entries(input).map(([name, tensor]) => [name, slice(tensor)]));
}

function mergeHistories(resumedFrom: FitPosition | undefined, runs: tf.History[]): ResumeFitResult {
  const result: ResumeFitResult = { resumedFrom, epoch: [], history: {} };
  for (const run of runs) {
    result.epoch.push(...run.epoch);
    for (const [key, values] of Object.entries(run.history)) (result.history[key] ??= []).push(...values);
  }
  return result;
}
