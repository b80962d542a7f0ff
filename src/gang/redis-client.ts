import { createRequire } from "node:module";
import type { Redis, RedisOptions } from "ioredis";
import { GangError, InvalidArgumentError } from "../errors.js";

/**
 * Loading `ioredis` (an optional peer dependency, imported only here and only for a `redis://`
 * rendezvous) and opening connections that fail within a bound instead of retrying forever.
 */

export type RedisClient = Redis;
type RedisConstructor = new (url: string, options: RedisOptions) => Redis;

export const INSTALL_HINT = "npm install ioredis to use a redis:// rendezvous";

/** The `ioredis` constructor and where it lives (the heartbeat thread loads it from that path). */
export interface RedisModule {
  Redis: RedisConstructor;
  path: string;
}

export async function loadRedisModule(): Promise<RedisModule> {
  let path: string;
  try {
    path = createRequire(import.meta.url).resolve("ioredis");
  } catch (error) {
    throw new GangError(`the ioredis package is not installed: ${INSTALL_HINT}`, { cause: error, code: "GANG_REDIS_MISSING" });
  }
  const module = await import("ioredis");
  return { Redis: module.default as unknown as RedisConstructor, path };
}

/** Checks a `redis://` or `rediss://` URL and returns it with any password hidden, for messages. */
export function describeRedisUrl(url: string): string {
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch (error) {
    throw new InvalidArgumentError(`rendezvous URL ${JSON.stringify(url)} is not a URL (expected redis://HOST:PORT)`, { cause: error });
  }
  if (parsed.protocol !== "redis:" && parsed.protocol !== "rediss:") {
    throw new InvalidArgumentError(`rendezvous URL ${JSON.stringify(url)} is not redis://HOST:PORT or rediss://HOST:PORT`);
  }
  if (parsed.password !== "") parsed.password = "***";
  return parsed.toString();
}

/**
 * Options shared by every connection. A lost connection is never re-established: the job's state
 * on a restarted server would be gone, so the transport fails at once instead. Commands are not
 * queued while disconnected, and a server that stops answering fails a command after
 * `commandTimeoutMs` — together these bound every wait on the server.
 */
export function connectionOptions(connectionName: string, commandTimeoutMs: number): RedisOptions {
  return {
    lazyConnect: true,
    // RESP2 works with every Redis since 2.x; nothing here needs RESP3.
    protocol: 2,
    connectTimeout: commandTimeoutMs,
    commandTimeout: commandTimeoutMs,
    retryStrategy: () => null,
    maxRetriesPerRequest: 0,
    enableOfflineQueue: false,
    autoResubscribe: false,
    autoResendUnfulfilledCommands: false,
    connectionName,
  };
}

/**
 * Opens a connection, retrying (the server may still be starting, e.g. on the first node of a
 * job) until `windowMs` has passed; then rejects with a `GangError` saying the server is
 * unreachable.
 */
export async function openConnection(
  Redis: RedisConstructor,
  url: string,
  options: RedisOptions,
  windowMs: number,
): Promise<RedisClient> {
  const deadline = Date.now() + windowMs;
  let delayMs = 100;
  for (;;) {
    const client = new Redis(url, options);
    // connect() rejects with "Connection is closed."; the error event says why (ECONNREFUSED...).
    let why: unknown;
    const onError = (error: unknown): void => {
      why ??= error;
    };
    client.on("error", onError);
    try {
      await client.connect();
      return client;
    } catch (error) {
      dropConnection(client);
      // The server answered (a wrong password, say): trying again will not help.
      if (isReplyError(why)) {
        throw new GangError(`the rendezvous server ${describeRedisUrl(url)} refused the connection: ${why.message}`, { cause: why, code: "GANG_REDIS" });
      }
      if (Date.now() + delayMs >= deadline) throw unreachable(describeRedisUrl(url), why ?? error);
      await new Promise((resolve) => setTimeout(resolve, delayMs));
      delayMs = Math.min(delayMs * 2, 1000);
    }
  }
}

/** The error for a server that cannot be reached or stopped answering. */
export function unreachable(where: string, cause: unknown): GangError {
  const why = cause instanceof Error ? cause.message : String(cause);
  return new GangError(`the rendezvous server ${where} is unreachable (${why})`, { cause, code: "GANG_UNREACHABLE" });
}

/**
 * Turns a failed Redis command into a `GangError`: a reply error (the server answered, e.g. out of
 * memory or wrong password) says so; anything else means the server is unreachable.
 */
export function commandFailure(where: string, cause: unknown): GangError {
  if (cause instanceof GangError) return cause;
  if (isReplyError(cause)) {
    return new GangError(`the rendezvous server ${where} refused a command: ${cause.message}`, { cause, code: "GANG_REDIS" });
  }
  return unreachable(where, cause);
}

/** An error reply from the server (ioredis's ReplyError), as opposed to a connection failure. */
function isReplyError(error: unknown): error is Error {
  return error instanceof Error && error.name === "ReplyError";
}

/** Closes a connection politely when it is up, at once otherwise; never throws. */
export async function closeConnection(client: RedisClient): Promise<void> {
  if (client.status === "ready") {
    try {
      await client.quit();
      return;
    } catch {
      // The server went away or did not answer within the command timeout: drop the socket.
    }
  }
  dropConnection(client);
}

/**
 * Drops a connection at once. Not when it has already ended: ioredis would then arm a timer for
 * a socket close that already happened, and that timer keeps the process alive for seconds.
 */
function dropConnection(client: RedisClient): void {
  if (client.status !== "end" && client.status !== "close") client.disconnect();
}

/** Runs a MULTI and returns its replies, throwing the first failed command's error. */
export async function execTransaction(transaction: ReturnType<RedisClient["multi"]>): Promise<unknown[]> {
  const results = await transaction.exec();
  if (results === null) throw new Error("transaction aborted");
  return results.map(([error, reply]) => {
    if (error) throw error;
    return reply;
  });
}
