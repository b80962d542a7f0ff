/**
 * Retention rules: pure functions from the list of checkpoints to the steps to keep. The manager
 * deletes (or strips to the model) everything else, in one place.
 */
export interface RetentionCandidate {
  stepNr: number;
  /** Only the model files are left: it can be evaluated, not resumed. */
  modelOnly: boolean;
  /** Higher is better; undefined when the checkpoint has no score. */
  score: number | undefined;
}

/** The last resumable checkpoint: retention always keeps it, so training can resume. */
function lastResumable(checkpoints: readonly RetentionCandidate[]): number | undefined {
  let last: number | undefined;
  for (const c of checkpoints) if (!c.modelOnly && (last === undefined || c.stepNr > last)) last = c.stepNr;
  return last;
}

/** Keeps the last `n` resumable checkpoints. */
export function keepLastN(checkpoints: readonly RetentionCandidate[], n: number): Set<number> {
  const resumable = checkpoints.filter((c) => !c.modelOnly).map((c) => c.stepNr).sort((a, b) => b - a);
  return new Set(resumable.slice(0, n));
}

/**
 * Keeps the `n` best-scoring checkpoints (a later step wins a tie), the last resumable checkpoint,
 * and every checkpoint without a score (nothing says it is worse).
 */
export function keepBestN(checkpoints: readonly RetentionCandidate[], n: number): Set<number> {
  const scored = checkpoints
    .filter((c): c is RetentionCandidate & { score: number } => c.score !== undefined)
    .sort((a, b) => b.score - a.score || b.stepNr - a.stepNr);
  const keep = new Set(scored.slice(0, n).map((c) => c.stepNr));
  for (const c of checkpoints) if (c.score === undefined) keep.add(c.stepNr);
  const last = lastResumable(checkpoints);
  if (last !== undefined) keep.add(last);
  return keep;
}

/** The best checkpoint by score (a later step wins a tie), or undefined when none has a score. */
export function bestStep(checkpoints: readonly RetentionCandidate[]): number | undefined {
  let best: RetentionCandidate | undefined;
  for (const c of checkpoints) {
    if (c.score === undefined) continue;
    if (best === undefined || c.score > best.score! || (c.score === best.score && c.stepNr > best.stepNr)) best = c;
  }
  return best?.stepNr;
}
