import { setTimeout as sleep } from "node:timers/promises";
import { errorFacts, ObjectStoreError, type S3ErrorFacts } from "./s3-errors.js";

/** How often and how patiently an operation is tried again. */
export interface RetryPolicy {
  /** Attempts in all, the first included. */
  maxAttempts: number;
  /** The first backoff; each further one doubles, up to MAX_BACKOFF_MS, with full jitter. */
  baseDelayMs: number;
}

const MAX_BACKOFF_MS = 5_000;

/** Failures of the connection itself: nothing (or not all) of the answer arrived. */
const RETRYABLE_NETWORK_CODES = new Set(["ECONNREFUSED", "ECONNRESET", "EPIPE", "ETIMEDOUT", "ECONNABORTED", "EAI_AGAIN", "ENOTFOUND", "UND_ERR_SOCKET", "TimeoutError", "RequestTimeout", "ERR_STREAM_PREMATURE_CLOSE"]);
/** S3's own "try again" answers. */
const RETRYABLE_S3_CODES = new Set(["SlowDown", "RequestTimeout", "InternalError", "ServiceUnavailable", "Throttling", "ThrottlingException", "RequestTimeTooSkewed"]);
const RETRYABLE_STATUSES = new Set([500, 502, 503, 504]);

/**
 * Transient failures only: a refused, reset or timed-out connection, a 5xx, SlowDown. A 4xx
 * (missing key, access denied, a failed If-Match) would fail the same way again.
 */
export function isRetryable(facts: S3ErrorFacts): boolean {
  if (facts.status !== undefined && RETRYABLE_STATUSES.has(facts.status)) return true;
  if (RETRYABLE_S3_CODES.has(facts.code) || RETRYABLE_NETWORK_CODES.has(facts.code)) return true;
  // A response cut short or a socket closed under the SDK: the status (if any) was 2xx.
  return (facts.status === undefined || facts.status < 300) && /socket hang up|aborted|premature close|other side closed|ECONNRESET|terminated/i.test(facts.message);
}

/**
 * Runs `attempt` until it succeeds, a failure is not transient, or `policy.maxAttempts` are
 * spent; then throws an ObjectStoreError naming `operation` and `url`. `attempt` is told its
 * number, so a ranged read can resume where the previous one was cut.
 */
export async function withRetries<T>(operation: string, url: string, policy: RetryPolicy, attempt: (attemptNumber: number) => Promise<T>): Promise<T> {
  for (let attemptNumber = 1; ; attemptNumber++) {
    try {
      return await attempt(attemptNumber);
    } catch (error) {
      if (error instanceof ObjectStoreError) throw error; // already final (a nested operation)
      const facts = errorFacts(error);
      if (!isRetryable(facts) || attemptNumber >= policy.maxAttempts) throw new ObjectStoreError(operation, url, facts, attemptNumber, error);
      await sleep(backoffMs(policy.baseDelayMs, attemptNumber));
    }
  }
}

/** Exponential backoff with full jitter: many clients that failed together do not retry together. */
function backoffMs(baseDelayMs: number, attemptNumber: number): number {
  const ceiling = Math.min(MAX_BACKOFF_MS, baseDelayMs * 2 ** (attemptNumber - 1));
  return Math.random() * ceiling;
}
