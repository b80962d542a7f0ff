import * as tf from "@tensorflow/tfjs";
import type { CheckpointManager, RetainOptions } from "../checkpoint/checkpoint-manager.js";
import { CheckpointSaveError, InvalidArgumentError } from "../errors.js";
import type { StateDict } from "../values/py-values.js";
import { fitModelView } from "./fit-model-view.js";
import { FIT_POSITION_KEY, fitPositionState, type FitPosition } from "./fit-position.js";
import { captureModelState } from "./model-state.js";
import { captureOptimizerState } from "./optimizer-state.js";

export interface CheckpointCallbackOptions {
  /** Save at the end of every N-th epoch (counted from epoch 0, so resumed runs keep the schedule). */
  everyEpochs?: number;
  /**
   * Save after every N-th batch, by global step (batches since the run started). A save that
   * falls on the last batch of an epoch is made at the epoch's end instead, once its validation
   * metrics exist. At least one of everyEpochs and everyBatches is required.
   */
  everyBatches?: number;
  /**
   * The metric saved as the checkpoint's score, a name from fit's logs ("val_loss", "loss",
   * "val_acc", …); checked against fit's metrics when training begins. Validation metrics exist
   * only at epoch ends: a save after a batch gets no score then.
   */
  monitor?: string;
  /** Whether a lower or higher `monitor` is better. "auto" (default): "max" for accuracy-like names (acc, auc, precision, recall, f1), else "min", as Keras. */
  mode?: "min" | "max" | "auto";
  /** After each save, keep the last N resumable checkpoints (with keepBest: those either rule keeps). */
  keepLast?: number;
  /** After each save, keep the N best-scoring checkpoints (and always the last); needs `monitor`. */
  keepBest?: number;
  /** Strip pruned checkpoints to their model files instead of deleting them (default false). */
  preserveModel?: boolean;
  /**
   * Write each checkpoint in the background (the manager's background save mode; default false):
   * training goes on while files are written. A failure is raised by the next save or when
   * training ends, and `fit` rejects with it; `fit` resolves only once every checkpoint is durable.
   */
  background?: boolean;
  /** The optimizer to save (default: the compiled model's). */
  optimizer?: tf.Optimizer;
  /**
   * Called after each save is committed (for a background save: handed to the background writer)
   * and pruned, e.g. to log it.
   */
  onSave?: (saved: { stepNr: number; position: FitPosition; score: number | undefined }) => void;
  /** Where warnings go (a metric that is NaN or infinite at a save); default process.emitWarning. */
  onWarning?: (message: string) => void;
}

const OPTION_NAMES = new Set(["everyEpochs", "everyBatches", "monitor", "mode", "keepLast", "keepBest", "preserveModel", "background", "optimizer", "onSave", "onWarning"]);

/** What a log value can be: tfjs hands callbacks numbers or (not yet read) scalars. */
type LogValue = number | tf.Tensor | undefined;
type Logs = Record<string, LogValue>;

/**
 * A TF.js callback that saves model weights, optimizer state and the training position as
 * checkpoints during `fit` / `fitDataset`. Made by checkpointCallback(); see there.
 */
export class CheckpointCallback extends tf.Callback {
  readonly manager: CheckpointManager;
  private readonly options: Readonly<CheckpointCallbackOptions>;
  private readonly lowerBetter: boolean;
  private readonly warn: (message: string) => void;
  private stepNr = 0;
  private epoch = 0;
  /** Batches done in the current epoch, counting those a resumed run skipped. */
  private batch = 0;
  /** The position a resumed run starts at, used by the first epoch that begins. */
  private resumeAt: FitPosition | undefined;
  /** A batch save that fell on an epoch's last batch, made at the epoch's end. */
  private deferredSave = false;
  /** Background mode: retention for the last save runs once that save is durable. */
  private retentionPending = false;
  /** Unscored checkpoints saved after a batch: with keepBest, pruned once a newer one exists. */
  private unscoredSteps: number[] = [];

  constructor(manager: CheckpointManager, options: CheckpointCallbackOptions) {
    super();
    if (typeof manager !== "object" || manager === null || typeof (manager as Partial<CheckpointManager>).beginCheckpoint !== "function") {
      throw new InvalidArgumentError("checkpointCallback: the first argument must be a checkpoint manager (e.g. new FileCheckpointManager({ checkpointDir }))");
    }
    this.manager = manager;
    this.options = checkOptions(options);
    this.lowerBetter = lowerIsBetter(this.options);
    this.warn = this.options.onWarning ?? ((message) => process.emitWarning(message, "CheckpointWarning"));
    // tfjs wraps every element of a callbacks array whose first element is a plain object into a
    // CustomCallback that calls these methods unbound: bound, they can at least say what is wrong.
    this.onTrainBegin = this.onTrainBegin.bind(this);
    this.onEpochBegin = this.onEpochBegin.bind(this);
    this.onBatchEnd = this.onBatchEnd.bind(this);
    this.onEpochEnd = this.onEpochEnd.bind(this);
    this.onTrainEnd = this.onTrainEnd.bind(this);
  }

  /** The optimizer given in the options (undefined: the compiled model's). */
  get givenOptimizer(): tf.Optimizer | undefined {
    return this.options.optimizer;
  }

  /** Where training stands: the next batch, and the batches trained so far (the step number). */
  get position(): FitPosition {
    return { epoch: this.epoch, batch: this.batch, stepNr: this.stepNr };
  }

  /**
   * Continues counting from a restored position: the next epoch to begin is `position.epoch`,
   * of which `position.batch` batches are already done. resumeFit calls this.
   */
  startFrom(position: FitPosition): void {
    this.stepNr = position.stepNr;
    this.epoch = position.epoch;
    this.batch = position.batch;
    this.resumeAt = position;
    if (position.batch > 0) this.unscoredSteps.push(position.stepNr); // pruned only if it has no score
  }

  override async onTrainBegin(): Promise<void> {
    if (!(this.model instanceof tf.LayersModel)) {
      throw new InvalidArgumentError(
        "checkpointCallback was not given the model: tfjs turns a callbacks array whose first element is a plain object into plain-object callbacks; put the checkpoint callback first, or wrap the plain objects in new tf.CustomCallback(...)",
      );
    }
    this.optimizer(); // fails now, before any training, if there is none
    const monitor = this.options.monitor;
    const metrics = (this.params as { metrics?: unknown } | undefined)?.metrics;
    if (monitor !== undefined && Array.isArray(metrics) && !metrics.includes(monitor)) {
      const hint = monitor.startsWith("val_") ? " (validation metrics need validationData or validationSplit)" : "";
      throw new InvalidArgumentError(`checkpointCallback: monitor "${monitor}" is not one of this fit's metrics: ${metrics.join(", ")}${hint}`);
    }
  }

  override async onEpochBegin(epoch: number): Promise<void> {
    const resumed = this.resumeAt;
    this.resumeAt = undefined;
    this.epoch = epoch;
    this.batch = resumed !== undefined && resumed.epoch === epoch ? resumed.batch : 0;
    this.deferredSave = false;
  }

  override async onBatchEnd(batchIndex: number, logs?: Logs): Promise<void> {
    this.batch++;
    this.stepNr++;
    const every = this.options.everyBatches;
    if (every === undefined || this.stepNr % every !== 0) return;
    if (this.isLastBatchOfEpoch(batchIndex)) {
      this.deferredSave = true;
      return;
    }
    await this.save({ epoch: this.epoch, batch: this.batch, stepNr: this.stepNr }, logs, "batch");
  }

  override async onEpochEnd(epoch: number, logs?: Logs): Promise<void> {
    const every = this.options.everyEpochs;
    const due = this.deferredSave || (every !== undefined && (epoch + 1) % every === 0);
    this.deferredSave = false;
    this.epoch = epoch + 1;
    this.batch = 0;
    if (due) await this.save({ epoch: epoch + 1, batch: 0, stepNr: this.stepNr }, logs, "epoch");
  }

  /** Waits for a background save (raising its error, so `fit` rejects) and applies its retention. */
  override async onTrainEnd(): Promise<void> {
    await this.manager.waitForPendingSave();
    if (this.retentionPending) await this.retain();
  }

  private async save(position: FitPosition, logs: Logs | undefined, at: "batch" | "epoch"): Promise<void> {
    const model = fitModelView(this.model);
    const score = await this.score(logs, at, position.stepNr);
    // Captured before the checkpoint opens: a model or optimizer that cannot be captured leaves no
    // half-open checkpoint behind.
    const state: StateDict = {
      model: captureModelState(model),
      optimizer: await captureOptimizerState(this.optimizer(), model),
      [FIT_POSITION_KEY]: fitPositionState(position),
      step_nr: position.stepNr,
    };
    const background = this.options.background === true;
    // Retention of the previous background save first: it waits for that save and raises its error.
    if (this.retentionPending) await this.retain();
    await this.manager.beginCheckpoint(position.stepNr, background ? { background: true } : {});
    await this.manager.saveState(state);
    if (score !== undefined) await this.manager.saveScore(score, { lowerBetter: this.lowerBetter });
    await this.manager.commitCheckpoint();
    if (score === undefined && at === "batch") this.unscoredSteps.push(position.stepNr);
    if (this.options.keepLast !== undefined || this.options.keepBest !== undefined) {
      if (background) this.retentionPending = true;
      else await this.retain();
    }
    this.options.onSave?.({ stepNr: position.stepNr, position, score });
  }

  private async retain(): Promise<void> {
    this.retentionPending = false;
    const { keepLast, keepBest, preserveModel } = this.options;
    const rules: RetainOptions = { keepLast, keepBest };
    if (preserveModel !== undefined) rules.preserveModel = preserveModel;
    await this.manager.retain(rules);
    if (keepBest !== undefined) await this.pruneUnscored();
  }

  /**
   * keepBest keeps every unscored checkpoint (nothing says it is worse), so the batch saves of a
   * run monitoring a validation metric would pile up. They exist to resume from: once newer
   * checkpoints exist (and keepLast does not keep them), they are deleted, or stripped to their
   * model with preserveModel.
   */
  private async pruneUnscored(): Promise<void> {
    if (this.unscoredSteps.length === 0) return;
    const checkpoints = await this.manager.listCheckpoints();
    const recent = new Set(checkpoints.filter((c) => !c.modelOnly).map((c) => c.stepNr).sort((a, b) => b - a).slice(0, this.options.keepLast ?? 1));
    const remaining: number[] = [];
    for (const stepNr of this.unscoredSteps) {
      const info = checkpoints.find((c) => c.stepNr === stepNr);
      if (info === undefined || info.modelOnly || info.score !== undefined) continue;
      if (recent.has(stepNr)) {
        remaining.push(stepNr);
        continue;
      }
      await this.manager.deleteCheckpoint(stepNr, { missingOk: true, preserveModel: this.options.preserveModel ?? false });
    }
    this.unscoredSteps = remaining;
  }

  /** The monitored metric's value in `logs`, or undefined for an unscored checkpoint. */
  private async score(logs: Logs | undefined, at: "batch" | "epoch", stepNr: number): Promise<number | undefined> {
    const monitor = this.options.monitor;
    if (monitor === undefined) return undefined;
    const value = logs?.[monitor];
    if (value === undefined) {
      // Validation metrics are computed only at epoch ends: a batch save has none (documented).
      if (at === "batch") return undefined;
      throw new CheckpointSaveError(stepNr, `checkpoint ${stepNr}: the monitored metric "${monitor}" is not in the epoch's logs (${Object.keys(logs ?? {}).join(", ") || "none"})`);
    }
    const number = typeof value === "number" ? value : (await value.data())[0]!;
    if (!Number.isFinite(number)) {
      this.warn(`checkpoint ${stepNr} is saved without a score: ${monitor} is ${number}`);
      return undefined;
    }
    return number;
  }

  private optimizer(): tf.Optimizer {
    const optimizer = this.options.optimizer ?? (this.model as tf.LayersModel | undefined)?.optimizer;
    if (optimizer === undefined || optimizer === null) throw new InvalidArgumentError("checkpointCallback: the model has no optimizer: compile it first, or pass options.optimizer");
    return optimizer;
  }

  private isLastBatchOfEpoch(batchIndex: number): boolean {
    const params = (this.params ?? {}) as { samples?: unknown; batchSize?: unknown; steps?: unknown };
    if (typeof params.samples === "number" && typeof params.batchSize === "number") return batchIndex === Math.ceil(params.samples / params.batchSize) - 1;
    if (typeof params.steps === "number") return batchIndex === params.steps - 1;
    return false; // a dataset of unknown length: the save is made after the batch
  }
}

/**
 * A TF.js callback that checkpoints a `fit` / `fitDataset` run through `manager`: model weights,
 * optimizer state and the training position (`fit_position`: epoch, batch, step_nr), at step
 * numbers that count batches since the run began. A failed save rejects `fit` with its error.
 * Resume with resumeFit (or restoreFitCheckpoint and `startFrom`).
 *
 * @example
 * const checkpoints = checkpointCallback(manager, { everyEpochs: 1, monitor: "val_loss", keepBest: 2, keepLast: 1 });
 * await resumeFit(model, xs, ys, { epochs: 20, batchSize: 32, validationData: [valXs, valYs], callbacks: [checkpoints] });
 */
export function checkpointCallback(manager: CheckpointManager, options: CheckpointCallbackOptions): CheckpointCallback {
  return new CheckpointCallback(manager, options);
}

function checkOptions(options: CheckpointCallbackOptions): CheckpointCallbackOptions {
  if (typeof options !== "object" || options === null) throw new InvalidArgumentError("checkpointCallback: options must be an object, e.g. { everyEpochs: 1 }");
  const unknown = Object.keys(options).filter((key) => !OPTION_NAMES.has(key));
  if (unknown.length > 0) throw new InvalidArgumentError(`checkpointCallback: unknown option ${unknown.join(", ")} (known: ${[...OPTION_NAMES].join(", ")})`);
  for (const name of ["everyEpochs", "everyBatches", "keepLast", "keepBest"] as const) {
    const value = options[name];
    if (value !== undefined && !(Number.isSafeInteger(value) && value > 0)) throw new InvalidArgumentError(`checkpointCallback: ${name} must be a positive integer, got ${String(value)}`);
  }
  if (options.everyEpochs === undefined && options.everyBatches === undefined) throw new InvalidArgumentError("checkpointCallback: say when to save: everyEpochs, everyBatches or both");
  if (options.monitor !== undefined && (typeof options.monitor !== "string" || options.monitor === "")) throw new InvalidArgumentError(`checkpointCallback: monitor must be a metric name such as "val_loss", got ${String(options.monitor)}`);
  if (options.mode !== undefined && !["min", "max", "auto"].includes(options.mode)) throw new InvalidArgumentError(`checkpointCallback: mode must be "min", "max" or "auto", got ${String(options.mode)}`);
  if (options.mode !== undefined && options.monitor === undefined) throw new InvalidArgumentError("checkpointCallback: mode needs monitor (the metric it applies to)");
  if (options.keepBest !== undefined && options.monitor === undefined) throw new InvalidArgumentError("checkpointCallback: keepBest needs monitor (the metric that makes a checkpoint best)");
  for (const name of ["preserveModel", "background"] as const) {
    const value = options[name];
    if (value !== undefined && typeof value !== "boolean") throw new InvalidArgumentError(`checkpointCallback: ${name} must be true or false, got ${String(value)}`);
  }
  if (options.preserveModel !== undefined && options.keepLast === undefined && options.keepBest === undefined) throw new InvalidArgumentError("checkpointCallback: preserveModel applies to retention: give keepLast or keepBest too");
  if (options.optimizer !== undefined && !(options.optimizer instanceof tf.Optimizer)) throw new InvalidArgumentError("checkpointCallback: optimizer must be a tf.Optimizer");
  for (const name of ["onSave", "onWarning"] as const) {
    if (options[name] !== undefined && typeof options[name] !== "function") throw new InvalidArgumentError(`checkpointCallback: ${name} must be a function`);
  }
  return { ...options };
}

/** Keras's "auto": accuracy-like metrics are better higher, everything else (losses, errors) lower. */
function lowerIsBetter(options: CheckpointCallbackOptions): boolean {
  if (options.mode === "min") return true;
  if (options.mode === "max") return false;
  return !/acc|auc|precision|recall|f1/i.test(options.monitor ?? "");
}
