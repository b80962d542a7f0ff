import { CheckpointDeleteError, CheckpointError } from "../errors.js";

/**
 * Retention's deletes still running in the background, if any, and how they ended. The
 * checkpoints were renamed away before this starts, so no listing sees them half deleted; what
 * runs here only removes the renamed directories and the training state of stripped ones. Its
 * error is raised exactly once: by `settle()` (the next retention or delete call, `close()`,
 * `waitForPendingDeletions()`) or by `raiseIfFailed()` (a call that must not wait for it).
 */
export class BackgroundDeletion {
  private current: { steps: number[]; done: Promise<void>; settled: boolean; error: unknown } | undefined;

  /** Runs `work` (removing what retention pruned from `steps`) in the background. */
  start(steps: number[], work: () => Promise<void>): void {
    const current = { steps, done: Promise.resolve(), settled: false, error: undefined as unknown };
    // Settles, never rejects: the error is kept for settle() or raiseIfFailed(), never swallowed.
    current.done = work().then(
      () => void (current.settled = true),
      (error: unknown) => void Object.assign(current, { settled: true, error }),
    );
    this.current = current;
  }

  /** True while deletes are running. */
  get busy(): boolean {
    return this.current !== undefined && !this.current.settled;
  }

  /** Waits for the deletes, if any, and raises their error once. */
  async settle(): Promise<void> {
    const current = this.current;
    if (current === undefined) return;
    await current.done;
    this.current = undefined;
    if (current.error === undefined) return;
    const error = current.error;
    if (error instanceof CheckpointError) throw error;
    const steps = current.steps.join(", ");
    throw new CheckpointDeleteError(current.steps[0], `the background deletion of checkpoints ${steps} failed: ${(error as Error).message}`, { cause: error });
  }

  /** Raises the error of deletes that have already failed; waits for nothing. */
  async raiseIfFailed(): Promise<void> {
    if (this.current?.settled === true) await this.settle();
  }
}
