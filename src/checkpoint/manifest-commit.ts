import { randomBytes } from "node:crypto";
import type { FileSystem } from "../fs/file-system.js";
import { joinPath } from "../fs/paths.js";
import type { CheckpointInfo } from "./checkpoint-directory.js";
import type { CommitProtocol } from "./commit-protocol.js";
import { MANIFEST_FILE, isSaveDirName, parseStepDirName, stepDirName } from "./layout.js";
import { decodeManifest, encodeManifest, type Manifest } from "./manifest.js";

/**
 * The commit protocol of storage without rename (object stores). A save of step N writes its files
 * under `step_N/save-<id>/`, a prefix no other save uses; the commit is one write of
 * `step_N/manifest.json`, which names that prefix (`filesDir`). Writing an object is atomic, so a
 * reader sees the old manifest or the new one, each naming files that are all there: a re-saved
 * step never shows a mix, and a step without a manifest does not exist. The files of the replaced
 * save go after the commit; a crash before that leaves them to recover(), which removes every
 * `save-*` prefix its step's manifest does not name.
 */
export class ManifestCommit implements CommitProtocol {
  constructor(private readonly fileSystem: FileSystem) {}

  fixedStaging(): undefined {
    return undefined; // each save has a directory of its own, which only rank 0 can tell
  }

  async prepareStaging(checkpointDir: string, stepNr: number): Promise<string> {
    // The time keeps names in order for people reading a bucket; the random part makes them unique.
    const name = `save-${Date.now().toString(36)}-${randomBytes(4).toString("hex")}`;
    const dir = joinPath(checkpointDir, stepDirName(stepNr), name);
    await this.fileSystem.makeDirectory(dir); // nothing to make on object storage; a disk needs it
    return dir;
  }

  async discard(checkpointDir: string, stepNr: number, stagingDir: string): Promise<void> {
    await this.fileSystem.remove(stagingDir);
    await this.removeIfEmpty(joinPath(checkpointDir, stepDirName(stepNr)));
  }

  async publish(checkpointDir: string, stepNr: number, stagingDir: string, manifest: Manifest): Promise<void> {
    const stepDir = joinPath(checkpointDir, stepDirName(stepNr));
    const filesDir = stagingDir.slice(stepDir.length + 1);
    if (stagingDir !== joinPath(stepDir, filesDir) || !isSaveDirName(filesDir)) throw new Error(`${stagingDir} is not a save directory of step ${stepNr}`);
    const previous = await this.committedManifest(stepDir, stepNr);
    await this.fileSystem.writeFile(joinPath(stepDir, MANIFEST_FILE), encodeManifest({ ...manifest, filesDir }));
    if (previous !== undefined) await this.removeFilesOf(stepDir, previous, filesDir);
  }

  async withdraw(checkpointDir: string, info: CheckpointInfo): Promise<() => Promise<void>> {
    const stepDir = joinPath(checkpointDir, stepDirName(info.stepNr));
    await this.fileSystem.remove(joinPath(stepDir, MANIFEST_FILE));
    // Only what this checkpoint was made of: a new save of the same step may be writing meanwhile.
    const manifest = info.manifest;
    return async () => {
      if (manifest !== undefined) await this.removeFilesOf(stepDir, manifest, undefined);
      else await this.fileSystem.remove(info.path);
      await this.removeIfEmpty(stepDir);
    };
  }

  async recover(checkpointDir: string): Promise<void> {
    await this.fileSystem.removeAbandonedWrites(checkpointDir);
    for (const entry of await this.fileSystem.listDirectory(checkpointDir)) {
      const stepNr = parseStepDirName(entry.name);
      if (!entry.isDirectory || stepNr === undefined) continue;
      const stepDir = joinPath(checkpointDir, entry.name);
      const entries = await this.fileSystem.listDirectory(stepDir);
      let named: string | undefined;
      if (entries.some((e) => e.name === MANIFEST_FILE)) {
        try {
          named = decodeManifest(await this.fileSystem.readFile(joinPath(stepDir, MANIFEST_FILE)), stepNr).filesDir;
        } catch {
          continue; // a damaged manifest: nothing here can be judged a leftover, so nothing goes
        }
      }
      for (const e of entries) {
        if (e.isDirectory && isSaveDirName(e.name) && e.name !== named) await this.fileSystem.remove(joinPath(stepDir, e.name));
      }
      await this.removeIfEmpty(stepDir);
    }
  }

  /** A step directory with nothing left in it goes too (object storage has none; a disk would keep it). */
  private async removeIfEmpty(stepDir: string): Promise<void> {
    if ((await this.fileSystem.listDirectory(stepDir)).length === 0) await this.fileSystem.remove(stepDir);
  }

  private async committedManifest(stepDir: string, stepNr: number): Promise<Manifest | undefined> {
    try {
      return decodeManifest(await this.fileSystem.readFile(joinPath(stepDir, MANIFEST_FILE)), stepNr);
    } catch {
      return undefined; // none, or damaged: its files (if any) are left for a person to look at
    }
  }

  /** Removes the files a manifest named, unless they live in `keep` (the save that replaces them). */
  private async removeFilesOf(stepDir: string, manifest: Manifest, keep: string | undefined): Promise<void> {
    if (manifest.filesDir !== undefined) {
      if (manifest.filesDir !== keep) await this.fileSystem.remove(joinPath(stepDir, manifest.filesDir));
      return;
    }
    // A checkpoint copied here from a disk keeps its files directly in step_N/.
    for (const name of Object.keys(manifest.files)) await this.fileSystem.remove(joinPath(stepDir, name));
  }
}
