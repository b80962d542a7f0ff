/**
 * A fixed number of part buffers shared by one writer: `acquire` waits while all are in use, so a
 * writer holds at most `capacity` parts in memory however fast its caller writes (back-pressure).
 */
export class PartPool {
  private readonly free: Buffer[] = [];
  private created = 0;
  private readonly waiters: Array<() => void> = [];

  constructor(private readonly capacity: number) {}

  /** A buffer of at least `size` bytes; a smaller free one (parts grow) is dropped for a new one. */
  async acquire(size: number): Promise<Buffer> {
    while (this.free.length === 0 && this.created >= this.capacity) {
      await new Promise<void>((resolve) => this.waiters.push(resolve));
    }
    const reused = this.free.pop();
    if (reused !== undefined && reused.length >= size) return reused;
    if (reused === undefined) this.created++;
    return Buffer.allocUnsafeSlow(size);
  }

  release(buffer: Buffer): void {
    this.free.push(buffer);
    this.waiters.shift()?.();
  }
}
