/**
 * The contract between `npm run torture` (torture/run.ts) and its fault classes
 * (torture/classes/*.ts): each class tries cases for a budget of time and counts what happened.
 */

/** What a class is given: a seed to draw every random choice from (replay), a budget, a scratch directory. */
export interface ClassOptions {
  seed: number;
  /** Stop starting new cases after this long; a case under way finishes. */
  budgetMs: number;
  /** A fresh directory the class may fill; removed by the runner afterwards. */
  workDir: string;
  /** The short version inside `npm test`: a few cases of each kind, same checks. */
  quick: boolean;
}

/** One thing that went wrong: a loss, an undetected corruption, an uncaught exception, a hang... */
export interface ClassFailure {
  kind: string;
  /** Enough to replay it: the case's own seed and what was done. */
  detail: string;
}

export interface ClassResult {
  /** The class's title in docs/reliability.md, e.g. "Crash anywhere". */
  name: string;
  /** Cases tried, by kind (e.g. { "kill during save": 212, "kill during prune": 48 }). */
  cases: Record<string, number>;
  /** Every failure (the table prints their count per kind; zero is the bar). */
  failures: ClassFailure[];
  /** Other figures worth printing (e.g. { "peak memory / file size": 2.1 }). */
  figures: Record<string, number | string>;
}

export type FaultClass = (options: ClassOptions) => Promise<ClassResult>;
