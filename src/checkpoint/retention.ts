import { InvalidArgumentError } from "../errors.js";

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
  /** When it was committed (ms since the epoch), for keepOnePerInterval; undefined when unknown. */
  createdAt?: number | undefined;
}

/** The last resumable checkpoint: retention always keeps it, so training can resume. */
export function lastResumable(checkpoints: readonly RetentionCandidate[]): number | undefined {
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
  const keep = new Set(bestScored(checkpoints, n));
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

/**
 * Keeps every checkpoint whose step is a multiple of `n` (milestones), model-only ones included.
 * Combined with other rules (combineRetention), a milestone survives whatever they decide.
 */
export function keepEveryN(checkpoints: readonly RetentionCandidate[], n: number): Set<number> {
  return new Set(checkpoints.filter((c) => c.stepNr % n === 0).map((c) => c.stepNr));
}

/**
 * Thins the checkpoints that are not `recent` to one per `intervalMs`, as Orbax's
 * `keep_time_interval` and TensorFlow's `keep_checkpoint_every_n_hours` do: in step order, the
 * first is kept, then each one committed at least `intervalMs` after the last one kept. Deleting
 * the others never changes which are kept, so repeated pruning is stable. A checkpoint with no
 * known time is kept (nothing says it is redundant), as keepBestN keeps unscored ones.
 */
export function keepOnePerInterval(checkpoints: readonly RetentionCandidate[], intervalMs: number, recent: ReadonlySet<number>): Set<number> {
  const keep = new Set<number>();
  let lastKept: number | undefined;
  for (const c of [...checkpoints].sort((a, b) => a.stepNr - b.stepNr)) {
    if (recent.has(c.stepNr)) continue;
    if (c.createdAt === undefined) {
      keep.add(c.stepNr);
    } else if (lastKept === undefined || c.createdAt >= lastKept + intervalMs) {
      keep.add(c.stepNr);
      lastKept = c.createdAt;
    }
  }
  return keep;
}

/** Several rules at once; each is optional, at least one must be given. */
export interface RetentionRules {
  /** Keep the last `n` resumable checkpoints. */
  keepLast?: number | undefined;
  /** Keep the `n` best-scoring checkpoints (and every unscored one, as keepBestN does). */
  keepBest?: number | undefined;
  /** Keep every step that is a multiple of `n`: milestones, never pruned by the other rules. */
  keepEvery?: number | undefined;
  /**
   * Among the checkpoints older than the last `keepLast` (all of them without keepLast), keep one
   * per this interval: a duration such as "6h", "30m", "1d", "90s", or a number of seconds.
   */
  keepOnePer?: number | string | undefined;
}

const DURATION_UNITS_MS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000, w: 604_800_000 };

/** A duration ("6h", "30m", "1.5d", "90s", "500ms", "2w", or a number of seconds) in milliseconds. */
export function parseDuration(duration: number | string): number {
  let ms: number;
  if (typeof duration === "number") {
    ms = duration * 1000;
  } else {
    const match = /^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)\s*$/.exec(String(duration));
    ms = match === null ? NaN : Number(match[1]) * DURATION_UNITS_MS[match[2]!]!;
  }
  if (!Number.isFinite(ms) || ms <= 0) {
    throw new InvalidArgumentError(`keepOnePer must be a positive duration such as "6h", "30m", "1d" or a number of seconds, got ${JSON.stringify(duration)}`);
  }
  return ms;
}

/** Checks the rules: at least one, each count a positive integer, the interval a positive duration. */
export function checkRetentionRules(rules: RetentionRules): void {
  const given = (["keepLast", "keepBest", "keepEvery", "keepOnePer"] as const).filter((name) => rules[name] !== undefined);
  if (given.length === 0) throw new InvalidArgumentError("retention needs at least one rule: keepLast, keepBest, keepEvery or keepOnePer");
  for (const name of ["keepLast", "keepBest", "keepEvery"] as const) {
    const n = rules[name];
    if (n !== undefined && (!Number.isSafeInteger(n) || n < 1)) throw new InvalidArgumentError(`${name} must be a positive integer, got ${String(n)}`);
  }
  if (rules.keepOnePer !== undefined) parseDuration(rules.keepOnePer);
}

/**
 * Applies several rules at once: a checkpoint survives when any rule keeps it, and the last
 * resumable checkpoint always survives. Returns, for every checkpoint, why it is kept: the rules
 * that keep it, in words ("last 3", "milestone: every 1000 steps"…), empty when none does.
 *
 * @example
 * combineRetention(candidates, { keepLast: 3, keepEvery: 1000 }).get(2000); // ["milestone: every 1000 steps"]
 */
export function combineRetention(checkpoints: readonly RetentionCandidate[], rules: RetentionRules): Map<number, string[]> {
  checkRetentionRules(rules);
  const reasons = new Map(checkpoints.map((c) => [c.stepNr, [] as string[]]));
  const mark = (steps: Iterable<number>, why: (stepNr: number) => string): void => {
    for (const stepNr of steps) reasons.get(stepNr)?.push(why(stepNr));
  };
  const { keepLast, keepBest, keepEvery, keepOnePer } = rules;
  const recent = keepLast === undefined ? new Set<number>() : keepLastN(checkpoints, keepLast);
  mark(recent, () => `last ${keepLast}`);
  if (keepBest !== undefined) {
    // keepBestN's set, told apart: the best scores, the unscored ones, and the last (marked below).
    mark(bestScored(checkpoints, keepBest), () => `best ${keepBest}`);
    mark(checkpoints.filter((c) => c.score === undefined).map((c) => c.stepNr), () => "unscored (keepBest never prunes it)");
  }
  if (keepEvery !== undefined) mark(keepEveryN(checkpoints, keepEvery), () => `milestone: every ${keepEvery} steps`);
  if (keepOnePer !== undefined) {
    const perInterval = keepOnePerInterval(checkpoints, parseDuration(keepOnePer), recent);
    const dated = new Map(checkpoints.map((c) => [c.stepNr, c.createdAt !== undefined]));
    mark(perInterval, (s) => (dated.get(s) === true ? `one per ${String(keepOnePer)}${typeof keepOnePer === "number" ? "s" : ""}` : "undated (keepOnePer never prunes it)"));
  }
  const last = lastResumable(checkpoints);
  if (last !== undefined) reasons.get(last)!.push("the last checkpoint (always kept, to resume)");
  return reasons;
}

/** The `n` best-scoring steps (a later step wins a tie). */
function bestScored(checkpoints: readonly RetentionCandidate[], n: number): number[] {
  const scored = checkpoints
    .filter((c): c is RetentionCandidate & { score: number } => c.score !== undefined)
    .sort((a, b) => b.score - a.score || b.stepNr - a.stepNr);
  return scored.slice(0, n).map((c) => c.stepNr);
}
