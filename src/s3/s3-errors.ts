import { CkptError } from "../errors.js";

/** What we read from an error the SDK (or the network under it) threw. */
export interface S3ErrorFacts {
  /** HTTP status, when a response arrived. */
  status: number | undefined;
  /** S3's error code (`NoSuchKey`, `SlowDown`, ...) or the socket's (`ECONNRESET`, ...). */
  code: string;
  message: string;
}

export function errorFacts(error: unknown): S3ErrorFacts {
  const e = (error ?? {}) as { name?: unknown; Code?: unknown; code?: unknown; message?: unknown; $metadata?: { httpStatusCode?: unknown } };
  const status = typeof e.$metadata?.httpStatusCode === "number" ? e.$metadata.httpStatusCode : undefined;
  const code = [e.Code, e.code, e.name].find((value): value is string => typeof value === "string" && value !== "" && value !== "Error") ?? "unknown";
  let message = typeof e.message === "string" ? e.message : String(error);
  // A HEAD answer has no body, so the SDK knows no more than the status.
  if (message === "UnknownError" && status === 404) message = "no such object";
  else if (message === "UnknownError" && status !== undefined) message = `HTTP ${status} without an error body`;
  return { status, code, message };
}

/** True when S3 says there is nothing at the key (or no such bucket, or no such upload). */
export function isNotFound(facts: S3ErrorFacts): boolean {
  return facts.status === 404 || ["NoSuchKey", "NotFound", "NoSuchBucket", "NoSuchUpload"].includes(facts.code);
}

/** True when the server refused a conditional request (If-Match / If-None-Match). */
export function isPreconditionFailed(facts: S3ErrorFacts): boolean {
  return facts.status === 412 || facts.status === 409 || ["PreconditionFailed", "ConditionalRequestConflict"].includes(facts.code);
}

/** True when the server does not implement the operation (s3rver: ListMultipartUploads, AbortMultipartUpload). */
export function isNotImplemented(facts: S3ErrorFacts): boolean {
  return facts.status === 501 || facts.status === 405 || ["NotImplemented", "MethodNotAllowed"].includes(facts.code);
}

/**
 * The codes callers already know from local files: ENOENT for a missing object, EACCES for a
 * refused one; anything else "S3".
 */
function localCode(facts: S3ErrorFacts): string {
  if (isNotFound(facts)) return "ENOENT";
  if (facts.status === 403 || ["AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"].includes(facts.code)) return "EACCES";
  return "S3";
}

/**
 * An operation on object storage failed for good: names the operation, the `s3://` URL, the
 * status and code, and how many attempts were made; the SDK's error is the `cause`.
 */
export class ObjectStoreError extends CkptError {
  readonly url: string;
  readonly operation: string;
  readonly status: number | undefined;
  readonly s3Code: string;
  readonly attempts: number;

  constructor(operation: string, url: string, facts: S3ErrorFacts, attempts: number, cause: unknown) {
    const status = facts.status === undefined ? "no response" : `HTTP ${facts.status}`;
    const tries = attempts === 1 ? "1 attempt" : `${attempts} attempts`;
    super(localCode(facts), `${operation} ${url} failed after ${tries} (${status}, ${facts.code}): ${facts.message}`, { cause });
    this.url = url;
    this.operation = operation;
    this.status = facts.status;
    this.s3Code = facts.code;
    this.attempts = attempts;
  }
}

/** An error with a file-system code (ENOENT, ...) of our own making, e.g. a missing "directory". */
export function objectStoreError(code: string, message: string, options: { cause?: unknown } = {}): CkptError {
  return new CkptError(code, message, options);
}
