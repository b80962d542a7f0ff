import { CheckpointError, CheckpointSaveError } from "../errors.js";

/**
 * The committed background checkpoint still being written, if any, and how it ended. Its error
 * is raised exactly once: by `settle()` (waitForPendingSave, or the next call that must wait), or
 * by `raiseIfFailed()` (a call that must not wait but must not hide a failure either).
 */
export class PendingSave {
  private current: { stepNr: number; done: Promise<void>; settled: boolean; error: unknown } | undefined;

  /** Tracks the background writing of checkpoint `stepNr`, which ends when `chain` settles. */
  track(stepNr: number, chain: Promise<void>): void {
    const current = { stepNr, done: Promise.resolve(), settled: false, error: undefined as unknown };
    // Settles, never rejects: the error is kept and raised by settle() or raiseIfFailed().
    current.done = chain.then(
      () => void (current.settled = true),
      (error: unknown) => void Object.assign(current, { settled: true, error }),
    );
    this.current = current;
  }

  /** True while a committed background checkpoint is still being written. */
  get busy(): boolean {
    return this.current !== undefined && !this.current.settled;
  }

  get stepNr(): number | undefined {
    return this.current?.stepNr;
  }

  /** Waits for the background save, if any, and raises its error once. */
  async settle(): Promise<void> {
    const current = this.current;
    if (current === undefined) return;
    await current.done;
    this.current = undefined;
    if (current.error !== undefined) {
      const error = current.error;
      if (error instanceof CheckpointError) throw error;
      throw new CheckpointSaveError(current.stepNr, `the background save of checkpoint ${current.stepNr} failed: ${(error as Error).message}`, { cause: error });
    }
  }

  /** Raises the error of a background save that has already failed; waits for nothing. */
  async raiseIfFailed(): Promise<void> {
    if (this.current?.settled === true) await this.settle();
  }
}
