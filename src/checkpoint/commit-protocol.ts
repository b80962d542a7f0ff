import type { FileSystem } from "../fs/file-system.js";
import type { CheckpointInfo } from "./checkpoint-directory.js";
import { ManifestCommit } from "./manifest-commit.js";
import type { Manifest } from "./manifest.js";
import { RenameCommit } from "./rename-commit.js";

/**
 * How checkpoints become visible and disappear on one kind of storage. A local disk renames a
 * finished `step_N.tmp/` into place; object storage, which has no rename, writes each save under
 * its own prefix and makes `manifest.json`, written last and naming that prefix, the commit.
 * Listing, loading and verifying read both layouts (see checkpoint-directory).
 */
export interface CommitProtocol {
  /**
   * Where a save of `stepNr` writes its files, made ready for them. Rank 0 calls this after taking
   * the directory; the other ranks are told the answer.
   */
  prepareStaging(checkpointDir: string, stepNr: number): Promise<string>;
  /**
   * Where a save of `stepNr` writes its files when that is fixed by the step alone (`step_N.tmp`),
   * else undefined. A rank played by a FakeGang hears nothing from rank 0 and uses this.
   */
  fixedStaging(checkpointDir: string, stepNr: number): string | undefined;
  /** Removes the files of a save that will not be committed (failed or aborted). */
  discard(checkpointDir: string, stepNr: number, stagingDir: string): Promise<void>;
  /** Writes `manifest` (its files already written into `stagingDir`) and commits the checkpoint. */
  publish(checkpointDir: string, stepNr: number, stagingDir: string, manifest: Manifest): Promise<void>;
  /**
   * The first half of a deletion: after it no listing shows the checkpoint. Returns the second
   * half (removing files nobody lists any more), which may run later, in the background.
   */
  withdraw(checkpointDir: string, info: CheckpointInfo): Promise<() => Promise<void>>;
  /** Cleans up what saves, replaces and deletions cut off by a crash left. Only the lock holder calls it. */
  recover(checkpointDir: string): Promise<void>;
}

export function commitProtocolFor(fileSystem: FileSystem): CommitProtocol {
  return fileSystem.supportsRename ? new RenameCommit(fileSystem) : new ManifestCommit(fileSystem);
}
