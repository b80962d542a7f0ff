import type { FileSystem } from "../fs/file-system.js";
import { joinPath } from "../fs/paths.js";
import type { CheckpointInfo } from "./checkpoint-directory.js";
import type { CommitProtocol } from "./commit-protocol.js";
import { DELETING_SUFFIX, MANIFEST_FILE, REPLACED_SUFFIX, TMP_SUFFIX, parseLeftoverDirName, parseStepDirName, stepDirName } from "./layout.js";
import { encodeManifest, type Manifest } from "./manifest.js";

/** The commit protocol of file systems with an atomic directory rename (a local disk). */
export class RenameCommit implements CommitProtocol {
  constructor(private readonly fileSystem: FileSystem) {}

  fixedStaging(checkpointDir: string, stepNr: number): string {
    return joinPath(checkpointDir, `${stepDirName(stepNr)}${TMP_SUFFIX}`);
  }

  async prepareStaging(checkpointDir: string, stepNr: number): Promise<string> {
    const tmp = this.fixedStaging(checkpointDir, stepNr);
    await this.fileSystem.remove(tmp);
    await this.fileSystem.makeDirectory(tmp);
    return tmp;
  }

  discard(_checkpointDir: string, _stepNr: number, stagingDir: string): Promise<void> {
    return this.fileSystem.remove(stagingDir);
  }

  async publish(checkpointDir: string, stepNr: number, stagingDir: string, manifest: Manifest): Promise<void> {
    await this.fileSystem.writeFile(joinPath(stagingDir, MANIFEST_FILE), encodeManifest(manifest));
    await commitByRename(this.fileSystem, checkpointDir, stepNr);
  }

  async withdraw(checkpointDir: string, info: CheckpointInfo): Promise<() => Promise<void>> {
    const deleting = await moveCheckpointAway(this.fileSystem, checkpointDir, info.path, info.stepNr);
    return () => this.fileSystem.remove(deleting);
  }

  recover(checkpointDir: string): Promise<void> {
    return recoverLeftovers(this.fileSystem, checkpointDir);
  }
}

/**
 * Atomic commit by directory rename, for file systems that have one. A checkpoint is written in
 * `step_N.tmp`; renaming it to `step_N` is the commit. Re-saving a step moves the old directory
 * to `step_N.replaced` first and removes it only after the new one is in place, so a committed
 * checkpoint exists at every instant (listing reads `.replaced` when `step_N` is missing).
 */
export async function commitByRename(fileSystem: FileSystem, checkpointDir: string, stepNr: number): Promise<void> {
  const tmp = joinPath(checkpointDir, `${stepDirName(stepNr)}${TMP_SUFFIX}`);
  const target = joinPath(checkpointDir, stepDirName(stepNr));
  const replaced = `${target}${REPLACED_SUFFIX}`;
  await fileSystem.syncDirectory(tmp);
  const replacing = await fileSystem.exists(target);
  if (replacing) {
    await fileSystem.remove(replaced); // a leftover of an earlier cut-off replace of this step
    await fileSystem.renameDirectory(target, replaced);
  }
  await fileSystem.renameDirectory(tmp, target);
  await fileSystem.syncDirectory(checkpointDir);
  if (replacing) await fileSystem.remove(replaced);
}

/**
 * The first half of a removal: renames the checkpoint to `step_N.deleting` (durably), where no
 * listing sees it, and returns that path; removing it can then wait (background deletion). A
 * process that dies before the removal leaves it to recoverLeftovers.
 */
export async function moveCheckpointAway(fileSystem: FileSystem, checkpointDir: string, path: string, stepNr: number): Promise<string> {
  const deleting = joinPath(checkpointDir, `${stepDirName(stepNr)}${DELETING_SUFFIX}`);
  await fileSystem.remove(deleting);
  await fileSystem.renameDirectory(path, deleting);
  await fileSystem.syncDirectory(checkpointDir);
  return deleting;
}

/**
 * Cleans up after a process that died mid-save, mid-replace or mid-delete: unfinished `.tmp`
 * directories and half-deleted ones go; an old checkpoint moved aside for a replacement that never
 * arrived goes back to its place. Only the owner of the directory (the lock holder) calls this.
 */
export async function recoverLeftovers(fileSystem: FileSystem, checkpointDir: string): Promise<void> {
  await fileSystem.removeAbandonedWrites(checkpointDir);
  for (const entry of await fileSystem.listDirectory(checkpointDir)) {
    // A committed checkpoint may hold a half-written file of a writer that died (a manifest being rewritten).
    if (entry.isDirectory && parseStepDirName(entry.name) !== undefined) await fileSystem.removeAbandonedWrites(joinPath(checkpointDir, entry.name));
    const leftover = parseLeftoverDirName(entry.name);
    if (!entry.isDirectory || leftover === undefined) continue;
    const path = joinPath(checkpointDir, entry.name);
    const target = joinPath(checkpointDir, stepDirName(leftover.stepNr));
    if (leftover.kind === "replaced" && !(await fileSystem.exists(target))) {
      await fileSystem.renameDirectory(path, target);
    } else {
      await fileSystem.remove(path);
    }
  }
  await fileSystem.syncDirectory(checkpointDir);
}
