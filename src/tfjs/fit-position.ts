import { CheckpointLoadError } from "../errors.js";
import type { StateDict, StateValue } from "../values/py-values.js";

/** The state key under which checkpointCallback saves the training position. */
export const FIT_POSITION_KEY = "fit_position";

/**
 * Where a `fit` run stands: the next batch to train is batch `batch` (0-based) of epoch `epoch`
 * (0-based, as tfjs counts them), and `stepNr` batches have been trained in all. A checkpoint
 * saved at the end of an epoch holds `{ epoch: e + 1, batch: 0 }`.
 */
export interface FitPosition {
  epoch: number;
  batch: number;
  /** Batches trained since the run started: the checkpoint's step number. */
  stepNr: number;
}

export function fitPositionState(position: FitPosition): StateDict {
  return { epoch: position.epoch, batch: position.batch, step_nr: position.stepNr };
}

/** Reads the position saved in checkpoint `stepNr`, refusing anything that is not one. */
export function readFitPosition(state: StateDict, stepNr: number): FitPosition {
  const saved = state[FIT_POSITION_KEY];
  if (typeof saved !== "object" || saved === null || saved instanceof Map || Array.isArray(saved)) {
    throw new CheckpointLoadError(stepNr, `checkpoint ${stepNr} has no ${FIT_POSITION_KEY} entry: was it saved by checkpointCallback?`);
  }
  const field = (name: string): number => {
    const value = (saved as StateDict)[name] as StateValue | undefined;
    if (typeof value !== "number" || !Number.isSafeInteger(value) || value < 0) {
      throw new CheckpointLoadError(stepNr, `checkpoint ${stepNr}: ${FIT_POSITION_KEY}.${name} must be a non-negative integer, got ${String(value)}`);
    }
    return value;
  };
  const position = { epoch: field("epoch"), batch: field("batch"), stepNr: field("step_nr") };
  if (position.stepNr !== stepNr) {
    throw new CheckpointLoadError(stepNr, `checkpoint ${stepNr}: ${FIT_POSITION_KEY}.step_nr is ${position.stepNr}, not the checkpoint's step`);
  }
  return position;
}
