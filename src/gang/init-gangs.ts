import { GangError, InvalidArgumentError } from "../errors.js";
import { fakeGangs } from "./fake-gang.js";
import type { Gang, Gangs, JsonValue } from "./gang.js";
import { IpcTransport } from "./ipc-transport.js";
import { DEFAULT_COLLECTIVE_TIMEOUT_MS, TransportGang, checkTimeout } from "./transport-gang.js";
import type { Transport } from "./transport.js";

export interface InitGangsOptions {
  /** Where the launcher's variables are read. Default `process.env`. */
  env?: Readonly<Record<string, string | undefined>>;
  /**
   * How long one collective waits for the other ranks before failing with a `GangError`.
   * Default: `CKPT_COLLECTIVE_TIMEOUT_MS` from the environment, else 30 minutes.
   */
  collectiveTimeoutMs?: number;
  /** How long `initGangs` waits for every rank of the job to arrive. Default 30 minutes. */
  rendezvousTimeoutMs?: number;
  /** Redis only: how long a rank may be silent before it counts as dead (the transport's default otherwise). */
  deadAfterMs?: number;
}

/** What `ckpt launch` tells each worker (SPEC §7). */
interface LaunchEnvironment {
  rank: number;
  worldSize: number;
  dpSize: number;
  tpSize: number;
  rendezvous: string;
  jobId: string | undefined;
}

/** The variables whose presence means "started by a launcher"; with none of them, the process runs alone. */
const LAUNCHER_VARIABLES = ["CKPT_RANK", "CKPT_WORLD_SIZE", "CKPT_LOCAL_RANK", "CKPT_DP_SIZE", "CKPT_TP_SIZE", "CKPT_RENDEZVOUS", "CKPT_JOB_ID"];

/**
 * Loaded only for a redis:// rendezvous, so the core never loads ioredis (an optional peer
 * dependency). A computed path on purpose: a bundler follows a literal one to `import("ioredis")`
 * and fails the user's build where ioredis is not installed (esbuild does: installed-package.test.ts).
 */
const REDIS_TRANSPORT_MODULE = "./redis-transport.js";

interface RedisTransportModule {
  connectRedisTransport(options: { url: string; jobId: string; rank: number; worldSize: number; deadAfterMs?: number }): Promise<Transport>;
}

/** How to release what `initGangs` opened, by the root gang it returned. */
const closers = new WeakMap<Gang, () => Promise<void>>();

/**
 * This process's gangs, from the environment `ckpt launch` sets: `root` holds every rank, `tp`
 * the consecutive ranks of one tensor-parallel group (rank = dp_rank × tp_size + tp_rank), `dp`
 * the ranks with the same tp_rank. Without that environment it returns single-process gangs, so
 * the same script runs alone. Waits until every rank of the job has arrived.
 *
 * A rank that dies, exits or throws becomes a `GangError` naming it in every other rank's
 * collectives. Call `closeGangs` when done.
 *
 * @example
 * const gangs = await initGangs();
 * const manager = new FileCheckpointManager({ checkpointDir, gangs });
 * // ... train ...
 * await closeGangs(gangs);
 */
export async function initGangs(options: InitGangsOptions = {}): Promise<Gangs> {
  const env = options.env ?? process.env;
  const launch = readLaunchEnvironment(env);
  if (launch === undefined) return fakeGangs();
  const timeoutMs =
    options.collectiveTimeoutMs !== undefined
      ? checkTimeout(options.collectiveTimeoutMs, "collectiveTimeoutMs")
      : readTimeout(env, "CKPT_COLLECTIVE_TIMEOUT_MS") ?? DEFAULT_COLLECTIVE_TIMEOUT_MS;
  const rendezvousTimeoutMs = checkTimeout(options.rendezvousTimeoutMs ?? DEFAULT_COLLECTIVE_TIMEOUT_MS, "rendezvousTimeoutMs");

  const transport = await connect(launch, options.deadAfterMs);
  // An uncaught error in this process is reported to every rank, with its message, before the
  // process exits (the monitor observes; Node's own handling is unchanged).
  const reportFatal = (error: unknown): void => void transport.abort(describeError(error)).catch(() => undefined);
  process.on("uncaughtExceptionMonitor", reportFatal);
  const release = async (): Promise<void> => {
    process.off("uncaughtExceptionMonitor", reportFatal);
    await transport.close();
  };
  try {
    await checkSameJob(transport, launch, rendezvousTimeoutMs);
  } catch (error) {
    await release();
    throw error;
  }

  const { rank, worldSize, dpSize, tpSize } = launch;
  const dpRank = Math.floor(rank / tpSize);
  const tpRank = rank % tpSize;
  const gang = (name: string, members: number[]): TransportGang => new TransportGang(transport, { name, members, timeoutMs });
  const gangs: Gangs = {
    root: gang("root", range(worldSize, (i) => i)),
    dp: gang(`dp.${tpRank}`, range(dpSize, (i) => i * tpSize + tpRank)),
    tp: gang(`tp.${dpRank}`, range(tpSize, (i) => dpRank * tpSize + i)),
  };
  let closing: Promise<void> | undefined;
  closers.set(gangs.root, () => (closing ??= release()));
  return gangs;
}

/**
 * Releases what `initGangs` opened (the IPC channel, Redis connections) so the process can exit;
 * later collectives on these gangs fail. Does nothing for gangs it did not make.
 */
export async function closeGangs(gangs: Gangs): Promise<void> {
  await closers.get(gangs.root)?.();
}

/** The launcher's variables, checked; undefined when the process was not started by a launcher. */
function readLaunchEnvironment(env: Readonly<Record<string, string | undefined>>): LaunchEnvironment | undefined {
  if (!LAUNCHER_VARIABLES.some((name) => present(env, name))) return undefined;
  const worldSize = readInt(env, "CKPT_WORLD_SIZE", 1);
  const rank = readInt(env, "CKPT_RANK", 0, worldSize - 1);
  if (present(env, "CKPT_LOCAL_RANK")) readInt(env, "CKPT_LOCAL_RANK", 0, worldSize - 1);
  const tpSize = present(env, "CKPT_TP_SIZE") ? readInt(env, "CKPT_TP_SIZE", 1, worldSize) : 1;
  if (!present(env, "CKPT_DP_SIZE") && worldSize % tpSize !== 0) throw new InvalidArgumentError(`CKPT_TP_SIZE (${tpSize}) must divide CKPT_WORLD_SIZE (${worldSize})`);
  const dpSize = present(env, "CKPT_DP_SIZE") ? readInt(env, "CKPT_DP_SIZE", 1, worldSize) : worldSize / tpSize;
  if (dpSize * tpSize !== worldSize) {
    throw new InvalidArgumentError(`CKPT_DP_SIZE × CKPT_TP_SIZE must equal CKPT_WORLD_SIZE, got ${dpSize} × ${tpSize} ≠ ${worldSize}`);
  }
  const rendezvous = env.CKPT_RENDEZVOUS ?? "";
  if (rendezvous !== "ipc" && !/^rediss?:\/\/./.test(rendezvous)) {
    throw new InvalidArgumentError(`CKPT_RENDEZVOUS must be "ipc" or a redis://HOST:PORT address, got ${JSON.stringify(rendezvous)}`);
  }
  const jobId = present(env, "CKPT_JOB_ID") ? env.CKPT_JOB_ID : undefined;
  if (rendezvous !== "ipc" && jobId === undefined) throw new InvalidArgumentError(`CKPT_JOB_ID is required with a Redis rendezvous (CKPT_RENDEZVOUS=${rendezvous})`);
  return { rank, worldSize, dpSize, tpSize, rendezvous, jobId };
}

async function connect(launch: LaunchEnvironment, deadAfterMs: number | undefined): Promise<Transport> {
  if (launch.rendezvous === "ipc") {
    if (!IpcTransport.available()) {
      throw new InvalidArgumentError(
        "CKPT_RENDEZVOUS=ipc but this process has no IPC channel to ckpt launch: the worker command must be the Node process " +
          "itself (node train.js, node --import tsx train.ts), not a wrapper that starts Node as a child (npx, tsx, a shell script)",
      );
    }
    return new IpcTransport(launch.rank, launch.worldSize);
  }
  let module: RedisTransportModule;
  try {
    module = (await import(REDIS_TRANSPORT_MODULE)) as RedisTransportModule;
  } catch (error) {
    throw new GangError(
      `could not load the Redis transport for ${launch.rendezvous} (${error instanceof Error ? error.message : String(error)}); ` +
        "a redis:// rendezvous needs the optional peer dependency ioredis (npm install ioredis)",
      { cause: error },
    );
  }
  return module.connectRedisTransport({
    url: launch.rendezvous,
    jobId: launch.jobId!,
    rank: launch.rank,
    worldSize: launch.worldSize,
    ...(deadAfterMs !== undefined ? { deadAfterMs } : {}),
  });
}

/**
 * One round among every rank before any gang is used: it waits for the whole job, and refuses
 * ranks started with other sizes (several launchers given different flags), which would otherwise
 * wait in groups that never fill.
 */
async function checkSameJob(transport: Transport, launch: LaunchEnvironment, timeoutMs: number): Promise<void> {
  const mine = { worldSize: launch.worldSize, dpSize: launch.dpSize, tpSize: launch.tpSize };
  const all = range(launch.worldSize, (i) => i);
  let reports: JsonValue[];
  try {
    reports = await transport.exchange("init", all, 0, mine, timeoutMs);
  } catch (error) {
    const cause = error instanceof GangError ? error : undefined;
    throw new GangError(`initGangs: rank ${launch.rank} waited for every rank of the job to arrive, and failed: ${String((error as Error)?.message ?? error)}`, {
      cause: error,
      ...(cause?.code !== undefined ? { code: cause.code } : {}),
      ...(cause?.rank !== undefined ? { rank: cause.rank } : {}),
    });
  }
  reports.forEach((report: JsonValue, rank) => {
    if (JSON.stringify(report) !== JSON.stringify(mine)) {
      throw new GangError(
        `rank ${rank} was started with ${JSON.stringify(report)} but rank ${launch.rank} with ${JSON.stringify(mine)}: ` +
          "every launcher of a job needs the same --nproc, --nnodes, --dp and --tp",
        { rank },
      );
    }
  });
}

function present(env: Readonly<Record<string, string | undefined>>, name: string): boolean {
  const value = env[name];
  return value !== undefined && value !== "";
}

function readInt(env: Readonly<Record<string, string | undefined>>, name: string, min: number, max = Number.MAX_SAFE_INTEGER): number {
  const text = env[name];
  if (text === undefined || text === "") throw new InvalidArgumentError(`${name} is not set: ckpt launch sets it with the other CKPT_ variables`);
  const value = Number(text);
  if (!/^\d+$/.test(text) || !Number.isSafeInteger(value) || value < min || value > max) {
    throw new InvalidArgumentError(`${name} must be an integer in [${min}, ${max}], got ${JSON.stringify(text)}`);
  }
  return value;
}

function readTimeout(env: Readonly<Record<string, string | undefined>>, name: string): number | undefined {
  const text = env[name];
  if (text === undefined || text === "") return undefined;
  if (!/^\d+$/.test(text)) throw new InvalidArgumentError(`${name} must be a whole number of milliseconds, got ${JSON.stringify(text)}`);
  return checkTimeout(Number(text), name);
}

function describeError(error: unknown): string {
  return error instanceof Error ? `${error.name}: ${error.message}` : String(error);
}

function range(n: number, f: (i: number) => number): number[] {
  return Array.from({ length: n }, (_, i) => f(i));
}
