import type { CheckpointInfo } from "./checkpoint-directory.js";
import { METADATA_FILE, isModelFile, isRankFile, isReplicatedFile } from "./layout.js";
import { combineRetention, type RetentionRules } from "./retention.js";

export interface RetentionPlan {
  /** Steps that would be deleted whole. */
  deleted: number[];
  /** Steps that would keep only their model files (`preserveModel`). */
  stripped: number[];
  /** Steps left as they are. */
  kept: number[];
  /** Every sound checkpoint, in step order, with what happens to it and why. */
  decisions: RetentionDecision[];
}

/** What retention does to one checkpoint and why. */
export interface RetentionDecision {
  stepNr: number;
  action: "keep" | "delete" | "strip";
  /**
   * Why it is kept, in words: the rules that keep it ("last 3", "best 2", "milestone: every 1000
   * steps", "one per 6h", "the last checkpoint (always kept, to resume)"), or, for a pruned
   * checkpoint that `preserveModel` leaves as it is, that only its model is left. Empty when pruned.
   */
  keptBy: string[];
}

export interface RetentionPlanOptions extends RetentionRules {
  /** Strip pruned checkpoints to their model files instead of deleting them (default false). */
  preserveModel?: boolean | undefined;
}

/**
 * What retention would do to these checkpoints, without doing it (`ckpt prune --dry-run`); the
 * manager's `retain` does exactly this. A checkpoint survives when any rule keeps it (see
 * combineRetention). A pruned one is deleted, or with `preserveModel` stripped of its training
 * state (a checkpoint with no model file is deleted; one already model-only is left alone).
 * Damaged checkpoints are neither counted nor pruned, and are left out.
 *
 * @example
 * const { deleted, decisions } = planRetention(await manager.listCheckpoints(), { keepLast: 3, keepEvery: 10_000 });
 */
export function planRetention(checkpoints: readonly CheckpointInfo[], options: RetentionPlanOptions): RetentionPlan {
  // A damaged checkpoint is neither counted nor pruned: nobody can tell what it holds.
  const sound = checkpoints.filter((info) => info.damaged === undefined);
  const reasons = combineRetention(sound, options);
  const plan: RetentionPlan = { deleted: [], stripped: [], kept: [], decisions: [] };
  for (const info of sound) {
    const keptBy = reasons.get(info.stepNr) ?? [];
    const action = keptBy.length > 0 ? "keep" : pruneAction(info, options.preserveModel ?? false);
    if (keptBy.length === 0 && action === "keep") keptBy.push("only its model is left already (preserveModel)");
    (action === "delete" ? plan.deleted : action === "strip" ? plan.stripped : plan.kept).push(info.stepNr);
    plan.decisions.push({ stepNr: info.stepNr, action, keptBy });
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
