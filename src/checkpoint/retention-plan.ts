import { InvalidArgumentError } from "../errors.js";
import type { CheckpointInfo } from "./checkpoint-directory.js";
import { METADATA_FILE, isModelFile, isRankFile } from "./layout.js";
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
  const keep = keepLast !== undefined ? keepLastN(checkpoints, n) : keepBestN(checkpoints, n);
  const plan: RetentionPlan = { deleted: [], stripped: [], kept: [] };
  for (const info of checkpoints) {
    if (keep.has(info.stepNr)) plan.kept.push(info.stepNr);
    else if (options.preserveModel !== true || !info.files.some(isModelFile)) plan.deleted.push(info.stepNr);
    else {
      const trainingState = info.files.some((name) => isRankFile(name) || /^replicated(\.\d+)?\.pt$/.test(name) || name === METADATA_FILE);
      (trainingState || !info.modelOnly ? plan.stripped : plan.kept).push(info.stepNr);
    }
  }
  return plan;
}
