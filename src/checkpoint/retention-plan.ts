import { InvalidArgumentError } from "../errors.js";
import type { CheckpointInfo } from "./checkpoint-directory.js";
import { METADATA_FILE, isModelFile, isRankFile, isReplicatedFile } from "./layout.js";
import { keepBestN, keepLastN } from "./retention.js";

export interface RetentionPlan {
  /** Steps that would be deleted whole. */
  deleted: number[];
  /** Steps that would keep only their model files (`preserveModel`). */
  stripped: number[];
  /** Steps left as they are. */
  kept: number[];
}

export interface RetentionPlanOptions {
  /** Keep the last `n` resumable checkpoints (keepLastNCheckpoints). */
  keepLast?: number;
  /** Keep the `n` best-scoring checkpoints and the last one (keepBestNCheckpoints). */
  keepBest?: number;
  preserveModel?: boolean;
}

/**
 * What keepLastNCheckpoints / keepBestNCheckpoints would do to these checkpoints, without doing
 * it (`ckpt prune --dry-run`). Decides as the manager's prune does: without `preserveModel`, or
 * for a checkpoint with no model file, the checkpoint is deleted; with it, the training state is
 * removed, and a checkpoint that is already model-only is left alone.
 *
 * @example
 * const { deleted, stripped } = planRetention(await manager.listCheckpoints(), { keepLast: 3 });
 */
export function planRetention(checkpoints: readonly CheckpointInfo[], options: RetentionPlanOptions): RetentionPlan {
  const { keepLast, keepBest } = options;
  if ((keepLast === undefined) === (keepBest === undefined)) throw new InvalidArgumentError("planRetention needs exactly one of keepLast and keepBest");
  const n = (keepLast ?? keepBest)!;
  if (!Number.isSafeInteger(n) || n < 1) throw new InvalidArgumentError(`n must be a positive integer, got ${String(n)}`);
  // A damaged checkpoint is neither counted nor pruned: nobody can tell what it holds.
  const sound = checkpoints.filter((info) => info.damaged === undefined);
  const keep = keepLast !== undefined ? keepLastN(sound, n) : keepBestN(sound, n);
  const plan: RetentionPlan = { deleted: [], stripped: [], kept: [] };
  for (const info of sound) {
    const action = keep.has(info.stepNr) ? "keep" : pruneAction(info, options.preserveModel ?? false);
    (action === "delete" ? plan.deleted : action === "strip" ? plan.stripped : plan.kept).push(info.stepNr);
  }
  return plan;
}

/**
 * What pruning does to one checkpoint: without `preserveModel`, or when it has no model file, it
 * is deleted; with it, its training state goes (`strip`), unless only the model is left already.
 */
export function pruneAction(info: CheckpointInfo, preserveModel: boolean): "delete" | "strip" | "keep" {
  if (!preserveModel || !info.files.some(isModelFile)) return "delete";
  return trainingStateFiles(info).length > 0 || !info.modelOnly ? "strip" : "keep";
}

/** The files that `preserveModel` removes: rank, replicated and metadata files. */
export function trainingStateFiles(info: CheckpointInfo): string[] {
  return info.files.filter((name) => isRankFile(name) || isReplicatedFile(name) || name === METADATA_FILE);
}
