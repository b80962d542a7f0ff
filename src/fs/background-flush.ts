import type { FileHandle } from "node:fs/promises";

/**
 * Flushes a file to disk (fdatasync) in the background as its bytes are handed over, one flush at
 * a time, so the fsync at close has little left to wait for. The fsync at close stays what makes
 * the file durable; a flush that fails here fails the file all the same (`settle`).
 */
export class BackgroundFlush {
  /** Bytes handed over since the last flush started. */
  private pending = 0;
  /** The flush under way, if any. It never rejects: its failure is kept for `settle`. */
  private flushing: Promise<void> | undefined;
  private failure: { error: unknown } | undefined;

  constructor(
    private readonly handle: FileHandle,
    /** Bytes handed over past which the next flush starts. */
    private readonly everyBytes: number,
  ) {}

  /** Counts `bytes` handed to the file; starts a flush once `everyBytes` were since the last, if none is under way. */
  handedOver(bytes: number): void {
    this.pending += bytes;
    if (this.pending < this.everyBytes || this.flushing !== undefined) return;
    this.pending = 0;
    // One at a time, so the one that ends is the one under way.
    this.flushing = this.handle.datasync().then(
      () => void (this.flushing = undefined),
      (error: unknown) => {
        this.failure ??= { error };
        this.flushing = undefined;
      },
    );
  }

  /** Waits for the flush under way; throws the first flush's failure, if one failed. */
  async settle(): Promise<void> {
    await this.flushing;
    if (this.failure !== undefined) throw this.failure.error;
  }

  /** Waits for the flush under way, whatever its outcome (before closing a file given up on). */
  async quiesce(): Promise<void> {
    await this.flushing;
  }
}
