/**
 * The error family. Every error this library throws on purpose is a `CkptError` with a stable
 * `code`; the original error, when there is one, is chained as `cause`.
 */

export type ErrorOptions = { cause?: unknown };

export class CkptError extends Error {
  /** A stable, machine-readable tag (e.g. `"ZIP_TRUNCATED"`, `"TENSOR_LOAD"`). */
  readonly code: string;

  constructor(code: string, message: string, options: ErrorOptions = {}) {
    super(message, "cause" in options ? { cause: options.cause } : undefined);
    this.code = code;
  }

  override get name(): string {
    return this.constructor.name;
  }
}

/**
 * A file's bytes do not follow its format (zip, pickle, the .pt layout, safetensors). Thrown by the
 * format readers, which work on bytes and do not know the path; `io` wraps it with the path.
 */
export class FormatError extends CkptError {}

/** A tensor file could not be read; `path` names it, `cause` says why. */
export class TensorLoadError extends CkptError {
  readonly path: string;

  constructor(path: string, message: string, options: ErrorOptions = {}) {
    super("TENSOR_LOAD", `${path}: ${message}`, options);
    this.path = path;
  }
}

/** A tensor file could not be written; `path` names it, `cause` says why. */
export class TensorDumpError extends CkptError {
  readonly path: string;

  constructor(path: string, message: string, options: ErrorOptions = {}) {
    super("TENSOR_DUMP", `${path}: ${message}`, options);
    this.path = path;
  }
}

/** A value given to a public function is not acceptable (wrong type, out of range, ...). */
export class InvalidArgumentError extends CkptError {
  constructor(message: string, options: ErrorOptions = {}) {
    super("INVALID_ARGUMENT", message, options);
  }
}

/** Base of the checkpoint manager's errors; `stepNr` names the checkpoint when one applies. */
export class CheckpointError extends CkptError {
  readonly stepNr: number | undefined;

  constructor(stepNr: number | undefined, message: string, options: ErrorOptions = {}, code = "CHECKPOINT") {
    super(code, message, options);
    this.stepNr = stepNr;
  }
}

/** No checkpoint of that step exists (`stepNr` is undefined when there is no checkpoint at all). */
export class CheckpointNotFoundError extends CheckpointError {
  constructor(stepNr: number | undefined, message: string, options: ErrorOptions = {}) {
    super(stepNr, message, options, "CHECKPOINT_NOT_FOUND");
  }
}

export class CheckpointSaveError extends CheckpointError {
  constructor(stepNr: number | undefined, message: string, options: ErrorOptions = {}) {
    super(stepNr, message, options, "CHECKPOINT_SAVE");
  }
}

export class CheckpointLoadError extends CheckpointError {
  constructor(stepNr: number | undefined, message: string, options: ErrorOptions = {}) {
    super(stepNr, message, options, "CHECKPOINT_LOAD");
  }
}

export class CheckpointDeleteError extends CheckpointError {
  constructor(stepNr: number | undefined, message: string, options: ErrorOptions = {}) {
    super(stepNr, message, options, "CHECKPOINT_DELETE");
  }
}

/** True for any error this library throws on purpose. */
export function isCkptError(error: unknown): error is CkptError {
  return error instanceof CkptError;
}

/**
 * A collective among the ranks of a job failed: a rank died, exited or reported an error, or a
 * round timed out. `rank` names the rank at fault when it is known.
 */
export class GangError extends CkptError {
  readonly rank: number | undefined;

  constructor(message: string, options: ErrorOptions & { rank?: number; code?: string } = {}) {
    super(options.code ?? "GANG", message, "cause" in options ? { cause: options.cause } : {});
    this.rank = options.rank;
  }
}
