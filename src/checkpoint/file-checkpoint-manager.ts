import { CheckpointNotFoundError, InvalidArgumentError } from "../errors.js";
import { fakeGangs } from "../gang/fake-gang.js";
import type { Gangs } from "../gang/gang.js";
import type { FileSystem } from "../fs/file-system.js";
import { fileSystemForPath } from "../fs/file-system-for-path.js";
import { joinPath } from "../fs/paths.js";
import type { TensorDumper, TensorLoader } from "../io/tensor-io.js";
import { TorchTensorDumper, TorchTensorLoader } from "../io/torch-tensor-io.js";
import { checkPlainData } from "../values/plain-data.js";
import type { StateDict, StateValue } from "../values/py-values.js";
import { listCheckpoints, type CheckpointInfo } from "./checkpoint-directory.js";
import type {
  BeginOptions,
  CheckpointManager,
  DeleteOptions,
  ListOptions,
  LoadModelOptions,
  LoadOptions,
  ModelMetadata,
  RetainOptions,
  RetentionOptions,
  RetentionReport,
  RetentionResult,
  SaveScoreOptions,
  SaveStateOptions,
} from "./checkpoint-manager.js";
import { CheckpointPruner, runDirectoryStep } from "./checkpoint-pruner.js";
import { CheckpointReader } from "./checkpoint-reader.js";
import { CheckpointWriter } from "./checkpoint-writer.js";
import { commitProtocolFor } from "./commit-protocol.js";
import { DirectoryOwner } from "./directory-owner.js";
import { MODEL_CARD_FILE } from "./layout.js";
import { OneCallAtATime, checkStepNr, isRoot, type CheckpointProgress, type ManagerContext } from "./manager-context.js";
import { bestStep, checkRetentionRules, type RetentionRules } from "./retention.js";
import type { RetentionPlanOptions } from "./retention-plan.js";

export type { CheckpointProgress } from "./manager-context.js";

export interface FileCheckpointManagerOptions {
  /** The checkpoint directory (created on first save); a relative path is resolved once, here. */
  checkpointDir: string;
  /** The job's gangs; default: a single process. */
  gangs?: Gangs;
  /** Default: the local disk. */
  fileSystem?: FileSystem;
  /** Default: PyTorch `.pt` files. */
  tensorLoader?: TensorLoader;
  tensorDumper?: TensorDumper;
  /** Check each file read against the sizes and CRC-32s in `manifest.json` (default true). */
  verifyChecksums?: boolean;
  /** Called as tensor files are written and read, e.g. to show a progress bar. */
  onProgress?: (event: CheckpointProgress) => void;
  /**
   * Told once per checkpoint of a problem that leaves it usable (a score.txt holding no number:
   * that step is unscored). Default: `process.emitWarning`.
   */
  onWarning?: (message: string) => void;
}

/**
 * Saves, loads and prunes training checkpoints in a directory, in fairseq2's layout, as PyTorch
 * `.pt` files. Saving is a transaction: files go to `step_<N>.tmp/`, and `commitCheckpoint`
 * writes `manifest.json` and renames the directory into place. With several processes, every
 * rank calls the same methods in the same order; an error on any rank is raised on all of them.
 *
 * The work is done by its parts: a writer (the saving transaction, background saves), a reader
 * (loading, checked against the manifest) and a pruner (deletion and retention).
 *
 * @example
 * const manager = new FileCheckpointManager({ checkpointDir: "checkpoints" });
 * await manager.beginCheckpoint(1000);
 * await manager.saveState({ model, optimizer, step_nr: 1000, epoch: 5 }, { replicatedKeys: ["epoch"] });
 * await manager.saveScore(validLoss, { lowerBetter: true });
 * await manager.commitCheckpoint();
 * const { stepNr, state } = await manager.loadLastCheckpoint();
 */
export class FileCheckpointManager implements CheckpointManager {
  readonly checkpointDir: string;
  private readonly context: ManagerContext;
  private readonly writer: CheckpointWriter;
  private readonly reader: CheckpointReader;
  private readonly pruner: CheckpointPruner;
  private readonly onWarning: (message: string) => void;
  private readonly warned = new Set<string>();

  constructor(options: FileCheckpointManagerOptions) {
    if (typeof options?.checkpointDir !== "string" || options.checkpointDir === "") {
      throw new InvalidArgumentError("checkpointDir must be a non-empty path");
    }
    const gangs = options.gangs ?? fakeGangs();
    const { root, dp, tp } = gangs;
    if (root.size !== dp.size * tp.size) {
      throw new InvalidArgumentError(`gangs do not fit together: root has ${root.size} ranks but dp × tp is ${dp.size} × ${tp.size}`);
    }
    const fileSystem = options.fileSystem ?? fileSystemForPath(options.checkpointDir);
    // Once, here: a relative path read again at each call would move with process.chdir().
    this.checkpointDir = fileSystem.resolvePath?.(options.checkpointDir) ?? options.checkpointDir;
    const calls = new OneCallAtATime();
    const commit = commitProtocolFor(fileSystem);
    this.context = {
      checkpointDir: this.checkpointDir,
      gangs,
      fileSystem,
      loader: options.tensorLoader ?? new TorchTensorLoader({ fileSystem }),
      dumper: options.tensorDumper ?? new TorchTensorDumper({ fileSystem }),
      verifyChecksums: options.verifyChecksums ?? true,
      owner: new DirectoryOwner(fileSystem, this.checkpointDir, commit),
      commit,
      onProgress: options.onProgress,
      exclusive: (work) => calls.run(work),
    };
    this.writer = new CheckpointWriter(this.context);
    this.reader = new CheckpointReader(this.context);
    this.pruner = new CheckpointPruner(this.context);
    this.onWarning = options.onWarning ?? ((message) => process.emitWarning(message, "CheckpointWarning"));
  }

  // ---------------------------------------------------------------- saving

  /**
   * Opens checkpoint `stepNr`. A committed checkpoint of that step stays until this one commits.
   * With `background: true`, each save call returns once it has copied what it was given, and the
   * files are written and committed in the background (see BeginOptions).
   */
  async beginCheckpoint(stepNr: number, options: BeginOptions = {}): Promise<void> {
    checkStepNr(stepNr);
    await this.writer.blocking(() => this.writer.begin(stepNr, options));
  }

  /** Writes this rank's part of `state` (see SaveStateOptions for the split). */
  async saveState(state: StateDict, options: SaveStateOptions = {}): Promise<void> {
    await this.writer.blocking(() => this.writer.saveState(state, options));
  }

  /** Saves `metadata.pt` (any state value), written by rank 0. */
  async saveMetadata(metadata: StateValue): Promise<void> {
    await this.writer.blocking(() => this.writer.saveMetadata(metadata));
  }

  /** Saves the checkpoint's score (`score.txt`); retention keeps the best ones. */
  async saveScore(score: number, options: SaveScoreOptions = {}): Promise<void> {
    await this.writer.blocking(() => this.writer.saveScore(score, options));
  }

  /**
   * Saves a full (unsharded) copy of a model whose state `saveState` keeps sharded across
   * data-parallel ranks, as `model.pt`, so the checkpoint can be loaded as a model. Pass the
   * consolidated state dict; dp rank 0 writes it.
   */
  async saveConsolidatedFsdpModel(model: StateDict): Promise<void> {
    await this.writer.blocking(() => this.writer.saveConsolidatedFsdpModel(model));
  }

  /**
   * Makes the checkpoint visible, atomically: the manifest is written, then the directory renamed.
   * For a background checkpoint this returns at once; `waitForPendingSave()` tells how it ended.
   */
  async commitCheckpoint(): Promise<void> {
    await this.writer.commit();
  }

  /**
   * Resolves when the checkpoint being written in the background is committed; rejects with its
   * error if it failed (the error is then not raised again by the next call).
   */
  async waitForPendingSave(): Promise<void> {
    await this.writer.pending.settle();
  }

  /** True while a committed background checkpoint is still being written. */
  get hasPendingSave(): boolean {
    return this.writer.pending.busy;
  }

  /** Drops the open checkpoint; the committed ones are untouched. Does nothing when none is open. */
  async abortCheckpoint(): Promise<void> {
    await this.writer.abort();
  }

  // ---------------------------------------------------------------- loading

  /** The state saved at `stepNr`, merged back from the model, replicated and rank files. */
  async loadCheckpoint(stepNr: number, options: LoadOptions = {}): Promise<StateDict> {
    checkStepNr(stepNr);
    await this.writer.pending.raiseIfFailed();
    return this.reader.loadCheckpoint(stepNr, options);
  }

  /** The last resumable checkpoint; CheckpointNotFoundError (stepNr undefined) when there is none. */
  async loadLastCheckpoint(options: LoadOptions = {}): Promise<{ stepNr: number; state: StateDict }> {
    const stepNr = await this.getLastStepNumber();
    if (stepNr === undefined) throw new CheckpointNotFoundError(undefined, `no checkpoint to resume from in ${this.checkpointDir}`);
    return { stepNr, state: await this.loadCheckpoint(stepNr, options) };
  }

  /** `metadata.pt` of a checkpoint, or null when it was saved without one. */
  async loadMetadata(stepNr: number): Promise<StateValue | null> {
    checkStepNr(stepNr);
    return this.reader.loadMetadata(stepNr);
  }

  /**
   * The model's state dict from a checkpoint's model file only (never optimizer or rank state):
   * the last checkpoint by default, model-only ones included.
   */
  async loadModel(stepNr?: number, options: LoadModelOptions = {}): Promise<StateDict> {
    if (stepNr !== undefined) checkStepNr(stepNr);
    const step = stepNr ?? (await this.getLastStepNumber({ includeModelOnly: true }));
    if (step === undefined) throw new CheckpointNotFoundError(undefined, `no checkpoint in ${this.checkpointDir}`);
    return this.reader.loadModel(step, options);
  }

  // ---------------------------------------------------------------- queries

  /** Every committed checkpoint, damaged ones included (with `damaged` saying why). */
  async listCheckpoints(): Promise<CheckpointInfo[]> {
    await this.writer.pending.raiseIfFailed();
    await this.pruner.deletion.raiseIfFailed();
    const all = await listCheckpoints(this.context.fileSystem, this.checkpointDir);
    for (const { warning } of all) {
      if (warning === undefined || this.warned.has(warning)) continue;
      this.warned.add(warning);
      this.onWarning(warning);
    }
    return all;
  }

  /**
   * Committed step numbers, ascending; resumable ones only unless `includeModelOnly`. Damaged
   * checkpoints (unreadable manifest or directory) are left out: `listCheckpoints()` shows them.
   */
  async getStepNumbers(options: ListOptions = {}): Promise<number[]> {
    const all = await this.soundCheckpoints();
    return all.filter((c) => options.includeModelOnly === true || !c.modelOnly).map((c) => c.stepNr);
  }

  async hasCheckpoint(stepNr?: number, options: ListOptions = {}): Promise<boolean> {
    if (stepNr !== undefined) checkStepNr(stepNr);
    const steps = await this.getStepNumbers(options);
    return stepNr === undefined ? steps.length > 0 : steps.includes(stepNr);
  }

  async getLastStepNumber(options: ListOptions = {}): Promise<number | undefined> {
    return (await this.getStepNumbers(options)).at(-1);
  }

  /** The step with the best score (model-only checkpoints included), or undefined when none has one. */
  async getBestStepNumber(): Promise<number | undefined> {
    return bestStep(await this.soundCheckpoints());
  }

  /** The scores of all scored checkpoints as stored (higher is better), by step. */
  async getScores(): Promise<{ stepNr: number; score: number }[]> {
    return (await this.soundCheckpoints()).flatMap((c) => (c.score === undefined ? [] : [{ stepNr: c.stepNr, score: c.score }]));
  }

  // ---------------------------------------------------------------- retention

  /** Deletes a committed checkpoint, or with `preserveModel` keeps only its model files. */
  async deleteCheckpoint(stepNr: number, options: DeleteOptions = {}): Promise<void> {
    checkStepNr(stepNr);
    await this.context.exclusive(async () => {
      await this.writer.pending.settle();
      await this.pruner.deleteCheckpoint(stepNr, options);
    });
  }

  /** Deletes all but the last `n` resumable checkpoints (or strips them to the model). */
  async keepLastNCheckpoints(n: number, options: RetentionOptions = {}): Promise<RetentionResult> {
    checkCount(n);
    const { deleted, stripped } = await this.applyRetention("keepLastNCheckpoints", { keepLast: n }, options);
    return { deleted, stripped };
  }

  /**
   * Keeps the `n` best-scoring checkpoints and always the last resumable one; checkpoints without
   * a score are never deleted by this rule.
   */
  async keepBestNCheckpoints(n: number, options: RetentionOptions = {}): Promise<RetentionResult> {
    checkCount(n);
    const { deleted, stripped } = await this.applyRetention("keepBestNCheckpoints", { keepBest: n }, options);
    return { deleted, stripped };
  }

  /**
   * Applies several retention rules at once (see RetentionRules): a checkpoint survives when any
   * rule keeps it, the last resumable checkpoint always survives, milestones (`keepEvery`)
   * survive whatever the other rules say. The report says, per step, what was done and which
   * rules kept it. With `background`, files are removed off the training path (RetentionOptions).
   *
   * @example
   * await manager.retain({ keepLast: 3, keepBest: 2, keepEvery: 10_000, keepOnePer: "6h", background: true });
   */
  async retain(options: RetainOptions): Promise<RetentionReport> {
    const { keepLast, keepBest, keepEvery, keepOnePer } = options ?? {};
    const rules = { keepLast, keepBest, keepEvery, keepOnePer };
    checkRetentionRules(rules);
    return this.applyRetention("retain", rules, options);
  }

  /** Resolves when retention's background deletes are done; rejects with their error (raised once). */
  async waitForPendingDeletions(): Promise<void> {
    await this.pruner.deletion.settle();
  }

  /** True while retention's deletes run in the background. */
  get hasPendingDeletions(): boolean {
    return this.pruner.deletion.busy;
  }

  /** Writes `model.yaml`, the model card: family, config, and the number of TP shards. */
  async saveModelMetadata(metadata: ModelMetadata): Promise<void> {
    if (typeof metadata?.family !== "string" || metadata.family === "") throw new InvalidArgumentError("saveModelMetadata needs a non-empty family");
    checkPlainData(metadata.config, "config");
    const { context } = this;
    await context.exclusive(async () => {
      await this.writer.pending.settle();
      await runDirectoryStep(context, "saveModelMetadata", undefined, async () => {
        if (!isRoot(context)) return;
        await context.owner.own();
        const card: Record<string, unknown> = { model_family: metadata.family };
        if (metadata.config !== undefined) card.model_config = metadata.config;
        if (context.gangs.tp.size > 1) card.num_shards = context.gangs.tp.size;
        // Loaded here, its one use: 72 modules that every import of the library (and the CLI's start) would pay for.
        const { stringify: toYaml } = await import("yaml");
        await context.fileSystem.writeFile(joinPath(this.checkpointDir, MODEL_CARD_FILE), new TextEncoder().encode(toYaml(card)));
      });
    });
  }

  /**
   * Waits for a background save and background deletes, drops an open checkpoint, releases the
   * lock; raises what failed in the background.
   */
  async close(): Promise<void> {
    try {
      await this.writer.close();
    } finally {
      try {
        // Before the lock goes: the next owner's recovery would remove the same directories.
        await this.pruner.deletion.settle();
      } finally {
        await this.context.owner.release();
      }
    }
  }

  // ---------------------------------------------------------------- internals

  private async soundCheckpoints(): Promise<CheckpointInfo[]> {
    return (await this.listCheckpoints()).filter((c) => c.damaged === undefined);
  }

  private async applyRetention(op: string, rules: RetentionRules, options: RetentionOptions): Promise<RetentionReport> {
    const rule: RetentionPlanOptions = { ...rules, preserveModel: options.preserveModel ?? false };
    return this.context.exclusive(async () => {
      await this.writer.pending.settle();
      return this.pruner.retain(op, rule, () => this.listCheckpoints(), options.background ?? false);
    });
  }
}

function checkCount(n: number): void {
  if (!Number.isSafeInteger(n) || n < 1) throw new InvalidArgumentError(`n must be a positive integer, got ${String(n)}`);
}
