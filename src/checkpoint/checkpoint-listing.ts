import type { FileSystem } from "../fs/file-system.js";
import { fileSystemForPath } from "../fs/file-system-for-path.js";
import { joinPath } from "../fs/paths.js";
import { findCheckpoint, type CheckpointInfo } from "./checkpoint-directory.js";
import { CARBON_COPY_DIR, LOCK_FILE, MANIFEST_FILE, MODEL_CARD_FILE, parseLeftoverDirName, parseStepDirName } from "./layout.js";
import { bestStep } from "./retention.js";

/** One directory of a checkpoint directory, as `ckpt ls` shows it. */
export interface CheckpointSummary {
  stepNr: number;
  /** The directory's name: `step_1000`, `step_1000.tmp`, ... */
  name: string;
  /** The directory holding its files: `step_N`, or on object storage the save directory in it. */
  path: string;
  /** Where its manifest.json is (or would be). */
  manifestPath: string;
  /**
   * `committed`: a checkpoint; `unfinished`: a save in progress or cut off (`.tmp`), never loaded;
   * `deleting`: a deletion in progress or cut off; `damaged`: committed but its manifest or score
   * cannot be read (`problem` says why).
   */
  status: "committed" | "unfinished" | "deleting" | "damaged";
  problem: string | undefined;
  /** A problem that leaves it usable, e.g. a score.txt without a number (the step is unscored). */
  warning: string | undefined;
  /** Higher is better, as stored in score.txt. */
  score: number | undefined;
  /** The score as the user saved it (a loss stays positive); undefined when its direction is unknown. */
  scoreAsSaved: number | undefined;
  /** True when saved with lowerBetter, false when higher is better, undefined when unknown (fairseq2, older manifests). */
  lowerBetter: boolean | undefined;
  /** Bytes of all its files. */
  size: number;
  /** Its files, relative to it, sorted. */
  files: string[];
  /** The size of each file. */
  fileSizes: Record<string, number>;
  /** Written by this library (false for fairseq2's checkpoints and unfinished ones). */
  hasManifest: boolean;
  /** Only the model is left (pruned with preserveModel): loadable as a model, not resumable. */
  modelOnly: boolean;
  /** A committed checkpoint that training can resume from. */
  resumable: boolean;
  /** The checkpoint loadLastCheckpoint() would load. */
  isLast: boolean;
  /** The checkpoint with the best score. */
  isBest: boolean;
  dpSize: number | undefined;
  tpSize: number | undefined;
}

export interface CheckpointDirectoryListing {
  checkpointDir: string;
  /** By step, committed ones before unfinished ones of the same step. */
  checkpoints: CheckpointSummary[];
  lastStepNr: number | undefined;
  bestStepNr: number | undefined;
  /** True when the directory has anything of a checkpoint directory (steps, model.yaml, cc/, the lock). */
  looksLikeCheckpointDir: boolean;
}

const STATUS_ORDER = { committed: 0, damaged: 0, unfinished: 1, deleting: 2 } as const;

/**
 * Describes every checkpoint in a directory, committed or not, without reading tensors. Unlike
 * the manager's listCheckpoints, a checkpoint whose manifest or score is damaged is listed (as
 * `damaged`) instead of failing the whole listing.
 *
 * @example
 * const { checkpoints, lastStepNr } = await listCheckpointDirectory("checkpoints");
 */
export async function listCheckpointDirectory(checkpointDir: string, options: { fileSystem?: FileSystem } = {}): Promise<CheckpointDirectoryListing> {
  const fileSystem = options.fileSystem ?? fileSystemForPath(checkpointDir);
  const entries = await fileSystem.listDirectory(checkpointDir);
  const committed = new Map<number, string>();
  const replaced = new Map<number, string>();
  const others: { stepNr: number; name: string; status: "unfinished" | "deleting" }[] = [];
  let looksLikeCheckpointDir = false;
  for (const entry of entries) {
    if ([MODEL_CARD_FILE, CARBON_COPY_DIR, LOCK_FILE].includes(entry.name)) looksLikeCheckpointDir = true;
    if (!entry.isDirectory) continue;
    const stepNr = parseStepDirName(entry.name);
    const leftover = parseLeftoverDirName(entry.name);
    if (stepNr !== undefined) committed.set(stepNr, entry.name);
    else if (leftover?.kind === "replaced") replaced.set(leftover.stepNr, entry.name);
    else if (leftover !== undefined) others.push({ stepNr: leftover.stepNr, name: entry.name, status: leftover.kind === "tmp" ? "unfinished" : "deleting" });
  }
  // A step moved aside while its re-save was renamed in is still that step (see checkpoint-directory).
  for (const [stepNr, name] of replaced) if (!committed.has(stepNr)) committed.set(stepNr, name);

  const summaries: CheckpointSummary[] = [];
  for (const [stepNr, name] of committed) {
    let info: CheckpointInfo | undefined;
    let problem: string | undefined;
    try {
      info = await findCheckpoint(fileSystem, checkpointDir, stepNr);
      problem = info?.damaged;
    } catch (error) {
      problem = (error as Error).message;
    }
    if (info === undefined && problem === undefined) {
      // On a local disk the step was pruned while this listing ran: it is gone, not unfinished.
      if (fileSystem.supportsRename) continue;
      // Object storage: a step with no manifest is a save that never committed (or a deletion under way).
      others.push({ stepNr, name, status: "unfinished" });
      continue;
    }
    const path = info?.path ?? joinPath(checkpointDir, name);
    // An unreadable step is listed (as damaged, below) with no files rather than failing the listing.
    const { files, size, sizes } = await checkpointFiles(fileSystem, path, info?.manifestPath).catch(() => ({ files: [], size: 0, sizes: new Map<string, number>() }));
    const summary = blank(stepNr, name, path, "committed", files, size, sizes);
    summary.manifestPath = info?.manifestPath ?? joinPath(path, MANIFEST_FILE);
    if (problem !== undefined) {
      summary.status = "damaged";
      summary.problem = problem;
    } else if (info !== undefined) {
      Object.assign(summary, {
        warning: info.warning,
        score: info.score,
        scoreAsSaved: info.scoreAsSaved,
        lowerBetter: info.lowerBetter,
        hasManifest: info.manifest !== undefined,
        modelOnly: info.modelOnly,
        resumable: !info.modelOnly,
        dpSize: info.manifest?.dpSize,
        tpSize: info.manifest?.tpSize,
      });
    }
    summaries.push(summary);
  }
  for (const { stepNr, name, status } of others) {
    const path = joinPath(checkpointDir, name);
    const { files, size, sizes } = await filesWithSizes(fileSystem, path);
    summaries.push(blank(stepNr, name, path, status, files, size, sizes));
  }
  summaries.sort((a, b) => a.stepNr - b.stepNr || STATUS_ORDER[a.status] - STATUS_ORDER[b.status] || a.name.localeCompare(b.name));

  const good = summaries.filter((s) => s.status === "committed");
  const lastStepNr = good.filter((s) => s.resumable).at(-1)?.stepNr;
  const bestStepNr = bestStep(good);
  for (const s of good) {
    s.isLast = s.stepNr === lastStepNr;
    s.isBest = s.stepNr === bestStepNr;
  }
  return { checkpointDir, checkpoints: summaries, lastStepNr, bestStepNr, looksLikeCheckpointDir: looksLikeCheckpointDir || summaries.length > 0 };
}

function blank(
  stepNr: number,
  name: string,
  path: string,
  status: CheckpointSummary["status"],
  files: string[],
  size: number,
  sizes: Map<string, number>,
): CheckpointSummary {
  return {
    stepNr, name, path, manifestPath: joinPath(path, MANIFEST_FILE), status, problem: undefined, warning: undefined, score: undefined, scoreAsSaved: undefined, lowerBetter: undefined, size, files, fileSizes: Object.fromEntries(files.map((f) => [f, sizes.get(f)!])),
    hasManifest: false, modelOnly: false, resumable: false, isLast: false, isBest: false, dpSize: undefined, tpSize: undefined,
  };
}

/**
 * The files of a checkpoint with their sizes: those under `dir`, and its manifest where that lies
 * outside `dir` (object storage keeps it in `step_N/`, the files in a save directory below).
 */
export async function checkpointFiles(fileSystem: FileSystem, dir: string, manifestPath: string | undefined): Promise<{ files: string[]; size: number; sizes: Map<string, number> }> {
  const listed = await filesWithSizes(fileSystem, dir);
  if (manifestPath === undefined || manifestPath === joinPath(dir, MANIFEST_FILE)) return listed;
  const reader = await fileSystem.openReader(manifestPath);
  const manifestSize = reader.size;
  await reader.close();
  listed.sizes.set(MANIFEST_FILE, manifestSize);
  return { files: [...listed.sizes.keys()].sort(), size: listed.size + manifestSize, sizes: listed.sizes };
}

/** Every file under `dir` (relative, sorted) and their total size. */
export async function filesWithSizes(fileSystem: FileSystem, dir: string): Promise<{ files: string[]; size: number; sizes: Map<string, number> }> {
  const sizes = new Map<string, number>();
  const walk = async (path: string, prefix: string): Promise<void> => {
    for (const entry of await fileSystem.listDirectory(path)) {
      const name = prefix === "" ? entry.name : `${prefix}/${entry.name}`;
      if (entry.isDirectory) {
        await walk(joinPath(path, entry.name), name);
        continue;
      }
      try {
        const reader = await fileSystem.openReader(joinPath(path, entry.name));
        sizes.set(name, reader.size);
        await reader.close();
      } catch {
        sizes.set(name, 0); // vanished or unreadable since the listing: counted, with no bytes
      }
    }
  };
  await walk(dir, "");
  const files = [...sizes.keys()].sort();
  let size = 0;
  for (const bytes of sizes.values()) size += bytes;
  return { files, size, sizes };
}
