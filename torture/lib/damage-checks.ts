// The two looks the corruption classes take at a damaged step, on a disk or on S3: a fresh
// manager's load (the values and metadata a resuming run reads) and verifyCheckpoints. Each class
// decides what the outcomes mean; these only gather them.
import { FileCheckpointManager, isCkptError, verifyCheckpoints, type FileSystem } from "../../src/index.js";
import type { ClassFailure } from "../types.js";
import { fingerprint } from "./fingerprint.js";

/** Everything a resuming run reads of a step: the state and the metadata. */
export async function loadFingerprint(manager: FileCheckpointManager, stepNr: number): Promise<string> {
  const state = await manager.loadCheckpoint(stepNr);
  const metadata = await manager.loadMetadata(stepNr);
  return fingerprint({ state, metadata });
}

export interface DamagedLoad {
  /** What the load threw, if anything. */
  error: unknown;
  /** The load returned what `saved` fingerprints. */
  same: boolean;
  /** With `listFirst`, whether getStepNumbers still listed the step before the load (else true). */
  listed: boolean;
}

/** Loads step `stepNr` of `dir` with a fresh manager and compares it with the fingerprint `saved`. */
export async function loadDamaged(dir: string, stepNr: number, saved: string, options: { fileSystem?: FileSystem; listFirst?: boolean } = {}): Promise<DamagedLoad> {
  const { fileSystem } = options;
  const manager = new FileCheckpointManager({ checkpointDir: dir, ...(fileSystem === undefined ? {} : { fileSystem }) });
  const load: DamagedLoad = { error: undefined, same: false, listed: true };
  try {
    if (options.listFirst === true) load.listed = (await manager.getStepNumbers()).includes(stepNr);
    load.same = (await loadFingerprint(manager, stepNr)) === saved;
  } catch (error) {
    load.error = error;
  } finally {
    await manager.close();
  }
  return load;
}

/** A load that threw something other than the library's own errors, as a failure; else undefined. */
export function uncaughtAtLoad(load: DamagedLoad): ClassFailure | undefined {
  return load.error !== undefined && !isCkptError(load.error) ? { kind: "uncaught exception", detail: `load threw ${(load.error as Error).stack ?? String(load.error)}` } : undefined;
}

/** The problems verifyCheckpoints reports for step `stepNr` (its error's message, if it throws one of ours), or a failure. */
export async function verifyDamaged(dir: string, stepNr: number, fileSystem?: FileSystem): Promise<string[] | ClassFailure> {
  try {
    const report = await verifyCheckpoints(dir, { stepNr, ...(fileSystem === undefined ? {} : { fileSystem }) });
    return report.checkpoints.flatMap((c) => c.problems.map((p) => `${p.file}: ${p.problem}`));
  } catch (error) {
    if (!isCkptError(error)) return { kind: "uncaught exception", detail: `verify threw ${(error as Error).stack ?? String(error)}` };
    return [(error as Error).message];
  }
}

/** The failure left when neither look named a damaged file: an error that names none, or values nobody reported. */
export function unreported(load: DamagedLoad, problems: string[]): ClassFailure {
  if (load.error !== undefined) return { kind: "error names no file", detail: `load: ${(load.error as Error).message}; verify: ${problems.join("; ") || "sound"}` };
  return { kind: "undetected corruption", detail: `the load returned the saved values and verify found ${problems.length === 0 ? "nothing" : problems.join("; ")}` };
}
