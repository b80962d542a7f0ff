import type { Manifest } from "../index.js";

/** MTBF assumed until the user enters theirs: one failure a day, a common figure for a small cluster job. */
export const DEFAULT_MTBF_SECONDS = 24 * 3600;

/**
 * Young/Daly's first-order optimum checkpoint interval, √(2 × C × MTBF): the interval that
 * minimizes the time spent checkpointing (C per checkpoint) plus the work lost to failures
 * (half an interval per failure on average).
 */
export function youngDalyIntervalSeconds(costSeconds: number, mtbfSeconds: number): number {
  return Math.sqrt(2 * costSeconds * mtbfSeconds);
}

/** When one checkpoint was saved (milliseconds since the epoch) and what its manifest says the save cost. */
export interface SaveRecord {
  stepNr: number;
  createdAt: number | undefined;
  save: Manifest["save"];
}

export interface StepCost {
  stepNr: number;
  /** The manifest's createdAt, in milliseconds since the epoch. */
  createdAt: number | undefined;
  /** Seconds since the previous checkpoint's createdAt (among those still there). */
  secondsSincePrevious: number | undefined;
  blockedMs: number | undefined;
  durableMs: number | undefined;
  bytesWritten: number | undefined;
}

export interface CostReport {
  steps: StepCost[];
  mtbfSeconds: number;
  /** The median time between consecutive checkpoints: the interval in use. */
  intervalInUseSeconds: number | undefined;
  /** The mean time the caller was blocked per save: what a checkpoint costs the training. */
  meanBlockedSeconds: number | undefined;
  meanDurableSeconds: number | undefined;
  /** √(2 × meanBlockedSeconds × mtbfSeconds). */
  youngDalySeconds: number | undefined;
}

/** What each save cost and the interval Young/Daly recommends for it, from the manager's listing. */
export function costReport(infos: readonly SaveRecord[], mtbfSeconds: number): CostReport {
  const sorted = [...infos].sort((a, b) => a.stepNr - b.stepNr);
  const steps: StepCost[] = [];
  let previous: number | undefined;
  for (const info of sorted) {
    const save = info.save;
    const createdAt = info.createdAt;
    steps.push({
      stepNr: info.stepNr,
      createdAt,
      secondsSincePrevious: createdAt !== undefined && previous !== undefined ? (createdAt - previous) / 1000 : undefined,
      blockedMs: save?.blockedMs,
      durableMs: save?.durableMs,
      bytesWritten: save?.bytesWritten,
    });
    if (createdAt !== undefined) previous = createdAt;
  }
  const intervals = steps.map((s) => s.secondsSincePrevious).filter((s): s is number => s !== undefined);
  const blocked = steps.map((s) => s.blockedMs).filter((s): s is number => s !== undefined);
  const durable = steps.map((s) => s.durableMs).filter((s): s is number => s !== undefined);
  const meanBlockedSeconds = blocked.length === 0 ? undefined : blocked.reduce((a, b) => a + b, 0) / blocked.length / 1000;
  return {
    steps,
    mtbfSeconds,
    intervalInUseSeconds: median(intervals),
    meanBlockedSeconds,
    meanDurableSeconds: durable.length === 0 ? undefined : durable.reduce((a, b) => a + b, 0) / durable.length / 1000,
    youngDalySeconds: meanBlockedSeconds === undefined ? undefined : youngDalyIntervalSeconds(meanBlockedSeconds, mtbfSeconds),
  };
}

function median(values: number[]): number | undefined {
  if (values.length === 0) return undefined;
  const sorted = [...values].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 === 1 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
}
