import { watch, type FSWatcher } from "node:fs";

/** How often the directory is listed again in case a change went unnoticed (network file systems, or the watch failed). */
export const DEFAULT_RESCAN_MS = 2000;
/** Watch events come in bursts (a save renames, writes, removes): one check after the burst. */
const SETTLE_MS = 150;

/**
 * Tells when a checkpoint directory changed: `fs.watch` on the directory for a prompt answer,
 * plus a periodic rescan, since watching is not reliable everywhere (NFS, some containers) and
 * does not see files change inside a step (pruning to a model). A change is a new fingerprint.
 */
export class DirectoryWatch {
  private watcher: FSWatcher | undefined;
  private timer: NodeJS.Timeout | undefined;
  private settle: NodeJS.Timeout | undefined;
  private last: string | undefined;
  private checking: Promise<void> = Promise.resolve();
  private closed = false;

  constructor(
    private readonly dir: string,
    /** A summary of the directory's state: a change of it is a change of the directory. */
    private readonly fingerprint: () => Promise<string>,
    private readonly onChange: () => void,
    private readonly rescanMs = DEFAULT_RESCAN_MS,
  ) {}

  async start(): Promise<void> {
    this.last = await this.fingerprint().catch(() => undefined);
    try {
      this.watcher = watch(this.dir, () => this.soon());
      this.watcher.on("error", () => this.watcher?.close()); // the rescan carries on alone
    } catch {
      this.watcher = undefined; // no watching here (an object store, a file system without it)
    }
    this.timer = setInterval(() => void this.check(), this.rescanMs);
    this.timer.unref();
  }

  close(): void {
    this.closed = true;
    this.watcher?.close();
    clearInterval(this.timer);
    clearTimeout(this.settle);
  }

  private soon(): void {
    clearTimeout(this.settle);
    this.settle = setTimeout(() => void this.check(), SETTLE_MS);
  }

  /** One check at a time: a slow listing never overlaps the next. */
  private check(): Promise<void> {
    this.checking = this.checking.then(async () => {
      if (this.closed) return;
      const now = await this.fingerprint().catch(() => undefined);
      if (now !== undefined && now !== this.last) {
        this.last = now;
        if (!this.closed) this.onChange();
      }
    });
    return this.checking;
  }
}
