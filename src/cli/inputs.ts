import { stat } from "node:fs/promises";
import { basename, dirname, join, resolve } from "node:path";
import {
  AutoTensorLoader,
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
import { CliError } from "./output.js";
import type { Progress } from "./progress.js";

/** What a path on the command line names. */
export type Target =
  | { kind: "file"; path: string; size: number }
  /** A committed checkpoint's directory, `<checkpointDir>/step_<N>`. */
  | { kind: "step"; path: string; checkpointDir: string; stepNr: number }
  /** Any other directory: a checkpoint directory, an unfinished `.tmp` step, or something else. */
  | { kind: "directory"; path: string };

const STEP_DIR = /^step_(0|[1-9]\d{0,15})$/;

export async function classify(path: string): Promise<Target> {
  let info;
  try {
    info = await stat(path);
  } catch (error) {
    const code = (error as { code?: string }).code;
    throw new CliError(code === "ENOENT" ? `${path}: no such file or directory` : `${path}: cannot be read (${(error as Error).message})`);
  }
  if (info.isFile()) return { kind: "file", path, size: info.size };
  if (!info.isDirectory()) throw new CliError(`${path} is neither a file nor a directory`);
  const match = STEP_DIR.exec(basename(resolve(path)));
  if (match !== null) return { kind: "step", path, checkpointDir: dirname(resolve(path)), stepNr: Number(match[1]) };
  return { kind: "directory", path };
}

/** The listing of a checkpoint directory; a clear error for a step directory or an unrelated one. */
export async function requireCheckpointDir(path: string): Promise<CheckpointDirectoryListing> {
  const target = await classify(path);
  if (target.kind === "file") throw new CliError(`${path} is a file, not a checkpoint directory`);
  if (target.kind === "step") {
    throw new CliError(`${path} is one checkpoint, not a checkpoint directory: give its parent (${target.checkpointDir})`);
  }
  const listing = await listCheckpointDirectory(path);
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
export async function loadFile(path: string, progress?: Progress): Promise<LoadedFile> {
  const loader = new AutoTensorLoader();
  const { format, state, metadata, shards } = await loader.loadAny(path, progress === undefined ? {} : { onProgress: (done, total) => progress.update(done, total) });
  // An index's size is that of its shards: it bounds the walks over the state they hold.
  const size = shards !== undefined ? shards.reduce((sum, shard) => sum + shard.size, 0) : (await stat(path)).size;
  return { path, format, state, metadata, size };
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
  const listing = await listCheckpointDirectory(checkpointDir);
  const committed = listing.checkpoints.filter((c) => c.status === "committed" || c.status === "damaged");
  const chosen = stepNr === undefined ? committed.at(-1) : committed.find((c) => c.stepNr === stepNr);
  if (chosen === undefined) {
    throw new CliError(stepNr === undefined ? `${checkpointDir} has no committed checkpoint` : `${checkpointDir} has no checkpoint ${stepNr}`);
  }
  // Tensor-parallel model files, or no model file (FSDP shards in the rank files): join the shards.
  const shards = chosen.files.filter((name) => /^model\.\d+\.pt$/.test(name));
  if (shards.length > 0 || !chosen.files.includes("model.pt")) {
    return { stepNr: chosen.stepNr, model: await loadConsolidatedModel(checkpointDir, chosen.stepNr), size: chosen.size };
  }
  const manager = new FileCheckpointManager({
    checkpointDir,
    tensorLoader: new AutoTensorLoader(),
    ...(progress === undefined ? {} : { onProgress: ({ bytesDone, bytesTotal }) => progress.update(bytesDone, bytesTotal) }),
  });
  return { stepNr: chosen.stepNr, model: await manager.loadModel(chosen.stepNr), size: chosen.size };
}

export function stepPath(checkpointDir: string, stepNr: number): string {
  return join(checkpointDir, `step_${stepNr}`);
}
