import { crc32 } from "../formats/crc32.js";
import type { FileSystem } from "../fs/file-system.js";
import { joinPath } from "../fs/paths.js";
import { digestFile } from "../io/file-digest.js";
import { CARBON_COPY_DIR, MANIFEST_FILE } from "./layout.js";
import type { ManagerContext } from "./manager-context.js";
import { MANIFEST_FORMAT, MANIFEST_VERSION, manifestFile, type Manifest, type ManifestFile, type ManifestShardedTensor, type SaveCost } from "./manifest.js";

/** What rank 0 needs to know to publish a checkpoint every rank has written its files for. */
export interface Publication {
  stepNr: number;
  tmpDir: string;
  /** What each rank reported writing, with digests computed while writing. */
  reported: Record<string, ManifestFile>[];
  /** The sharded tensors in the rank files, merged across ranks. */
  sharded: ManifestShardedTensor[];
  /** How the score was saved, when one was. */
  lowerBetter: boolean | undefined;
  /** When beginCheckpoint was called and how long the caller has been blocked so far (performance.now() milliseconds). */
  timing: { startedAt: number; blockedMs: number; commitCalledAt: number };
}

/**
 * Rank 0's half of the commit: copy `cc/`, make the manifest of every file in the directory
 * (digests from the ranks that wrote them; read back only for files no rank reported, as when
 * FakeGangs play the other ranks), then commit it as the storage does (see CommitProtocol).
 */
export async function publishCheckpoint(context: ManagerContext, publication: Publication): Promise<void> {
  const { fileSystem, checkpointDir, gangs } = context;
  const { stepNr, tmpDir } = publication;
  const known = new Map<string, ManifestFile>();
  for (const files of publication.reported) for (const [name, file] of Object.entries(files)) known.set(name, file);
  for (const [name, file] of await copyCarbonCopies(fileSystem, checkpointDir, tmpDir, known)) known.set(name, file);

  const files: Record<string, ManifestFile> = {};
  for (const name of await listFilesRecursively(fileSystem, tmpDir)) {
    files[name] = known.get(name) ?? manifestFile(await digestFile(fileSystem, joinPath(tmpDir, name)));
  }
  const missing = [...known.keys()].filter((name) => !(name in files));
  if (missing.length > 0) throw new Error(`files reported written are missing from ${tmpDir}: ${missing.join(", ")}`);

  const now = performance.now();
  const { startedAt, blockedMs, commitCalledAt } = publication.timing;
  const save: SaveCost = {
    // A foreground commit blocks its caller until here; a background one returned long ago.
    blockedMs: Math.round(blockedMs + (commitCalledAt > 0 ? now - commitCalledAt : 0)),
    durableMs: Math.round(now - startedAt),
    bytesWritten: Object.values(files).reduce((sum, file) => sum + file.size, 0),
  };
  const manifest: Manifest = {
    format: MANIFEST_FORMAT,
    version: MANIFEST_VERSION,
    stepNr,
    createdAt: new Date().toISOString(),
    dpSize: gangs.dp.size,
    tpSize: gangs.tp.size,
    modelOnly: false,
    files,
    ...(publication.lowerBetter === undefined ? {} : { lowerBetter: publication.lowerBetter }),
    ...(publication.sharded.length > 0 ? { sharded: publication.sharded } : {}),
    save,
  };
  await context.commit.publish(checkpointDir, stepNr, tmpDir, manifest);
}

/** Copies the files of `<checkpointDir>/cc/` into the checkpoint; returns their digests by name. */
async function copyCarbonCopies(fileSystem: FileSystem, checkpointDir: string, tmpDir: string, written: ReadonlyMap<string, ManifestFile>): Promise<Map<string, ManifestFile>> {
  const source = joinPath(checkpointDir, CARBON_COPY_DIR);
  const copied = new Map<string, ManifestFile>();
  for (const name of await listFilesRecursively(fileSystem, source)) {
    const target = joinPath(tmpDir, name);
    // Any rank may have written the file (rank_1.pt under dp=2), not only this one: look on disk.
    if (written.has(name) || name === MANIFEST_FILE || (await fileSystem.exists(target))) {
      throw new Error(`cc/${name} would overwrite the checkpoint's own ${name}`);
    }
    if (name.includes("/")) await fileSystem.makeDirectory(joinPath(target, ".."));
    const bytes = await fileSystem.readFile(joinPath(source, name));
    await fileSystem.writeFile(target, bytes);
    copied.set(name, manifestFile({ size: bytes.byteLength, crc32: crc32(bytes) }));
  }
  return copied;
}

/** Every file under `dir`, relative to it, sorted. */
async function listFilesRecursively(fileSystem: FileSystem, dir: string, prefix = ""): Promise<string[]> {
  const names: string[] = [];
  for (const entry of await fileSystem.listDirectory(dir)) {
    const name = prefix === "" ? entry.name : `${prefix}/${entry.name}`;
    if (entry.isDirectory) names.push(...(await listFilesRecursively(fileSystem, joinPath(dir, entry.name), name)));
    else names.push(name);
  }
  return names.sort();
}
