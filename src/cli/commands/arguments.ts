import { InvalidArgumentError } from "commander";

/** A positive integer option (`--keep-last 3`). */
export function parsePositiveInt(text: string): number {
  const n = Number(text);
  if (!/^\d+$/.test(text) || !Number.isSafeInteger(n) || n < 1) throw new InvalidArgumentError("it must be a positive integer");
  return n;
}

/** A step number (`--step 1000`). */
export function parseStepNr(text: string): number {
  const n = Number(text);
  if (!/^\d+$/.test(text) || !Number.isSafeInteger(n)) throw new InvalidArgumentError("it must be a step number (a non-negative integer)");
  return n;
}

/** A non-negative number (`--atol 1e-6`). */
export function parseTolerance(text: string): number {
  const n = Number(text);
  if (text.trim() === "" || !Number.isFinite(n) || n < 0) throw new InvalidArgumentError("it must be a non-negative number");
  return n;
}
