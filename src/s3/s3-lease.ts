import { randomBytes } from "node:crypto";
import { hostname } from "node:os";
import type { FileLock } from "../fs/file-system.js";
import { LockHeldError } from "../fs/local-lock.js";
import { withRetries } from "./retry.js";
import { errorFacts, isNotFound, isPreconditionFailed, ObjectStoreError } from "./s3-errors.js";
import type { S3Session } from "./s3-session.js";
import { formatS3Url, type S3Location } from "./s3-url.js";

/** What a lease object says about its holder. */
export interface Lease {
  token: string;
  host: string;
  pid: number;
  since: string;
  /** Milliseconds since the epoch, by the holder's clock, after which the lease is void. */
  expiresAt: number;
}

/** Rounds of "find it stale, delete it, create ours" before giving up to racing processes. */
const TAKEOVER_ROUNDS = 5;

/**
 * Takes the lease object at `location`, or throws LockHeldError (code ELOCKED) naming its holder.
 *
 * Protocol: create with If-None-Match "*" (only one creator wins on S3), then read it back and
 * compare the token (servers that ignore the condition, like s3rver, let the last writer win and
 * the reader see it). A lease is stale when its `expiresAt` has passed, or when its holder is on
 * this host and its pid no longer runs; a stale lease is deleted (If-Match its ETag) and taken.
 * Clock assumption: hosts' clocks agree to well within `leaseMs − renewal interval`.
 */
export async function acquireS3Lease(session: S3Session, location: S3Location): Promise<FileLock> {
  const url = formatS3Url(location);
  const leaseMs = session.settings.leaseMs;
  const lease: Lease = { token: randomBytes(8).toString("hex"), host: hostname(), pid: process.pid, since: new Date().toISOString(), expiresAt: Date.now() + leaseMs };
  for (let round = 0; round < TAKEOVER_ROUNDS; round++) {
    const holder = await readLease(session, location);
    if (holder !== undefined) {
      if (!isStale(holder.lease)) throw heldError(url, holder.lease);
      await deleteLease(session, location, holder.etag);
      continue;
    }
    lease.expiresAt = Date.now() + leaseMs;
    if (!(await createLease(session, location, lease))) continue; // someone created one first
    const confirmed = await readLease(session, location);
    if (confirmed?.lease.token === lease.token) return new S3Lease(session, location, lease);
    if (confirmed !== undefined && !isStale(confirmed.lease)) throw heldError(url, confirmed.lease);
  }
  throw new LockHeldError(`${url}: could not take the lock, other processes keep taking it`);
}

function heldError(url: string, lease: Lease): LockHeldError {
  return new LockHeldError(`${url} is held by process ${lease.pid} on ${lease.host} since ${lease.since} (lease until ${new Date(lease.expiresAt).toISOString()})`);
}

/** Expired, or held by a process of this host that no longer runs (a SIGKILLed predecessor). */
export function isStale(lease: Lease, now: number = Date.now()): boolean {
  if (!(lease.expiresAt > now)) return true;
  if (lease.host !== hostname()) return false;
  try {
    process.kill(lease.pid, 0);
    return false;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === "ESRCH";
  }
}

async function readLease(session: S3Session, location: S3Location): Promise<{ lease: Lease; etag: string | undefined } | undefined> {
  const url = formatS3Url(location);
  try {
    return await withRetries("GetObject", url, session.retry, async () => {
      const response = await session.client.send(new session.sdk.GetObjectCommand({ Bucket: location.bucket, Key: location.key }));
      const text = (await response.Body?.transformToString("utf8")) ?? "";
      return { lease: parseLease(text, response.LastModified, session.settings.leaseMs), etag: response.ETag };
    });
  } catch (error) {
    if (error instanceof ObjectStoreError && error.code === "ENOENT") return undefined;
    throw error;
  }
}

/**
 * A lease that does not parse was written by something else, or read while being written (s3rver
 * does not write objects atomically): it counts as held for a lease time after it was written.
 */
function parseLease(text: string, lastModified: Date | undefined, leaseMs: number): Lease {
  try {
    const value = JSON.parse(text) as Partial<Lease>;
    if (typeof value.token === "string" && typeof value.host === "string" && typeof value.pid === "number" && typeof value.expiresAt === "number") {
      return { token: value.token, host: value.host, pid: value.pid, since: String(value.since), expiresAt: value.expiresAt };
    }
  } catch {
    // falls through to a void lease
  }
  const since = lastModified ?? new Date(0);
  return { token: "", host: "unknown (unreadable lease)", pid: 0, since: since.toISOString(), expiresAt: since.getTime() + leaseMs };
}

/** Creates the lease object unless one exists; false when another creator won (412/409). */
async function createLease(session: S3Session, location: S3Location, lease: Lease): Promise<boolean> {
  try {
    await putLease(session, location, lease, { IfNoneMatch: "*" });
    return true;
  } catch (error) {
    if (isPreconditionFailed(errorFacts((error as { cause?: unknown }).cause))) return false;
    throw error;
  }
}

async function putLease(session: S3Session, location: S3Location, lease: Lease, condition: { IfNoneMatch: string } | { IfMatch: string } | object): Promise<void> {
  const body = JSON.stringify(lease);
  await withRetries("PutObject", formatS3Url(location), session.retry, () =>
    session.client.send(new session.sdk.PutObjectCommand({ Bucket: location.bucket, Key: location.key, Body: body, ContentType: "application/json", ...condition })),
  );
}

/** Deletes a lease, if it still has `etag` (where the server checks; a 412 means it changed). */
async function deleteLease(session: S3Session, location: S3Location, etag: string | undefined): Promise<void> {
  try {
    await withRetries("DeleteObject", formatS3Url(location), session.retry, () =>
      session.client.send(new session.sdk.DeleteObjectCommand({ Bucket: location.bucket, Key: location.key, ...(etag === undefined ? {} : { IfMatch: etag }) })),
    );
  } catch (error) {
    const facts = errorFacts((error as { cause?: unknown }).cause);
    if (isPreconditionFailed(facts) || isNotFound(facts)) return; // replaced or gone: the next round looks again
    throw error;
  }
}

/**
 * A held lease, renewed by an unref'd heartbeat every sixth of the lease (10 s of 60 s), so a
 * holder survives five failed renewals in a row. A renewal that finds another token stops: the
 * lease was lost (taken over after this process stalled past its expiry) and `lost` says so.
 */
class S3Lease implements FileLock {
  private readonly heartbeat: NodeJS.Timeout;
  private renewing: Promise<void> = Promise.resolve();
  private released = false;
  lost = false;

  constructor(
    private readonly session: S3Session,
    private readonly location: S3Location,
    private readonly lease: Lease,
  ) {
    let inFlight = false;
    this.heartbeat = setInterval(() => {
      if (inFlight) return; // a slow renewal is not overlapped by the next
      inFlight = true;
      this.renewing = this.renew()
        .finally(() => (inFlight = false))
        .catch((error: unknown) => {
          process.emitWarning(`could not renew the lease ${formatS3Url(location)}, will try again: ${(error as Error).message}`, { code: "CKPT_S3" });
        });
    }, Math.max(1, Math.floor(session.settings.leaseMs / 6)));
    this.heartbeat.unref();
  }

  private async renew(): Promise<void> {
    if (this.released || this.lost) return;
    const current = await readLease(this.session, this.location);
    if (current?.lease.token !== this.lease.token) {
      this.lost = true;
      clearInterval(this.heartbeat);
      process.emitWarning(`the lease ${formatS3Url(this.location)} was taken over by ${current === undefined ? "nobody (deleted)" : `process ${current.lease.pid} on ${current.lease.host}`}`, { code: "CKPT_S3" });
      return;
    }
    this.lease.expiresAt = Date.now() + this.session.settings.leaseMs;
    // If-Match: a takeover between our read and this write makes S3 refuse it (412), not lose it.
    await putLease(this.session, this.location, this.lease, current.etag === undefined ? {} : { IfMatch: current.etag });
  }

  async release(): Promise<void> {
    if (this.released) return;
    this.released = true;
    clearInterval(this.heartbeat);
    await this.renewing;
    const current = await readLease(this.session, this.location);
    if (current?.lease.token === this.lease.token) await deleteLease(this.session, this.location, current.etag);
  }
}
