import { crc32 } from "node:zlib";
import { stringify as toYaml } from "yaml";
import {
  CheckpointDeleteError,
  CheckpointError,
  CheckpointLoadError,
  CheckpointNotFoundError,
  CheckpointSaveError,
  InvalidArgumentError,
} from "../errors.js";
import { fakeGangs } from "../gang/fake-gang.js";
import type { Gangs, JsonValue } from "../gang/gang.js";
import type { FileLock, FileSystem } from "../fs/file-system.js";
import { LocalFileSystem } from "../fs/local-file-system.js";
import { joinPath } from "../fs/paths.js";
import { digestFile } from "../io/file-digest.js";
import type { FileDigest, TensorDumper, TensorLoadOptions, TensorLoader } from "../io/tensor-io.js";
import { TorchTensorDumper, TorchTensorLoader } from "../io/torch-tensor-io.js";
import type { StateDict, StateValue } from "../values/py-values.js";
import { findCheckpoint, listCheckpoints, type CheckpointInfo } from "./checkpoint-directory.js";
import type {
  BeginOptions,
  CheckpointManager,
  DeleteOptions,
  ListOptions,
  LoadOptions,
  ModelMetadata,
  RetentionOptions,
  RetentionResult,
  SaveScoreOptions,
  SaveStateOptions,
} from "./checkpoint-manager.js";
import { agree } from "./collective.js";
import {
  CARBON_COPY_DIR,
  LOCK_FILE,
  MANIFEST_FILE,
  METADATA_FILE,
  MODEL_CARD_FILE,
  SCORE_FILE,
  TMP_SUFFIX,
  isModelFile,
  modelFileName,
  rankFileName,
  replicatedFileName,
  stepDirName,
} from "./layout.js";
import { MANIFEST_FORMAT, MANIFEST_VERSION, encodeManifest, manifestFile, type Manifest, type ManifestFile } from "./manifest.js";
import { commitByRename, recoverLeftovers, removeCheckpointDirectory } from "./rename-commit.js";
import { bestStep } from "./retention.js";
import { planRetention, pruneAction, trainingStateFiles, type RetentionPlanOptions } from "./retention-plan.js";
import { formatScore } from "./score.js";
import { SnapshotArena, snapshotState } from "./snapshot.js";
import { mergeInto, splitState } from "./state-split.js";

export interface FileCheckpointManagerOptions {
  /** The checkpoint directory (created on first save). */
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

/** How far the writing or reading of one file of a checkpoint has got. */
export interface CheckpointProgress {
  operation: "save" | "load";
  stepNr: number;
  /** The file's name within the checkpoint, e.g. `rank_0.pt`. */
  file: string;
  bytesDone: number;
  bytesTotal: number;
}

/** A checkpoint between beginCheckpoint and commit/abort. */
interface OpenCheckpoint {
  stepNr: number;
  /** Written in the background from snapshots: each step is queued on `chain`. */
  background: boolean;
  chain: Promise<void>;
  tmpDir: string;
  /** The files this rank wrote, with their digests. */
  files: Record<string, ManifestFile>;
  stateSaved: boolean;
}

/**
 * Saves, loads and prunes training checkpoints in a directory, in fairseq2's layout, as PyTorch
 * `.pt` files. Saving is a transaction: files go to `step_<N>.tmp/`, and `commitCheckpoint`
 * writes `manifest.json` and renames the directory into place. With several processes, every
 * rank calls the same methods in the same order; an error on any rank is raised on all of them.
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
  private readonly gangs: Gangs;
  private readonly fileSystem: FileSystem;
  private readonly loader: TensorLoader;
  private readonly dumper: TensorDumper;
  private readonly verifyChecksums: boolean;
  private readonly onProgress: ((event: CheckpointProgress) => void) | undefined;
  private readonly onWarning: (message: string) => void;
  private readonly warned = new Set<string>();
  private open: OpenCheckpoint | undefined;
  /** The committed background checkpoint still being written, and how it ended. */
  private inFlight: { stepNr: number; done: Promise<void>; settled: boolean; error: unknown } | undefined;
  private readonly arena = new SnapshotArena();
  private lock: FileLock | undefined;
  private busy = false;

  constructor(options: FileCheckpointManagerOptions) {
    if (typeof options?.checkpointDir !== "string" || options.checkpointDir === "") {
      throw new InvalidArgumentError("checkpointDir must be a non-empty path");
    }
    this.gangs = options.gangs ?? fakeGangs();
    const { root, dp, tp } = this.gangs;
    if (root.size !== dp.size * tp.size) {
      throw new InvalidArgumentError(`gangs do not fit together: root has ${root.size} ranks but dp × tp is ${dp.size} × ${tp.size}`);
    }
    this.fileSystem = options.fileSystem ?? new LocalFileSystem();
    // Once, here: a relative path read again at each call would move with process.chdir().
    this.checkpointDir = this.fileSystem.resolvePath?.(options.checkpointDir) ?? options.checkpointDir;
    this.loader = options.tensorLoader ?? new TorchTensorLoader({ fileSystem: this.fileSystem });
    this.dumper = options.tensorDumper ?? new TorchTensorDumper({ fileSystem: this.fileSystem });
    this.verifyChecksums = options.verifyChecksums ?? true;
    this.onProgress = options.onProgress;
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
    await this.exclusive(async () => {
      if (this.open !== undefined) {
        throw new CheckpointSaveError(stepNr, `beginCheckpoint(${stepNr}) called while checkpoint ${this.open.stepNr} is open: call commitCheckpoint() or abortCheckpoint() first`);
      }
      if (options.whenBusy === "fail" && this.inFlight !== undefined && !this.inFlight.settled) {
        throw new CheckpointSaveError(stepNr, `checkpoint ${this.inFlight.stepNr} is still being written in the background: await waitForPendingSave() first, or pass whenBusy: "wait"`);
      }
      await this.settleInFlight();
      this.arena.reset(); // nothing is being written from it any more
      const checkpoint: OpenCheckpoint = {
        stepNr,
        background: options.background ?? false,
        chain: Promise.resolve(),
        tmpDir: this.stepPath(`${stepDirName(stepNr)}${TMP_SUFFIX}`),
        files: {},
        stateSaved: false,
      };
      this.open = checkpoint;
      await this.saveStep(checkpoint, "beginCheckpoint", async () => {
        if (!this.isRoot) return;
        await this.ownDirectory();
        await this.fileSystem.remove(checkpoint.tmpDir);
        await this.fileSystem.makeDirectory(checkpoint.tmpDir);
      });
    });
  }

  /** Writes this rank's part of `state` (see SaveStateOptions for the split). */
  async saveState(state: StateDict, options: SaveStateOptions = {}): Promise<void> {
    const checkpoint = this.requireOpen("saveState");
    if (checkpoint.stateSaved) {
      throw new CheckpointSaveError(checkpoint.stepNr, `saveState was already called for checkpoint ${checkpoint.stepNr}: pass the whole state in one call`);
    }
    if (!isPlainDict(state)) throw new InvalidArgumentError("saveState needs a plain object mapping keys to state values");
    const modelKey = options.modelKey ?? "model";
    if (typeof modelKey !== "string" || modelKey === "") throw new InvalidArgumentError("modelKey must be a non-empty string");
    const replicatedKeys = new Set(options.replicatedKeys ?? []);
    for (const key of replicatedKeys) if (typeof key !== "string") throw new InvalidArgumentError("replicatedKeys must be strings");

    const source = checkpoint.background ? snapshotState(state, this.arena) : state;
    checkpoint.stateSaved = true;
    await this.runStep(checkpoint, "saveState", async () => {
        const { dp, tp } = this.gangs;
        const parts = splitState(source, modelKey, replicatedKeys, dp.size, dp.rank);
        if (parts.model !== undefined) {
          await this.writePart(checkpoint, modelFileName(tp.rank, tp.size), { model: parts.model, model_key: modelKey });
        }
        if (parts.replicated !== undefined) await this.writePart(checkpoint, replicatedFileName(tp.rank, tp.size), parts.replicated);
        await this.writePart(checkpoint, rankFileName(dp.rank, tp.rank, tp.size), parts.rank);
      });
  }

  /** Saves `metadata.pt` (any state value), written by rank 0. */
  async saveMetadata(metadata: StateValue): Promise<void> {
    const checkpoint = this.requireOpen("saveMetadata");
    const source = checkpoint.background ? snapshotState({ metadata }, this.arena).metadata! : metadata;
    await this.runStep(checkpoint, "saveMetadata", async () => {
      if (this.isRoot) await this.writePart(checkpoint, METADATA_FILE, source);
    });
  }

  /** Saves the checkpoint's score (`score.txt`); retention keeps the best ones. */
  async saveScore(score: number, options: SaveScoreOptions = {}): Promise<void> {
    const checkpoint = this.requireOpen("saveScore");
    if (typeof score !== "number" || !Number.isFinite(score)) throw new InvalidArgumentError(`a score must be a finite number, got ${String(score)}`);
    await this.runStep(checkpoint, "saveScore", async () => {
      if (this.isRoot) await this.writeBytes(checkpoint, SCORE_FILE, new TextEncoder().encode(formatScore(score, options.lowerBetter ?? false)));
    });
  }

  /**
   * Saves a full (unsharded) copy of a model whose state `saveState` keeps sharded across
   * data-parallel ranks, as `model.pt`, so the checkpoint can be loaded as a model. Pass the
   * consolidated state dict; dp rank 0 writes it.
   */
  async saveConsolidatedFsdpModel(model: StateDict): Promise<void> {
    const checkpoint = this.requireOpen("saveConsolidatedFsdpModel");
    if (!isPlainDict(model) && !((model as unknown) instanceof Map)) throw new InvalidArgumentError("saveConsolidatedFsdpModel needs the model's state dict");
    const source = checkpoint.background ? snapshotState({ model }, this.arena).model! : model;
    await this.runStep(checkpoint, "saveConsolidatedFsdpModel", async () => {
      const { dp, tp } = this.gangs;
      const name = modelFileName(tp.rank, tp.size);
      if (name in checkpoint.files) throw new Error(`${name} was already written by saveState (the model is replicated)`);
      if (dp.rank === 0) await this.writePart(checkpoint, name, { model: source, model_key: "model" });
    });
  }

  /**
   * Makes the checkpoint visible, atomically: the manifest is written, then the directory renamed.
   * For a background checkpoint this returns at once; `waitForPendingSave()` tells how it ended.
   */
  async commitCheckpoint(): Promise<void> {
    const checkpoint = this.requireOpen("commitCheckpoint");
    const commit = async (): Promise<void> => {
      const { shared } = await agree(this.gangs.root, "commitCheckpoint:files", checkpoint.stepNr, async () => undefined, () => checkpoint.files as unknown as JsonValue);
      if (this.isRoot) await this.publish(checkpoint, shared as unknown as Record<string, ManifestFile>[]);
    };
    if (!checkpoint.background) {
      await this.exclusive(() => this.saveStep(checkpoint, "commitCheckpoint", commit));
      this.open = undefined;
      return;
    }
    await this.runStep(checkpoint, "commitCheckpoint", commit);
    this.open = undefined;
    const inFlight = { stepNr: checkpoint.stepNr, done: Promise.resolve(), settled: false, error: undefined as unknown };
    // Settles, never rejects: the error is kept and raised by the next call or waitForPendingSave().
    inFlight.done = checkpoint.chain.then(
      () => void (inFlight.settled = true),
      (error: unknown) => void Object.assign(inFlight, { settled: true, error }),
    );
    this.inFlight = inFlight;
  }

  /**
   * Resolves when the checkpoint being written in the background is committed; rejects with its
   * error if it failed (the error is then not raised again by the next call).
   */
  async waitForPendingSave(): Promise<void> {
    await this.settleInFlight();
  }

  /** True while a committed background checkpoint is still being written. */
  get hasPendingSave(): boolean {
    return this.inFlight !== undefined && !this.inFlight.settled;
  }

  /** Drops the open checkpoint; the committed ones are untouched. Does nothing when none is open. */
  async abortCheckpoint(): Promise<void> {
    const checkpoint = this.open;
    if (checkpoint === undefined) return;
    await this.exclusive(async () => {
      await checkpoint.chain.catch(() => undefined); // its queued steps finish (or fail) first
      try {
        await agree(this.gangs.root, "abortCheckpoint", checkpoint.stepNr, async () => undefined);
      } catch (error) {
        throw new CheckpointSaveError(checkpoint.stepNr, `abortCheckpoint failed for checkpoint ${checkpoint.stepNr}, which was dropped: ${(error as Error).message}`, { cause: error });
      } finally {
        await this.drop(checkpoint);
      }
    });
  }

  // ---------------------------------------------------------------- loading

  /** The state saved at `stepNr`, merged back from the model, replicated and rank files. */
  async loadCheckpoint(stepNr: number, options: LoadOptions = {}): Promise<StateDict> {
    checkStepNr(stepNr);
    await this.raiseBackgroundFailure();
    const info = await this.requireCheckpoint(stepNr);
    if (info.modelOnly) {
      throw new CheckpointLoadError(stepNr, `checkpoint ${stepNr} keeps only its model (it was pruned with preserveModel): load it with loadModel(${stepNr})`);
    }
    this.checkLayout(info, true);
    const { dp, tp } = this.gangs;
    const rankFile = rankFileName(dp.rank, tp.rank, tp.size);
    if (!info.files.includes(rankFile)) {
      throw new CheckpointLoadError(stepNr, `checkpoint ${stepNr} has no ${rankFile} for this rank (dp rank ${dp.rank}, tp rank ${tp.rank})`);
    }
    const state: StateDict = Object.create(Object.prototype) as StateDict;
    for (const name of [modelFileName(tp.rank, tp.size), replicatedFileName(tp.rank, tp.size), rankFile]) {
      if (!hasFile(info, name)) continue;
      const into = options.into === undefined ? undefined : isModelFile(name) ? { model: options.into[options.modelKey ?? "model"] ?? null } : options.into;
      const part = await this.loadFile(info, name, into);
      if (!isPlainDict(part)) throw new CheckpointLoadError(stepNr, `${name} of checkpoint ${stepNr} does not hold a dict of string keys`);
      if (isModelFile(name)) {
        const modelKey = typeof part.model_key === "string" ? part.model_key : "model";
        const { model, model_key: _, ...rest } = part;
        mergeInto(state, rest);
        if (model !== undefined) state[modelKey] = model;
      } else {
        mergeInto(state, part);
      }
    }
    return state;
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
    const info = await this.requireCheckpoint(stepNr);
    return hasFile(info, METADATA_FILE) ? this.loadFile(info, METADATA_FILE) : null;
  }

  /**
   * The model's state dict from a checkpoint's model file only (never optimizer or rank state):
   * the last checkpoint by default, model-only ones included.
   */
  async loadModel(stepNr?: number, options: { into?: StateDict } = {}): Promise<StateDict> {
    if (stepNr !== undefined) checkStepNr(stepNr);
    const step = stepNr ?? (await this.getLastStepNumber({ includeModelOnly: true }));
    if (step === undefined) throw new CheckpointNotFoundError(undefined, `no checkpoint in ${this.checkpointDir}`);
    const info = await this.requireCheckpoint(step);
    this.checkLayout(info, false);
    const { tp } = this.gangs;
    const name = modelFileName(tp.rank, tp.size);
    if (!hasFile(info, name)) {
      throw new CheckpointLoadError(step, `checkpoint ${step} has no ${name}: its model is sharded across data-parallel ranks; save a full copy with saveConsolidatedFsdpModel()`);
    }
    const part = await this.loadFile(info, name, options.into === undefined ? undefined : { model: options.into });
    const model = isPlainDict(part) ? part.model : undefined;
    if (model === undefined || model === null || typeof model !== "object") {
      throw new CheckpointLoadError(step, `${name} of checkpoint ${step} has no "model" entry`);
    }
    return model as StateDict;
  }

  // ---------------------------------------------------------------- queries

  async listCheckpoints(): Promise<CheckpointInfo[]> {
    await this.raiseBackgroundFailure();
    const all = await listCheckpoints(this.fileSystem, this.checkpointDir);
    for (const { warning } of all) {
      if (warning === undefined || this.warned.has(warning)) continue;
      this.warned.add(warning);
      this.onWarning(warning);
    }
    return all;
  }

  /**
   * Committed step numbers, ascending; resumable ones only unless `includeModelOnly`. Damaged
   * checkpoints (unreadable manifest or score) are left out: `listCheckpoints()` shows them.
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
    await this.exclusive(async () => {
      await this.settleInFlight();
      // Rank 0 alone looks for the checkpoint and tells the others: a rank that looked for itself
      // could arrive after rank 0 deleted it, skip the collective and leave rank 0 waiting.
      let found: boolean | null = null;
      const shared = await this.deleteStep(
        "deleteCheckpoint",
        stepNr,
        async () => {
          if (!this.isRoot) return;
          if (!(await this.ownDirectory({ create: false }))) {
            found = false;
            return;
          }
          const info = await findCheckpoint(this.fileSystem, this.checkpointDir, stepNr);
          found = info !== undefined;
          if (info !== undefined) await this.prune(info, options.preserveModel ?? false);
        },
        () => found,
      );
      if (shared[0] === false && options.missingOk !== true) {
        throw new CheckpointNotFoundError(stepNr, `there is no checkpoint ${stepNr} in ${this.checkpointDir}`);
      }
    });
  }

  /** Deletes all but the last `n` resumable checkpoints (or strips them to the model). */
  async keepLastNCheckpoints(n: number, options: RetentionOptions = {}): Promise<RetentionResult> {
    checkCount(n);
    return this.retain("keepLastNCheckpoints", { keepLast: n, preserveModel: options.preserveModel ?? false });
  }

  /**
   * Keeps the `n` best-scoring checkpoints and always the last resumable one; checkpoints without
   * a score are never deleted by this rule.
   */
  async keepBestNCheckpoints(n: number, options: RetentionOptions = {}): Promise<RetentionResult> {
    checkCount(n);
    return this.retain("keepBestNCheckpoints", { keepBest: n, preserveModel: options.preserveModel ?? false });
  }

  /** Writes `model.yaml`, the model card: family, config, and the number of TP shards. */
  async saveModelMetadata(metadata: ModelMetadata): Promise<void> {
    if (typeof metadata?.family !== "string" || metadata.family === "") throw new InvalidArgumentError("saveModelMetadata needs a non-empty family");
    await this.exclusive(async () => {
      await this.settleInFlight();
      await this.deleteStep("saveModelMetadata", undefined, async () => {
        if (!this.isRoot) return;
        await this.ownDirectory();
        const card: Record<string, unknown> = { model_family: metadata.family };
        if (metadata.config !== undefined) card.model_config = metadata.config;
        if (this.gangs.tp.size > 1) card.num_shards = this.gangs.tp.size;
        await this.fileSystem.writeFile(this.stepPath(MODEL_CARD_FILE), new TextEncoder().encode(toYaml(card)));
      });
    });
  }

  /** Waits for a background save, drops an open checkpoint, releases the lock. */
  async close(): Promise<void> {
    const checkpoint = this.open;
    if (checkpoint !== undefined) {
      await checkpoint.chain.catch(() => undefined);
      await this.drop(checkpoint, true);
    }
    try {
      await this.settleInFlight();
    } finally {
      this.arena.clear();
      const lock = this.lock;
      this.lock = undefined;
      await lock?.release();
    }
  }

  // ---------------------------------------------------------------- internals

  private get isRoot(): boolean {
    return this.gangs.root.rank === 0;
  }

  private stepPath(...names: string[]): string {
    return joinPath(this.checkpointDir, ...names);
  }

  private requireOpen(method: string): OpenCheckpoint {
    if (this.open === undefined) throw new CheckpointSaveError(undefined, `${method}() needs an open checkpoint: call beginCheckpoint(stepNr) first`);
    return this.open;
  }

  private async requireCheckpoint(stepNr: number): Promise<CheckpointInfo> {
    let info: CheckpointInfo | undefined;
    try {
      info = await findCheckpoint(this.fileSystem, this.checkpointDir, stepNr);
    } catch (error) {
      if (error instanceof CheckpointError) throw error;
      throw new CheckpointLoadError(stepNr, `cannot read checkpoint ${stepNr} in ${this.checkpointDir}`, { cause: error });
    }
    if (info === undefined) throw new CheckpointNotFoundError(stepNr, `there is no checkpoint ${stepNr} in ${this.checkpointDir}`);
    if (info.damaged !== undefined) throw new CheckpointLoadError(stepNr, `checkpoint ${stepNr} is damaged: ${info.damaged}`);
    return info;
  }

  private async soundCheckpoints(): Promise<CheckpointInfo[]> {
    return (await this.listCheckpoints()).filter((c) => c.damaged === undefined);
  }

  /** One call at a time: interleaved calls on one manager would corrupt its transaction. */
  private async exclusive<T>(work: () => Promise<T>): Promise<T> {
    if (this.busy) throw new CheckpointError(undefined, "another call on this checkpoint manager is still running: await each call before making the next");
    this.busy = true;
    try {
      return await work();
    } finally {
      this.busy = false;
    }
  }

  /**
   * Takes the directory's lock (rank 0, once) and cleans up what a crashed run left. Without
   * `create`, a directory that does not exist is left so (false: there is nothing to own).
   */
  private async ownDirectory(options: { create: boolean } = { create: true }): Promise<boolean> {
    if (this.lock !== undefined) return true;
    if (!options.create && !(await this.fileSystem.exists(this.checkpointDir))) return false;
    try {
      await this.fileSystem.makeDirectory(this.checkpointDir);
      this.lock = await this.fileSystem.lock(this.stepPath(LOCK_FILE));
    } catch (error) {
      throw new CheckpointError(undefined, `the checkpoint directory ${this.checkpointDir} ${whyNotOwned(error)}: ${(error as Error).message}`, { cause: error });
    }
    await recoverLeftovers(this.fileSystem, this.checkpointDir);
    return true;
  }

  /** Runs one step of a save on every rank; if any rank fails, the checkpoint is dropped everywhere. */
  private async saveStep(checkpoint: OpenCheckpoint, op: string, action: () => Promise<void>): Promise<void> {
    try {
      await agree(this.gangs.root, op, checkpoint.stepNr, action);
    } catch (error) {
      await this.drop(checkpoint);
      if (error instanceof CheckpointError) throw error;
      throw new CheckpointSaveError(checkpoint.stepNr, `${op} failed for checkpoint ${checkpoint.stepNr}, which was dropped: ${(error as Error).message}`, { cause: error });
    }
  }

  /**
   * Runs a save step now, or for a background checkpoint queues it behind the earlier ones and
   * returns (a failure skips the rest of the queue and is reported after commitCheckpoint).
   */
  private async runStep(checkpoint: OpenCheckpoint, op: string, action: () => Promise<void>): Promise<void> {
    if (!checkpoint.background) {
      await this.exclusive(() => this.saveStep(checkpoint, op, action));
      return;
    }
    checkpoint.chain = checkpoint.chain.then(() => this.saveStep(checkpoint, op, action));
    checkpoint.chain.catch(() => undefined); // observed later, by commit's bookkeeping or abort
  }

  /** Raises the error of a background save that has already failed; waits for nothing. */
  private async raiseBackgroundFailure(): Promise<void> {
    if (this.inFlight?.settled === true) await this.settleInFlight();
  }

  /** Waits for the background save, if any, and raises its error once. */
  private async settleInFlight(): Promise<void> {
    const inFlight = this.inFlight;
    if (inFlight === undefined) return;
    await inFlight.done;
    this.inFlight = undefined;
    if (inFlight.error !== undefined) {
      const error = inFlight.error;
      if (error instanceof CheckpointError) throw error;
      throw new CheckpointSaveError(inFlight.stepNr, `the background save of checkpoint ${inFlight.stepNr} failed: ${(error as Error).message}`, { cause: error });
    }
  }

  private async deleteStep(op: string, stepNr: number | undefined, action: () => Promise<void>, share?: () => JsonValue): Promise<JsonValue[]> {
    try {
      return (await agree(this.gangs.root, op, stepNr, action, share)).shared;
    } catch (error) {
      if (error instanceof CheckpointError) throw error;
      throw new CheckpointDeleteError(stepNr, `${op} failed: ${(error as Error).message}`, { cause: error });
    }
  }

  /**
   * Forgets a failed or aborted checkpoint and removes its files. A background checkpoint stays
   * open for the caller's remaining calls (which are then skipped) until commit or abort.
   */
  private async drop(checkpoint: OpenCheckpoint, force = false): Promise<void> {
    if (this.open === checkpoint && (force || !checkpoint.background)) this.open = undefined;
    // Only the lock holder's: without the lock, a step_N.tmp there is another manager's save.
    if (this.isRoot && this.lock !== undefined) await this.fileSystem.remove(checkpoint.tmpDir).catch(() => undefined);
  }

  /** A per-file progress callback for the loader or dumper, when the caller asked for progress. */
  private progress(operation: "save" | "load", stepNr: number, file: string): ((bytesDone: number, bytesTotal: number) => void) | undefined {
    const listener = this.onProgress;
    if (listener === undefined) return undefined;
    return (bytesDone, bytesTotal) => listener({ operation, stepNr, file, bytesDone, bytesTotal });
  }

  private async writePart(checkpoint: OpenCheckpoint, name: string, value: StateValue): Promise<void> {
    const path = joinPath(checkpoint.tmpDir, name);
    const onProgress = this.progress("save", checkpoint.stepNr, name);
    const digest = (await this.dumper.dump(value, path, onProgress === undefined ? {} : { onProgress })) ?? (await digestFile(this.fileSystem, path));
    checkpoint.files[name] = manifestFile(digest);
  }

  private async writeBytes(checkpoint: OpenCheckpoint, name: string, bytes: Uint8Array): Promise<void> {
    await this.fileSystem.writeFile(joinPath(checkpoint.tmpDir, name), bytes);
    checkpoint.files[name] = manifestFile({ size: bytes.byteLength, crc32: crc32(bytes) });
  }

  /**
   * Rank 0's half of the commit: copy `cc/`, write the manifest of every file in the directory
   * (digests from the ranks that wrote them; read back only for files no rank reported, as when
   * FakeGangs play the other ranks), then rename the directory into place.
   */
  private async publish(checkpoint: OpenCheckpoint, reported: Record<string, ManifestFile>[]): Promise<void> {
    const known = new Map<string, ManifestFile>();
    for (const files of reported) for (const [name, file] of Object.entries(files)) known.set(name, file);
    for (const name of await this.copyCarbonCopies(checkpoint)) known.set(name, checkpoint.files[name]!);

    const files: Record<string, ManifestFile> = {};
    for (const name of await this.listFilesRecursively(checkpoint.tmpDir)) {
      files[name] = known.get(name) ?? manifestFile(await digestFile(this.fileSystem, joinPath(checkpoint.tmpDir, name)));
    }
    const missing = [...known.keys()].filter((name) => !(name in files));
    if (missing.length > 0) throw new Error(`files reported written are missing from ${checkpoint.tmpDir}: ${missing.join(", ")}`);

    const manifest: Manifest = {
      format: MANIFEST_FORMAT,
      version: MANIFEST_VERSION,
      stepNr: checkpoint.stepNr,
      createdAt: new Date().toISOString(),
      dpSize: this.gangs.dp.size,
      tpSize: this.gangs.tp.size,
      modelOnly: false,
      files,
    };
    await this.fileSystem.writeFile(joinPath(checkpoint.tmpDir, MANIFEST_FILE), encodeManifest(manifest));
    await commitByRename(this.fileSystem, this.checkpointDir, checkpoint.stepNr);
  }

  /** Copies the files of `<checkpointDir>/cc/` into the checkpoint; returns their names. */
  private async copyCarbonCopies(checkpoint: OpenCheckpoint): Promise<string[]> {
    const source = this.stepPath(CARBON_COPY_DIR);
    const names = await this.listFilesRecursively(source);
    for (const name of names) {
      const target = joinPath(checkpoint.tmpDir, name);
      // Any rank may have written the file (rank_1.pt under dp=2), not only this one: look on disk.
      if (name in checkpoint.files || name === MANIFEST_FILE || (await this.fileSystem.exists(target))) {
        throw new Error(`cc/${name} would overwrite the checkpoint's own ${name}`);
      }
      if (name.includes("/")) await this.fileSystem.makeDirectory(joinPath(target, ".."));
      await this.writeBytes(checkpoint, name, await this.fileSystem.readFile(joinPath(source, name)));
    }
    return names;
  }

  private async listFilesRecursively(dir: string, prefix = ""): Promise<string[]> {
    const names: string[] = [];
    for (const entry of await this.fileSystem.listDirectory(dir)) {
      const name = prefix === "" ? entry.name : `${prefix}/${entry.name}`;
      if (entry.isDirectory) names.push(...(await this.listFilesRecursively(joinPath(dir, entry.name), name)));
      else names.push(name);
    }
    return names.sort();
  }

  /**
   * Reads one file of a checkpoint, checked against the manifest: by the loader while it reads
   * (one pass) when it can, else by reading the file once more first.
   */
  private async loadFile(info: CheckpointInfo, name: string, into?: StateValue): Promise<StateValue> {
    const path = joinPath(info.path, name);
    const options: TensorLoadOptions = into === undefined ? {} : { into };
    const onProgress = this.progress("load", info.stepNr, name);
    if (onProgress !== undefined) options.onProgress = onProgress;
    if (info.manifest !== undefined) {
      const expected = info.manifest.files[name];
      if (expected === undefined) throw new CheckpointLoadError(info.stepNr, `${name} of checkpoint ${info.stepNr} is not in its manifest`);
      if (this.verifyChecksums) {
        const expectedDigest = { size: expected.size, crc32: Number.parseInt(expected.crc32, 16) };
        if (this.loader.verifiesDigest === true) options.expectedDigest = expectedDigest;
        else await this.checkDigest(info, name, expectedDigest);
      }
    }
    try {
      return await this.loader.load(path, options);
    } catch (error) {
      const corrupt = (error as { cause?: { code?: string } }).cause?.code === "DIGEST_MISMATCH";
      const what = corrupt ? `is corrupt (${(error as Error).message})` : `cannot be loaded: ${(error as Error).message}`;
      throw new CheckpointLoadError(info.stepNr, `${name} of checkpoint ${info.stepNr} ${what}`, { cause: error });
    }
  }

  private async checkDigest(info: CheckpointInfo, name: string, expected: FileDigest): Promise<void> {
    let actual: FileDigest;
    try {
      actual = await digestFile(this.fileSystem, joinPath(info.path, name));
    } catch (error) {
      throw new CheckpointLoadError(info.stepNr, `cannot read ${name} of checkpoint ${info.stepNr}: ${(error as Error).message}`, { cause: error });
    }
    if (actual.size !== expected.size || actual.crc32 >>> 0 !== expected.crc32 >>> 0) {
      const { crc32: a } = manifestFile(actual);
      const { crc32: e } = manifestFile(expected);
      throw new CheckpointLoadError(
        info.stepNr,
        `${name} of checkpoint ${info.stepNr} is corrupt: the manifest says ${expected.size} bytes with CRC-32 ${e}, the file has ${actual.size} bytes with CRC-32 ${a}`,
      );
    }
  }

  /** Refuses a checkpoint saved with another dp/tp layout (only tp matters for the model alone). */
  private checkLayout(info: CheckpointInfo, withDataParallel: boolean): void {
    const { dp, tp } = this.gangs;
    const saved = info.manifest !== undefined ? { dpSize: info.manifest.dpSize, tpSize: info.manifest.tpSize } : inferLayout(info.files);
    if (saved === undefined) return;
    const dpDiffers = withDataParallel && saved.dpSize !== undefined && saved.dpSize !== dp.size;
    if (dpDiffers || saved.tpSize !== tp.size) {
      throw new CheckpointLoadError(
        info.stepNr,
        `checkpoint ${info.stepNr} was saved with dp=${saved.dpSize ?? "?"}, tp=${saved.tpSize} but this job has dp=${dp.size}, tp=${tp.size}: load it with the same layout`,
      );
    }
  }

  private async retain(op: string, rule: RetentionPlanOptions): Promise<RetentionResult> {
    return this.exclusive(async () => {
      await this.settleInFlight();
      let result: RetentionResult = { deleted: [], stripped: [] };
      await this.deleteStep(op, undefined, async () => {
        if (!this.isRoot || !(await this.ownDirectory({ create: false }))) return;
        const all = await this.listCheckpoints();
        const { deleted, stripped } = planRetention(all, rule);
        for (const info of all) {
          if (deleted.includes(info.stepNr)) await this.prune(info, false);
          else if (stripped.includes(info.stepNr)) await this.prune(info, true);
        }
        result = { deleted, stripped };
      });
      // Rank 0 decided; the others learn what it did.
      const { shared } = await agree(this.gangs.root, `${op}:result`, undefined, async () => undefined, () => result as unknown as JsonValue);
      result = shared[0] as unknown as RetentionResult;
      return result;
    });
  }

  /**
   * Deletes a checkpoint, or with `preserveModel` removes its training state (rank, replicated and
   * metadata files) and keeps the model files, score and carbon copies. The manifest is rewritten
   * first, so it never lists a file that is gone.
   */
  private async prune(info: CheckpointInfo, preserveModel: boolean): Promise<void> {
    const action = pruneAction(info, preserveModel);
    if (action === "delete") {
      await removeCheckpointDirectory(this.fileSystem, this.checkpointDir, info.path, info.stepNr);
      return;
    }
    if (action === "keep") return;
    const trainingState = trainingStateFiles(info);
    if (info.manifest !== undefined) {
      const files = Object.fromEntries(Object.entries(info.manifest.files).filter(([name]) => !trainingState.includes(name)));
      await this.fileSystem.writeFile(joinPath(info.path, MANIFEST_FILE), encodeManifest({ ...info.manifest, modelOnly: true, files }));
    }
    for (const name of trainingState) await this.fileSystem.remove(joinPath(info.path, name));
    await this.fileSystem.syncDirectory(info.path);
  }
}

/**
 * Whether a checkpoint has a file: a file its manifest lists counts even when it is gone from the
 * directory, so that loading it fails naming it instead of silently leaving its part out.
 */
function hasFile(info: CheckpointInfo, name: string): boolean {
  return info.files.includes(name) || info.manifest?.files[name] !== undefined;
}

/** The dp/tp layout of a checkpoint without a manifest (fairseq2), from its file names. */
function inferLayout(files: string[]): { dpSize: number | undefined; tpSize: number } | undefined {
  let maxDp = -1;
  let maxTp = -1;
  let any = false;
  for (const name of files) {
    const rank = /^rank_(\d+)(?:\.(\d+))?\.pt$/.exec(name);
    const shard = /^(?:model|replicated)(?:\.(\d+))?\.pt$/.exec(name);
    if (rank !== null) {
      any = true;
      maxDp = Math.max(maxDp, Number(rank[1]));
      if (rank[2] !== undefined) maxTp = Math.max(maxTp, Number(rank[2]));
    } else if (shard !== null) {
      any = true;
      if (shard[1] !== undefined) maxTp = Math.max(maxTp, Number(shard[1]));
    }
  }
  if (!any) return undefined;
  return { dpSize: maxDp >= 0 ? maxDp + 1 : undefined, tpSize: maxTp >= 0 ? maxTp + 1 : 1 };
}

/** Why the directory could not be taken, from the error of making it or locking it. */
function whyNotOwned(error: unknown): string {
  const code = (error as { code?: unknown }).code;
  if (code === "ELOCKED") return "is in use by another manager";
  if (code === "EACCES" || code === "EPERM" || code === "EROFS") return "cannot be written";
  return "cannot be taken for saving";
}

function checkStepNr(stepNr: number): void {
  if (!Number.isSafeInteger(stepNr) || stepNr < 0) throw new InvalidArgumentError(`a step number must be a non-negative integer, got ${String(stepNr)}`);
}

function checkCount(n: number): void {
  if (!Number.isSafeInteger(n) || n < 1) throw new InvalidArgumentError(`n must be a positive integer, got ${String(n)}`);
}

function isPlainDict(value: unknown): value is StateDict {
  if (typeof value !== "object" || value === null) return false;
  const prototype = Object.getPrototypeOf(value);
  return prototype === Object.prototype || prototype === null;
}
