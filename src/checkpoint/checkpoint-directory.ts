import { CheckpointError } from "../errors.js";
import type { FileSystem } from "../fs/file-system.js";
import { joinPath } from "../fs/paths.js";
import {
  MANIFEST_FILE,
  SCORE_FILE,
  isModelFile,
  isRankFile,
  isReplicatedFile,
  parseLeftoverDirName,
  parseStepDirName,
} from "./layout.js";
import { decodeManifest, type Manifest } from "./manifest.js";
import { parseScore, savedScore } from "./score.js";

/** What is known about one committed checkpoint without reading its tensors. */
export interface CheckpointInfo {
  stepNr: number;
  /** The directory holding its files (normally `step_<N>`; `step_<N>/save-<id>` on object storage). */
  path: string;
  /** Names of the files (and `cc/` subdirectories) in it. */
  files: string[];
  /** Where its `manifest.json` is or would be: in `step_<N>`, whichever directory holds the files. */
  manifestPath: string;
  /** Written by this library; undefined for a checkpoint written by fairseq2. */
  manifest: Manifest | undefined;
  /** Only model files are left (retention with `preserveModel`): loadable as a model, not resumable. */
  modelOnly: boolean;
  /** Higher is better, as stored in score.txt; undefined without one. */
  score: number | undefined;
  /**
   * When it was committed, in milliseconds since the epoch: the manifest's `createdAt`, or for a
   * checkpoint without a manifest (fairseq2) its directory's modification time; undefined when
   * neither is known. Retention's `keepOnePer` dates checkpoints by it.
   */
  createdAt: number | undefined;
  /**
   * Whether the score was saved with `lowerBetter` (from the manifest); undefined without a score,
   * and when the direction is unknown (fairseq2's checkpoints, manifests of earlier versions).
   */
  lowerBetter: boolean | undefined;
  /** The score as it was given to saveScore (`score` negated back when lowerBetter); undefined when unknown. */
  scoreAsSaved: number | undefined;
  /**
   * Why the checkpoint cannot be trusted (its manifest or score cannot be read), or undefined.
   * A damaged checkpoint is listed but never resumed from, loaded, counted or pruned by retention.
   */
  damaged: string | undefined;
  /** A problem that leaves the checkpoint usable, e.g. a score.txt that holds no number (unscored). */
  warning: string | undefined;
}

/**
 * Where committed step `N` lives: `step_N`, or `step_N.replaced` when a re-save of the same step
 * was cut off after moving the old one aside (recovery moves it back).
 */
async function committedDirs(fileSystem: FileSystem, checkpointDir: string): Promise<Map<number, string>> {
  const dirs = new Map<number, string>();
  const replaced = new Map<number, string>();
  for (const entry of await fileSystem.listDirectory(checkpointDir)) {
    if (!entry.isDirectory) continue;
    const stepNr = parseStepDirName(entry.name);
    if (stepNr !== undefined) {
      dirs.set(stepNr, joinPath(checkpointDir, entry.name));
      continue;
    }
    const leftover = parseLeftoverDirName(entry.name);
    if (leftover?.kind === "replaced") replaced.set(leftover.stepNr, joinPath(checkpointDir, entry.name));
  }
  for (const [stepNr, path] of replaced) if (!dirs.has(stepNr)) dirs.set(stepNr, path);
  return dirs;
}

/** Every committed checkpoint, in ascending step order. */
export async function listCheckpoints(fileSystem: FileSystem, checkpointDir: string): Promise<CheckpointInfo[]> {
  const dirs = await committedDirs(fileSystem, checkpointDir);
  const steps = [...dirs.keys()].sort((a, b) => a - b);
  const infos = await Promise.all(steps.map((stepNr) => readInfo(fileSystem, stepNr, dirs.get(stepNr)!)));
  return infos.filter((info) => info !== undefined);
}

/**
 * One committed checkpoint, or undefined when there is none of that step. Looked up as listing
 * finds it, so a file named `step_N` is no checkpoint here either.
 */
export async function findCheckpoint(fileSystem: FileSystem, checkpointDir: string, stepNr: number): Promise<CheckpointInfo | undefined> {
  const path = (await committedDirs(fileSystem, checkpointDir)).get(stepNr);
  return path === undefined ? undefined : readInfo(fileSystem, stepNr, path);
}

/**
 * What is known of the checkpoint in `stepDir`; undefined when storage without rename holds no
 * manifest there (a save that never committed, or a deletion that has begun: no checkpoint).
 */
async function readInfo(fileSystem: FileSystem, stepNr: number, stepDir: string): Promise<CheckpointInfo | undefined> {
  const manifestPath = joinPath(stepDir, MANIFEST_FILE);
  let path = stepDir;
  let files: string[];
  const unreadable = (error: unknown): CheckpointInfo => {
    // One unreadable step (permissions, I/O error) must not hide the others.
    const damaged = `step ${stepNr} cannot be read: ${(error as Error).message}`;
    return { stepNr, path, files: [], manifestPath, manifest: undefined, modelOnly: false, score: undefined, lowerBetter: undefined, scoreAsSaved: undefined, createdAt: undefined, damaged, warning: undefined };
  };
  // A step pruned (renamed away) after it was listed is no longer there: not a damaged one.
  const vanished = async (): Promise<boolean> => !(await fileSystem.exists(stepDir).catch(() => true));
  let links: string[];
  try {
    const entries = await fileSystem.listDirectory(stepDir);
    files = entries.map((entry) => entry.name);
    links = entries.filter((entry) => entry.isSymbolicLink === true).map((entry) => entry.name);
  } catch (error) {
    if (await vanished()) return undefined;
    return unreadable(error);
  }
  // A directory that is gone lists as empty on a local disk.
  if (files.length === 0 && (await vanished())) return undefined;
  if (!fileSystem.supportsRename && !files.includes(MANIFEST_FILE)) return undefined;
  // One checkpoint's bit rot must not hide the others: it is marked damaged, not thrown.
  let damaged: string | undefined;
  let manifest: Manifest | undefined;
  // Neither ckpt nor fairseq2 writes links: one in a checkpoint leads wherever its author chose
  // (even to a byte-identical copy the checksums would pass), so nothing of the step is read.
  if (links.length > 0) {
    damaged = `${links.join(", ")} of step ${stepNr} ${links.length === 1 ? "is a symbolic link" : "are symbolic links"}: a checkpoint's files must be inside it`;
  } else if (files.includes(MANIFEST_FILE)) {
    try {
      manifest = decodeManifest(await fileSystem.readFile(manifestPath), stepNr);
    } catch (error) {
      if (await vanished()) return undefined;
      damaged = (error as Error).message;
    }
  }
  if (manifest?.filesDir !== undefined) {
    // Saved on object storage: the files are in the save directory the manifest names.
    path = joinPath(stepDir, manifest.filesDir);
    try {
      files = (await fileSystem.listDirectory(path)).map((entry) => entry.name);
    } catch (error) {
      return unreadable(error);
    }
  }
  // A bad score makes the step unscored, never unresumable: fairseq2 writes "nan" for a NaN loss.
  let score: number | undefined;
  let warning: string | undefined;
  if (files.includes(SCORE_FILE) && links.length === 0) {
    try {
      score = parseScore(new TextDecoder().decode(await fileSystem.readFile(joinPath(path, SCORE_FILE))), stepNr);
    } catch (error) {
      const why = error instanceof CheckpointError ? error.message : `cannot read score.txt of step ${stepNr}: ${(error as Error).message}`;
      warning = `${why}; step ${stepNr} is treated as unscored`;
    }
  }
  // Without a manifest (fairseq2), a checkpoint pruned to its model has model files and no rank or
  // replicated files (fairseq2 writes no rank file when "*" makes everything replicated).
  const modelOnly = manifest?.modelOnly ?? (files.some(isModelFile) && !files.some((name) => isRankFile(name) || isReplicatedFile(name)));
  const lowerBetter = score === undefined ? undefined : manifest?.lowerBetter;
  const scoreAsSaved = score === undefined || lowerBetter === undefined ? undefined : savedScore(score, lowerBetter);
  return { stepNr, path, files, manifestPath, manifest, modelOnly, score, lowerBetter, scoreAsSaved, createdAt: await creationTime(fileSystem, path, manifest), damaged, warning };
}

/** See CheckpointInfo.createdAt. A manifest's unparseable date is no date, not damage: it only dates. */
async function creationTime(fileSystem: FileSystem, path: string, manifest: Manifest | undefined): Promise<number | undefined> {
  if (manifest !== undefined) {
    const time = typeof manifest.createdAt === "string" ? Date.parse(manifest.createdAt) : NaN;
    return Number.isFinite(time) ? time : undefined;
  }
  // The directory's mtime moves when files are added or removed in it (a preserveModel strip does).
  return (await fileSystem.modifiedTime?.(path)) ?? undefined;
}
