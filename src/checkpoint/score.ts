import { CheckpointError } from "../errors.js";

/**
 * `score.txt` holds one number, higher is better. A score saved as lower-is-better is stored
 * negated. fairseq2 writes a "-" prefix instead, which gives "--2" for a score of -2; that reads
 * here as 2, the negation it meant.
 */
export function formatScore(score: number, lowerBetter: boolean): string {
  const stored = lowerBetter ? -score : score;
  return `${Object.is(stored, -0) ? 0 : stored}\n`;
}

export function parseScore(text: string, stepNr: number): number {
  const trimmed = text.trim();
  const body = trimmed.startsWith("--") ? trimmed.slice(2) : trimmed;
  const value = Number(body);
  if (body === "" || !Number.isFinite(value)) {
    throw new CheckpointError(stepNr, `score.txt of step ${stepNr} does not hold a finite number: ${JSON.stringify(trimmed.slice(0, 40))}`);
  }
  return value;
}

/** The score as it was given to saveScore, from the stored (higher-is-better) value and its direction. */
export function savedScore(stored: number, lowerBetter: boolean): number {
  const saved = lowerBetter ? -stored : stored;
  return Object.is(saved, -0) ? 0 : saved;
}
