import { randomBytes } from "node:crypto";
import { constants, promises as fsp, readFileSync } from "node:fs";
import { hostname } from "node:os";
import * as nodePath from "node:path";
import type { FileLock } from "./file-system.js";

/** What a lock file says about its holder. */
interface LockOwner {
  pid: number;
  host: string;
  token: string;
  since: string;
  /** The kernel's boot id when taken: a lock from an earlier boot (a power cut) is stale whatever runs under its pid now. */
  bootId?: string;
}

let bootIdCache: string | undefined | null = null;

/** This boot's id (Linux), or undefined where the system has none. */
function currentBootId(): string | undefined {
  if (bootIdCache === null) {
    try {
      bootIdCache = readFileSync("/proc/sys/kernel/random/boot_id", "utf8").trim() || undefined;
    } catch {
      bootIdCache = undefined;
    }
  }
  return bootIdCache;
}

/** A holder on another host proves it is alive by touching the lock this often... */
const HEARTBEAT_MS = 10_000;
/** ...and is presumed dead after this long without a touch. */
const STALE_AFTER_MS = 60_000;

export class LockHeldError extends Error {
  readonly code = "ELOCKED";
}

/**
 * An exclusive lock file, created whole by a hard link (which fails if the file exists). A holder on this host is alive while its pid runs;
 * a holder on another host (a shared file system) while it keeps touching the file. A dead
 * holder's lock is moved aside atomically (rename), so of two processes taking over, one wins.
 */
export async function acquireLocalLock(path: string): Promise<FileLock> {
  const bootId = currentBootId();
  const owner: LockOwner = { pid: process.pid, host: hostname(), token: randomBytes(8).toString("hex"), since: new Date().toISOString(), ...(bootId === undefined ? {} : { bootId }) };
  for (let attempt = 0; attempt < 5; attempt++) {
    if (await createWithContent(path, JSON.stringify(owner), owner.token)) {
      await removeLeftAsides(path, owner.token).catch(() => undefined); // tidying: never fails the lock
      return new LocalLock(path, owner);
    }
    const holder = await readOwner(path);
    if (holder !== undefined && !(await isStale(path, holder))) {
      throw new LockHeldError(`${path} is held by process ${holder.pid} on ${holder.host} since ${holder.since}`);
    }
    await breakStaleLock(path, holder);
  }
  throw new LockHeldError(`${path}: could not take the lock, other processes keep taking it`);
}

/**
 * Creates `path` holding `content`, or returns false if it exists. The content is written to a
 * side file first and hard-linked into place, so nobody ever reads a lock that is still empty
 * (and takes it for the lock of a process that died while writing it).
 */
async function createWithContent(path: string, content: string, token: string): Promise<boolean> {
  const side = `${path}.new-${token}`;
  const handle = await fsp.open(side, constants.O_WRONLY | constants.O_CREAT | constants.O_TRUNC, 0o644);
  try {
    await handle.writeFile(content);
    await handle.sync();
  } finally {
    await handle.close();
  }
  try {
    await fsp.link(side, path);
    return true;
  } catch (error) {
    // ENOENT: a process that just took the lock tidied our side file away: the lock is taken.
    if (["EEXIST", "ENOENT"].includes((error as NodeJS.ErrnoException).code ?? "")) return false;
    throw error;
  } finally {
    await fsp.rm(side, { force: true });
  }
}

async function readOwner(path: string): Promise<LockOwner | undefined> {
  try {
    return JSON.parse(await fsp.readFile(path, "utf8")) as LockOwner;
  } catch {
    return undefined; // vanished, or written by a process that died before finishing: stale
  }
}

async function isStale(path: string, holder: LockOwner): Promise<boolean> {
  if (holder.host === hostname()) {
    // After a reboot, pids are handed out anew: the holder's may belong to anyone.
    const bootId = currentBootId();
    if (holder.bootId !== undefined && bootId !== undefined && holder.bootId !== bootId) return true;
    try {
      process.kill(holder.pid, 0);
      return false;
    } catch (error) {
      return (error as NodeJS.ErrnoException).code === "ESRCH";
    }
  }
  try {
    const { mtimeMs } = await fsp.stat(path);
    return Date.now() - mtimeMs > STALE_AFTER_MS;
  } catch {
    return true;
  }
}

async function breakStaleLock(path: string, seen: LockOwner | undefined): Promise<void> {
  const aside = `${path}.stale-${randomBytes(4).toString("hex")}`;
  try {
    await fsp.rename(path, aside);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "ENOENT") return; // someone else broke it
    throw error;
  }
  const moved = await readOwner(aside);
  if (seen !== undefined && moved !== undefined && moved.token !== seen.token) {
    // We moved a fresh lock that another process took meanwhile: put it back unless replaced.
    await fsp.link(aside, path).catch(() => undefined);
  }
  await fsp.rm(aside, { force: true });
}

/**
 * Removes the dead locks that breakers moved aside and then died before removing (a kill inside
 * breakStaleLock), so crashes leave nothing behind. Only the new holder does this. A file with its
 * own token is its lock, moved by a racing breaker who will put it back, and stays; any other a
 * breaker could only put back where this lock now is, which fails anyway.
 */
async function removeLeftAsides(path: string, token: string): Promise<void> {
  const dir = nodePath.dirname(path);
  const stalePrefix = `${nodePath.basename(path)}.stale-`;
  const newPrefix = `${nodePath.basename(path)}.new-`; // side files of processes that died before linking
  for (const name of await fsp.readdir(dir)) {
    if (name.startsWith(newPrefix) && !name.endsWith(token)) {
      await fsp.rm(nodePath.join(dir, name), { force: true });
      continue;
    }
    if (!name.startsWith(stalePrefix)) continue;
    const aside = nodePath.join(dir, name);
    if ((await readOwner(aside))?.token !== token) await fsp.rm(aside, { force: true });
  }
}

class LocalLock implements FileLock {
  private readonly heartbeat: NodeJS.Timeout;
  private released = false;

  constructor(
    private readonly path: string,
    private readonly owner: LockOwner,
  ) {
    this.heartbeat = setInterval(() => {
      const now = new Date();
      fsp.utimes(this.path, now, now).catch(() => undefined);
    }, HEARTBEAT_MS);
    this.heartbeat.unref();
  }

  async release(): Promise<void> {
    if (this.released) return;
    this.released = true;
    clearInterval(this.heartbeat);
    const holder = await readOwner(this.path);
    if (holder?.token === this.owner.token) await fsp.rm(this.path, { force: true });
  }
}
