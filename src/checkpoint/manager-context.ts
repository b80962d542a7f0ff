import { CheckpointError, InvalidArgumentError } from "../errors.js";
import type { FileSystem } from "../fs/file-system.js";
import type { Gangs } from "../gang/gang.js";
import type { TensorDumper, TensorLoader } from "../io/tensor-io.js";
import type { StateDict } from "../values/py-values.js";
import type { CommitProtocol } from "./commit-protocol.js";
import type { DirectoryOwner } from "./directory-owner.js";

/** How far the writing or reading of one file of a checkpoint has got. */
export interface CheckpointProgress {
  operation: "save" | "load";
  stepNr: number;
  /** The file's name within the checkpoint, e.g. `rank_0.pt`. */
  file: string;
  bytesDone: number;
  bytesTotal: number;
}

/** What the parts of a manager (writer, reader, pruner) share: its settings and collaborators. */
export interface ManagerContext {
  readonly checkpointDir: string;
  readonly gangs: Gangs;
  readonly fileSystem: FileSystem;
  readonly loader: TensorLoader;
  readonly dumper: TensorDumper;
  readonly verifyChecksums: boolean;
  readonly owner: DirectoryOwner;
  /** How checkpoints are committed and removed on this file system. */
  readonly commit: CommitProtocol;
  readonly onProgress: ((event: CheckpointProgress) => void) | undefined;
  /** Runs `work` unless another call on the manager is running (then throws). */
  exclusive<T>(work: () => Promise<T>): Promise<T>;
}

/** Rank 0 of the job: the one that owns the directory, publishes commits and prunes. */
export function isRoot(context: ManagerContext): boolean {
  return context.gangs.root.rank === 0;
}

/** A per-file progress callback for the loader or dumper, when the caller asked for progress. */
export function fileProgress(context: ManagerContext, operation: "save" | "load", stepNr: number, file: string): ((bytesDone: number, bytesTotal: number) => void) | undefined {
  const listener = context.onProgress;
  if (listener === undefined) return undefined;
  return (bytesDone, bytesTotal) => listener({ operation, stepNr, file, bytesDone, bytesTotal });
}

/** One call at a time: interleaved calls on one manager would corrupt its transaction. */
export class OneCallAtATime {
  private busy = false;

  async run<T>(work: () => Promise<T>): Promise<T> {
    if (this.busy) throw new CheckpointError(undefined, "another call on this checkpoint manager is still running: await each call before making the next");
    this.busy = true;
    try {
      return await work();
    } finally {
      this.busy = false;
    }
  }
}

export function checkStepNr(stepNr: number): void {
  if (!Number.isSafeInteger(stepNr) || stepNr < 0) throw new InvalidArgumentError(`a step number must be a non-negative integer, got ${String(stepNr)}`);
}

export function isPlainDict(value: unknown): value is StateDict {
  if (typeof value !== "object" || value === null) return false;
  const prototype = Object.getPrototypeOf(value);
  return prototype === Object.prototype || prototype === null;
}
