import type { StateDict, StateValue } from "../values/py-values.js";
import type { CheckpointInfo } from "./checkpoint-directory.js";
import type { RetentionRules } from "./retention.js";
import type { RetentionDecision } from "./retention-plan.js";

export interface BeginOptions {
  /**
   * Write this checkpoint in the background (default false). Each save call then returns once it
   * has copied the tensors it was given (the caller may change them at once), and
   * `commitCheckpoint` returns at once; files are written and committed behind the scenes. An
   * error there is raised by `waitForPendingSave()` or else by the next call on the manager.
   */
  background?: boolean;
  /**
   * If a background checkpoint is still being written: "wait" for it (default) or "fail" with a
   * CheckpointSaveError. At most one save is in flight.
   */
  whenBusy?: "wait" | "fail";
}

export interface SaveStateOptions {
  /** The state's key that holds the model (default "model"). */
  modelKey?: string;
  /**
   * Keys whose values are equal on every data-parallel rank: written once, by dp rank 0, to
   * `replicated.pt`. `"*"` means every key. Naming `modelKey` (or `"*"`) marks the model as
   * replicated, so it goes to `model.pt` even with several data-parallel ranks.
   */
  replicatedKeys?: Iterable<string>;
}

export interface SaveScoreOptions {
  /** The score is better when lower (a loss); it is stored negated. Default false. */
  lowerBetter?: boolean;
}

export interface DeleteOptions {
  /** Succeed when the checkpoint does not exist (default false: CheckpointNotFoundError). */
  missingOk?: boolean;
  /** Delete the training state but keep the model files (default false). */
  preserveModel?: boolean;
}

export interface RetentionOptions {
  /** Strip pruned checkpoints to their model files instead of deleting them (default false). */
  preserveModel?: boolean;
  /**
   * Remove the pruned checkpoints' files in the background (default false), off the training
   * path. The call still renames each pruned checkpoint to `step_N.deleting` (or rewrites a
   * stripped one's manifest) before it returns, so listings never show one half deleted and
   * the result is already true. A failure is raised by the next retention or delete call (on
   * every rank), by `waitForPendingDeletions()`, `listCheckpoints()` or `close()`; never lost.
   */
  background?: boolean;
}

/** The rules of `retain` with its options: see RetentionRules and RetentionOptions. */
export interface RetainOptions extends RetentionRules, RetentionOptions {}

export interface LoadOptions {
  /**
   * The state to load into, in place: each tensor of the checkpoint that has a contiguous tensor
   * of the same dtype and shape at the same path here is read straight into it (no allocation),
   * and the returned state holds that tensor. Typical use: the live model and optimizer state.
   */
  into?: StateDict;
  /** Where `into` holds the model (default "model"), as given to saveState. */
  modelKey?: string;
  /**
   * Load a checkpoint saved with another dp/tp layout (default false: refused). `true` recuts every
   * ShardedTensor along its saved split dimension evenly over the new ranks; an object also takes
   * a per-key plan and the policies for per-rank values. `into` is not used for resharded files.
   */
  reshard?: boolean | ReshardOptions;
}

export interface LoadModelOptions {
  /** The model state dict to load into, in place (as `LoadOptions.into` does for a whole state). */
  into?: StateDict;
  /** The key the model was saved under (the `modelKey` given to saveState; default "model"), so `into` matches its tensors. */
  modelKey?: string;
  /**
   * Load a model saved with another tp size (default false: refused): its ShardedTensors are
   * recut over the new tp ranks (only `plan` matters here). `into` is not used then.
   */
  reshard?: boolean | ReshardOptions;
}


/**
 * How a checkpoint is resharded. Keys are key paths joined by "/", e.g. "model/0.weight" or
 * "optimizer/state/0/exp_avg" (the state as loadCheckpoint returns it).
 *
 * @example
 * await manager.loadLastCheckpoint({
 *   reshard: { plan: { "model/0.weight": { dim: 1 } }, perRank: { data: "rank0", rng: (values) => values[0]! } },
 * });
 */
export interface ReshardOptions {
  /** How to cut this rank's share of a sharded tensor (default: its saved split dimension, evenly). */
  plan?: Record<string, ReshardPlanEntry>;
  /**
   * What a top-level key of the rank files gets when its values differ by rank (plain tensors,
   * numbers that differ): "rank0" takes the first rank's, a function combines every saved rank's
   * value (in saved rank order) into this rank's; "refuse" (the default) fails naming the keys.
   * The key "*" sets the policy of every key not named.
   */
  perRank?: Record<string, PerRankPolicy>;
}

/** Split evenly along `dim`, or the block to read: fixed, or computed from this rank's place. */
export type ReshardPlanEntry =
  | { dim: number }
  | { offsets: number[]; shape: number[] }
  | ((where: { globalShape: readonly number[]; index: number; count: number }) => { offsets: number[]; shape: number[] });

export type PerRankPolicy =
  | "rank0"
  | "refuse"
  | ((values: StateValue[], where: { dpRank: number; dpSize: number; tpRank: number; tpSize: number; savedDpSize: number; savedTpSize: number }) => StateValue);

export interface ListOptions {
  /** Also count checkpoints pruned to their model files, which cannot be resumed (default false). */
  includeModelOnly?: boolean;
}

/** What retention did: steps deleted whole, and steps stripped to their model files. */
export interface RetentionResult {
  deleted: number[];
  stripped: number[];
}

/** What `retain` did, and why each survivor survived (see RetentionDecision). */
export interface RetentionReport extends RetentionResult {
  /** Steps left as they are. */
  kept: number[];
  /** Every sound checkpoint in step order: what was done to it, and which rules kept it. */
  decisions: RetentionDecision[];
}

export interface ModelMetadata {
  /** The model family, e.g. "llama". */
  family: string;
  /** The model's configuration; any JSON-like value. */
  config?: unknown;
}

/** Saves, loads and prunes the checkpoints of a training job (SPEC §5). */
export interface CheckpointManager {
  beginCheckpoint(stepNr: number, options?: BeginOptions): Promise<void>;
  saveState(state: StateDict, options?: SaveStateOptions): Promise<void>;
  saveMetadata(metadata: StateValue): Promise<void>;
  saveScore(score: number, options?: SaveScoreOptions): Promise<void>;
  saveConsolidatedFsdpModel(model: StateDict): Promise<void>;
  commitCheckpoint(): Promise<void>;
  abortCheckpoint(): Promise<void>;
  /** Resolves when a background checkpoint is committed; rejects with its error. */
  waitForPendingSave(): Promise<void>;

  loadCheckpoint(stepNr: number, options?: LoadOptions): Promise<StateDict>;
  loadLastCheckpoint(options?: LoadOptions): Promise<{ stepNr: number; state: StateDict }>;
  loadMetadata(stepNr: number): Promise<StateValue | null>;
  /** With `into`, the model's tensors are read in place into that state dict's matching tensors. */
  loadModel(stepNr?: number, options?: LoadModelOptions): Promise<StateDict>;

  getStepNumbers(options?: ListOptions): Promise<number[]>;
  hasCheckpoint(stepNr?: number, options?: ListOptions): Promise<boolean>;
  getLastStepNumber(options?: ListOptions): Promise<number | undefined>;
  getBestStepNumber(): Promise<number | undefined>;
  getScores(): Promise<{ stepNr: number; score: number }[]>;
  listCheckpoints(): Promise<CheckpointInfo[]>;

  deleteCheckpoint(stepNr: number, options?: DeleteOptions): Promise<void>;
  keepLastNCheckpoints(n: number, options?: RetentionOptions): Promise<RetentionResult>;
  keepBestNCheckpoints(n: number, options?: RetentionOptions): Promise<RetentionResult>;
  /** Several retention rules at once; a checkpoint survives when any rule keeps it. */
  retain(options: RetainOptions): Promise<RetentionReport>;
  /** Resolves when background deletes are done; rejects with their error. */
  waitForPendingDeletions(): Promise<void>;

  saveModelMetadata(metadata: ModelMetadata): Promise<void>;
  /** Releases the directory lock. The manager can be used again afterwards (it re-locks). */
  close(): Promise<void>;
}
