import { CheckpointError } from "../errors.js";
import type { FileLock, FileSystem } from "../fs/file-system.js";
import { joinPath } from "../fs/paths.js";
import { LOCK_FILE } from "./layout.js";
import type { CommitProtocol } from "./commit-protocol.js";

/**
 * The one manager allowed to change a checkpoint directory: it holds the directory's lock, and
 * cleans up what a crashed run left when it takes it. A manager that does not hold the lock
 * changes nothing there (a `step_N.tmp/` it sees may be the holder's save in progress).
 */
export class DirectoryOwner {
  private lock: FileLock | undefined;

  constructor(
    private readonly fileSystem: FileSystem,
    private readonly checkpointDir: string,
    private readonly commit: CommitProtocol,
  ) {}

  get holdsLock(): boolean {
    return this.lock !== undefined;
  }

  /**
   * Takes the directory (once) and recovers leftovers. Without `create`, a directory that does not
   * exist is left so, and the answer is false: there is nothing to own.
   */
  async own(options: { create: boolean } = { create: true }): Promise<boolean> {
    if (this.lock !== undefined) return true;
    if (!options.create && !(await this.fileSystem.exists(this.checkpointDir))) return false;
    try {
      await this.fileSystem.makeDirectory(this.checkpointDir);
      this.lock = await this.fileSystem.lock(joinPath(this.checkpointDir, LOCK_FILE));
    } catch (error) {
      throw new CheckpointError(undefined, `the checkpoint directory ${this.checkpointDir} ${whyNotOwned(error)}: ${(error as Error).message}`, { cause: error });
    }
    await this.commit.recover(this.checkpointDir);
    return true;
  }

  async release(): Promise<void> {
    const lock = this.lock;
    this.lock = undefined;
    await lock?.release();
  }
}

/** Why the directory could not be taken, from the error of making it or locking it. */
function whyNotOwned(error: unknown): string {
  const code = (error as { code?: unknown }).code;
  if (code === "ELOCKED") return "is in use by another manager";
  if (code === "EACCES" || code === "EPERM" || code === "EROFS") return "cannot be written";
  return "cannot be taken for saving";
}
