import type { CheckpointSummary } from "../index.js";

/** What became of a checkpoint seen during this session: still whole, pruned to its model, or gone. */
export type Fate = "kept" | "model-only" | "deleted";

export interface HistoryEntry {
  stepNr: number;
  fate: Fate;
  /** As last seen (a deleted checkpoint keeps the score it had). */
  scoreAsSaved: number | undefined;
  score: number | undefined;
  lowerBetter: boolean | undefined;
  size: number;
}

/**
 * The committed checkpoints the server has seen since it started. A deleted checkpoint leaves no
 * trace on disk, so the chart can mark it only if this session saw it before it went.
 */
export class SessionHistory {
  private readonly seen = new Map<number, HistoryEntry>();

  /** Takes in a fresh listing; returns every checkpoint seen so far with its fate now. */
  update(checkpoints: readonly CheckpointSummary[]): HistoryEntry[] {
    const present = new Set<number>();
    for (const c of checkpoints) {
      if (c.status !== "committed") continue;
      present.add(c.stepNr);
      this.seen.set(c.stepNr, { stepNr: c.stepNr, fate: c.modelOnly ? "model-only" : "kept", scoreAsSaved: c.scoreAsSaved, score: c.score, lowerBetter: c.lowerBetter, size: c.size });
    }
    for (const [stepNr, entry] of this.seen) if (!present.has(stepNr)) entry.fate = "deleted";
    return [...this.seen.values()].sort((a, b) => a.stepNr - b.stepNr);
  }
}
