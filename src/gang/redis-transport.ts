import { CkptError, InvalidArgumentError } from "../errors.js";
import {
  closeConnection,
  commandFailure,
  connectionOptions,
  describeRedisUrl,
  loadRedisModule,
  openConnection,
  unreachable,
  type RedisClient,
} from "./redis-client.js";
import { Heartbeat } from "./redis-heartbeat.js";
import { joinRun } from "./redis-join.js";
import { JobKeys } from "./redis-keys.js";
import { MAX_TIMEOUT_MS, RedisRun } from "./redis-run.js";
import type { Transport } from "./transport.js";

/**
 * The transport for ranks on several machines: they meet on a Redis server under a job id. The
 * protocol is described in docs/design.md ("Redis rendezvous").
 */

export interface RedisTransportOptions {
  /** `redis://HOST:PORT` (or `rediss://`, with `user:password@` and `/db` as usual). */
  url: string;
  /** Names the job; every rank of a run uses the same one (a later run may reuse it). */
  jobId: string;
  rank: number;
  worldSize: number;
  /** A rank whose heartbeat is this old counts as dead. Default 5000 ms; at least 2 × `heartbeatMs`. */
  deadAfterMs?: number | undefined;
  /** How often a rank refreshes its heartbeat and, while it waits, checks its peers. Default 1000 ms. */
  heartbeatMs?: number | undefined;
  /** How long the ranks may take to all arrive at the rendezvous. Default 10 minutes. */
  joinTimeoutMs?: number | undefined;
  /** How long to keep trying to reach the server at start. Default 10 s. */
  connectTimeoutMs?: number | undefined;
}

const DEFAULT_HEARTBEAT_MS = 1000;
const DEFAULT_DEAD_AFTER_MS = 5000;
const DEFAULT_JOIN_TIMEOUT_MS = 10 * 60 * 1000;
const DEFAULT_CONNECT_TIMEOUT_MS = 10 * 1000;

/**
 * Joins the run of job `jobId` at the Redis server `url` as `rank` of `worldSize`; resolves when
 * every rank has joined. Loads `ioredis`, which must be installed.
 *
 * @example
 * const transport = await connectRedisTransport({ url: "redis://10.0.0.1:6379", jobId: "run7", rank, worldSize });
 */
export async function connectRedisTransport(options: RedisTransportOptions): Promise<Transport> {
  const settings = checkOptions(options);
  const where = describeRedisUrl(options.url);
  const keys = new JobKeys(options.jobId);
  const { Redis, path } = await loadRedisModule();
  const name = `ckpt:${options.jobId}:rank${options.rank}`;
  const connection = connectionOptions(name, settings.deadAfterMs);
  const cmd = await openConnection(Redis, options.url, connection, settings.connectTimeoutMs);
  let sub: RedisClient | undefined;
  let heartbeat: Heartbeat | undefined;
  let transport: RedisRun | undefined;
  let heartbeatFailure: string | undefined;
  try {
    sub = await openConnection(Redis, options.url, connection, settings.connectTimeoutMs);
    heartbeat = await Heartbeat.start({
      ioredisPath: path,
      url: options.url,
      heartbeatMs: settings.heartbeatMs,
      deadAfterMs: settings.deadAfterMs,
      connectionName: `${name}:heartbeat`,
      onFailure: (reason) => {
        if (transport) transport.fail(unreachable(where, reason));
        else heartbeatFailure = reason;
      },
    }).catch((error: unknown) => {
      throw unreachable(where, error);
    });
    const beating = heartbeat;
    const run = await joinRun({
      cmd,
      sub,
      keys,
      where,
      rank: options.rank,
      worldSize: options.worldSize,
      ...settings,
      onJoin: (generation, self) => beating.beat(generation.alive(options.rank), self),
    });
    if (heartbeatFailure !== undefined) throw unreachable(where, heartbeatFailure);
    transport = new RedisRun(cmd, sub, heartbeat, run, where, options.rank, options.worldSize, settings);
    await transport.listen();
    return transport;
  } catch (error) {
    await heartbeat?.stop();
    await Promise.all([closeConnection(cmd), sub ? closeConnection(sub) : undefined]);
    throw error instanceof CkptError ? error : commandFailure(where, error);
  }
}

interface Settings {
  heartbeatMs: number;
  deadAfterMs: number;
  joinTimeoutMs: number;
  connectTimeoutMs: number;
}

function checkOptions(options: RedisTransportOptions): Settings {
  const { rank, worldSize } = options;
  if (!Number.isInteger(worldSize) || worldSize < 1) throw new InvalidArgumentError(`world size must be a positive integer, got ${worldSize}`);
  if (!Number.isInteger(rank) || rank < 0 || rank >= worldSize) throw new InvalidArgumentError(`rank must be an integer in [0, ${worldSize}), got ${rank}`);
  const settings: Settings = {
    heartbeatMs: options.heartbeatMs ?? DEFAULT_HEARTBEAT_MS,
    deadAfterMs: options.deadAfterMs ?? DEFAULT_DEAD_AFTER_MS,
    joinTimeoutMs: options.joinTimeoutMs ?? DEFAULT_JOIN_TIMEOUT_MS,
    connectTimeoutMs: options.connectTimeoutMs ?? DEFAULT_CONNECT_TIMEOUT_MS,
  };
  for (const [name, value] of Object.entries(settings)) {
    if (!Number.isInteger(value) || value < 1 || value > MAX_TIMEOUT_MS) {
      throw new InvalidArgumentError(`${name} must be a whole number of milliseconds in [1, ${MAX_TIMEOUT_MS}], got ${value}`);
    }
  }
  // Beats are late now and then; one late beat must not make a live rank look dead.
  if (settings.deadAfterMs < 2 * settings.heartbeatMs) {
    throw new InvalidArgumentError(`deadAfterMs (${settings.deadAfterMs}) must be at least twice heartbeatMs (${settings.heartbeatMs})`);
  }
  return settings;
}

