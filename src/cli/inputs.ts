import { stat } from "node:fs/promises";
import { basename, dirname, resolve } from "node:path";
import {
  AutoTensorLoader,
  type FileSystem,
  FileCheckpointManager,
  Tensor,
  listCheckpointDirectory,
  loadConsolidatedModel,
  unwrapModelFile,
  type CheckpointDirectoryListing,
  type StateDict,
  type StateValue,
  type TensorFileFormat,
} from "../index.js";
import { findCheckpoint } from "../checkpoint/checkpoint-directory.js";
import { fileSystemForPath } from "../fs/file-system-for-path.js";
import { isUrlPath, joinPath } from "../fs/paths.js";
import { CliError } from "./output.js";
import type { Progress } from "./progress.js";

/** What a path on the command line names, and the storage it is on (a disk, or s3://). */
export type Target = (
  | { kind: "file"; path: string; size: number }
  /**
   * A committed checkpoint's directory, `<checkpointDir>/step_<N>`; `filesPath` holds its files
   * (the same directory on a disk, the save directory its manifest names on object storage).
   */
  | { kind: "step"; path: string; checkpointDir: string; stepNr: number; filesPath: string }
  /** Any other directory: a checkpoint directory, an unfinished `.tmp` step, or something else. */
  | { kind: "directory"; path: string }
) & { fileSystem: FileSystem };

const STEP_DIR = /^step_(0|[1-9]\d{0,15})$/;

export async function classify(path: string): Promise<Target> {
  const fileSystem = fileSystemForPath(path);
  const kind = isUrlPath(path) ? await probeObjectPath(fileSystem, path) : await probeLocalPath(path);
  if (kind.kind === "file") return { kind: "file", path, size: kind.size, fileSystem };
  const [parent, name] = isUrlPath(path) ? [joinPath(path, ".."), path.replace(/\/+$/, "").split("/").pop()!] : [dirname(resolve(path)), basename(resolve(path))];
  const match = STEP_DIR.exec(name);
  if (match === null) return { kind: "directory", path, fileSystem };
  const stepNr = Number(match[1]);
  const info = await findCheckpoint(fileSystem, parent, stepNr).catch(() => undefined);
  return { kind: "step", path, checkpointDir: parent, stepNr, filesPath: info?.path ?? path, fileSystem };
}

async function probeLocalPath(path: string): Promise<{ kind: "file"; size: number } | { kind: "directory" }> {
  let info;
  try {
    info = await stat(path);
  } catch (error) {
    const code = (error as { code?: string }).code;
    throw new CliError(code === "ENOENT" ? `${path}: no such file or directory` : `${path}: cannot be read (${(error as Error).message})`);
  }
  if (info.isFile()) return { kind: "file", size: info.size };
  if (!info.isDirectory()) throw new CliError(`${path} is neither a file nor a directory`);
  return { kind: "directory" };
}

/** An object is a file; a prefix with objects under it is a directory; anything else is not there. */
async function probeObjectPath(fileSystem: FileSystem, path: string): Promise<{ kind: "file"; size: number } | { kind: "directory" }> {
  try {
    const reader = await fileSystem.openReader(path);
    const size = reader.size;
    await reader.close();
    return { kind: "file", size };
  } catch (error) {
    if ((error as { code?: string }).code !== "ENOENT") throw new CliError(`${path}: cannot be read (${(error as Error).message})`);
  }
  if ((await fileSystem.listDirectory(path)).length > 0) return { kind: "directory" };
  throw new CliError(`${path}: no such object or prefix`);
}

/** Names of the files (not directories) directly in a directory. */
export async function filesIn(fileSystem: FileSystem, dir: string): Promise<string[]> {
  return (await fileSystem.listDirectory(dir)).filter((entry) => !entry.isDirectory).map((entry) => entry.name);
}

/** The listing of a checkpoint directory; a clear error for a step directory or an unrelated one. */
export async function requireCheckpointDir(path: string): Promise<CheckpointDirectoryListing> {
  const target = await classify(path);
  if (target.kind === "file") throw new CliError(`${path} is a file, not a checkpoint directory`);
  if (target.kind === "step") {
    throw new CliError(`${path} is one checkpoint, not a checkpoint directory: give its parent (${target.checkpointDir})`);
  }
  const listing = await listCheckpointDirectory(path, { fileSystem: target.fileSystem });
  if (!listing.looksLikeCheckpointDir) throw new CliError(`${path} is not a checkpoint directory: it has no step_<N> directories`);
  return listing;
}

/** Files in a step directory that hold tensors, model files first (as loading merges them). */
export function tensorFilesOf(files: readonly string[]): string[] {
  const rank = (name: string): number =>
    /^model(\.\d+)?\.pt$/.test(name) ? 0 : /^replicated(\.\d+)?\.pt$/.test(name) ? 1 : /^rank_\d+(\.\d+)?\.pt$/.test(name) ? 2 : name === "metadata.pt" ? 3 : 4;
  return files.filter((name) => /\.(pt|pth|safetensors)$/.test(name) && !name.includes("/")).sort((a, b) => rank(a) - rank(b) || a.localeCompare(b, "en", { numeric: true }));
}

export interface LoadedFile {
  path: string;
  format: TensorFileFormat;
  state: StateValue;
  metadata: Map<string, string>;
  /** The file's size in bytes, which bounds the walks over its state (see walkBudget). */
  size: number;
}

/** Loads a tensor file, or every shard of a shard index (`*.index.json`) as one state dict. */
export async function loadFile(path: string, fileSystem: FileSystem, progress?: Progress): Promise<LoadedFile> {
  const loader = new AutoTensorLoader({ fileSystem });
  const { format, state, metadata, shards } = await loader.loadAny(path, progress === undefined ? {} : { onProgress: (done, total) => progress.update(done, total) });
  // An index's size is that of its shards: it bounds the walks over the state they hold.
  const size = shards !== undefined ? shards.reduce((sum, shard) => sum + shard.size, 0) : await fileSize(fileSystem, path);
  return { path, format, state, metadata, size };
}

async function fileSize(fileSystem: FileSystem, path: string): Promise<number> {
  const reader = await fileSystem.openReader(path);
  const size = reader.size;
  await reader.close();
  return size;
}

/**
 * The model state dict in a checkpoint's model file (`{<model_key>: ..., "model_key": ...}`, or
 * `{"model": ..., "model_key": ...}` as earlier versions wrote it), or the state itself for any
 * other file.
 */
export function unwrapModel(state: StateValue): StateValue {
  if (!isDict(state) || typeof state.model_key !== "string") return state;
  const { model, rest } = unwrapModelFile(state);
  return model !== undefined && Object.keys(rest).length === 0 ? model : state;
}

export function isDict(value: unknown): value is StateDict {
  if (typeof value !== "object" || value === null || Array.isArray(value) || value instanceof Tensor || value instanceof Map || ArrayBuffer.isView(value)) return false;
  const prototype = Object.getPrototypeOf(value);
  return prototype === Object.prototype || prototype === null;
}

/**
 * The model of a committed checkpoint, through the manager (checksums checked against the
 * manifest). Tensor-parallel shards cannot be joined without knowing how each tensor was split.
 */
export async function loadCheckpointModel(checkpointDir: string, stepNr: number | undefined, progress?: Progress): Promise<{ stepNr: number; model: StateDict; size: number }> {
  const fileSystem = fileSystemForPath(checkpointDir);
  const listing = await listCheckpointDirectory(checkpointDir, { fileSystem });
  const committed = listing.checkpoints.filter((c) => c.status === "committed" || c.status === "damaged");
  const chosen = stepNr === undefined ? committed.at(-1) : committed.find((c) => c.stepNr === stepNr);
  if (chosen === undefined) {
    throw new CliError(stepNr === undefined ? `${checkpointDir} has no committed checkpoint` : `${checkpointDir} has no checkpoint ${stepNr}`);
  }
  // Tensor-parallel model files, or no model file (FSDP shards in the rank files): join the shards.
  const shards = chosen.files.filter((name) => /^model\.\d+\.pt$/.test(name));
  if (shards.length > 0 || !chosen.files.includes("model.pt")) {
    return { stepNr: chosen.stepNr, model: await loadConsolidatedModel(checkpointDir, chosen.stepNr, { fileSystem }), size: chosen.size };
  }
  const manager = new FileCheckpointManager({
    checkpointDir,
    fileSystem,
    tensorLoader: new AutoTensorLoader({ fileSystem }),
    ...(progress === undefined ? {} : { onProgress: ({ bytesDone, bytesTotal }) => progress.update(bytesDone, bytesTotal) }),
  });
  return { stepNr: chosen.stepNr, model: await manager.loadModel(chosen.stepNr), size: chosen.size };
}

export function stepPath(checkpointDir: string, stepNr: number): string {
  return joinPath(checkpointDir, `step_${stepNr}`);
}
