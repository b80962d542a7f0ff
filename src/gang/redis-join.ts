import { randomBytes } from "node:crypto";
import { hostname } from "node:os";
import { CkptError, GangError } from "../errors.js";
import { commandFailure, execTransaction, type RedisClient } from "./redis-client.js";
import { CLOSED_MARK } from "./redis-heartbeat.js";
import { RUN_RECORD_TTL_MS, type GenerationKeys, type JobKeys } from "./redis-keys.js";

/**
 * The rendezvous: how the ranks of one run of a job find each other under its job id without
 * joining what an earlier run with the same id left behind.
 *
 * Rank 0 starts every run: it draws a random generation id and publishes it as the job's
 * `current` run. Other ranks join the current run unless it has already started (is "sealed"),
 * which means it is an earlier run: then they wait for this run's rank 0 to begin a new one. Once
 * every rank has joined, rank 0 seals the run with the list of its members; a rank proceeds when
 * it finds itself in that list. A rank that joined an unsealed earlier run (whose rank 0 died
 * before sealing) moves to the new run when rank 0 publishes it, so mixed runs cannot form.
 */

export interface JoinOptions {
  cmd: RedisClient;
  /** Connection in subscriber mode; joining subscribes it to the job's join channel meanwhile. */
  sub: RedisClient;
  keys: JobKeys;
  rank: number;
  worldSize: number;
  heartbeatMs: number;
  deadAfterMs: number;
  joinTimeoutMs: number;
  /** The rendezvous server, for messages. */
  where: string;
  /** Called when this rank joins (or starts) a run: from then on its alive key must beat. */
  onJoin: (generation: GenerationKeys, self: string) => void;
}

export interface JoinedRun {
  generation: GenerationKeys;
  /** Member record of every rank (see `memberRecord`), indexed by rank. */
  members: string[];
  /** This process's own record. */
  self: string;
}

/**
 * Identifies one process joining one run: where it runs, plus a nonce (pids repeat); and the world
 * size it was started with, so that launches that disagree are told at once.
 */
function memberRecord(worldSize: number): string {
  return JSON.stringify({ host: hostname(), pid: process.pid, worldSize, nonce: randomBytes(8).toString("hex") });
}

/** A GangError when `record` (of `rank`) was started with another world size than this process. */
function worldSizeMismatch(options: JoinOptions, rank: number, record: string | undefined | null): GangError | undefined {
  if (record === undefined || record === null) return undefined;
  let theirs: unknown;
  try {
    theirs = (JSON.parse(record) as { worldSize?: unknown }).worldSize;
  } catch {
    return undefined;
  }
  if (theirs === options.worldSize) return undefined;
  return new GangError(
    `rank ${rank} (${describeMember(record)}) of job ${options.keys.jobId} was started with world size ${String(theirs)}, rank ${options.rank} with ${options.worldSize}: every node must be launched with the same --nnodes and --nproc`,
    { code: "GANG_WORLD_SIZE" },
  );
}

/** "pid 123 on node-a", for messages; the record as is when it is not one of ours. */
export function describeMember(record: string | null | undefined): string {
  if (record === null || record === undefined) return "unknown process";
  try {
    const { host, pid } = JSON.parse(record) as { host?: unknown; pid?: unknown };
    return `pid ${String(pid)} on ${String(host)}`;
  } catch {
    return record;
  }
}

export async function joinRun(options: JoinOptions): Promise<JoinedRun> {
  const { sub, keys } = options;
  const wakeup = new Wakeup();
  const onMessage = (channel: string): void => {
    if (channel === keys.joinChannel) wakeup.notify();
  };
  sub.on("message", onMessage);
  try {
    await sub.subscribe(keys.joinChannel);
    const deadline = Date.now() + options.joinTimeoutMs;
    const self = memberRecord(options.worldSize);
    const run = options.rank === 0 ? await lead(options, self, wakeup, deadline) : await follow(options, self, wakeup, deadline);
    await sub.unsubscribe(keys.joinChannel);
    return run;
  } catch (error) {
    throw error instanceof CkptError ? error : commandFailure(options.where, error);
  } finally {
    sub.off("message", onMessage);
    wakeup.cancel();
  }
}

async function lead(options: JoinOptions, self: string, wakeup: Wakeup, deadline: number): Promise<JoinedRun> {
  const { cmd, keys, worldSize, deadAfterMs } = options;
  await waitForEarlierRunToEnd(options, deadline);
  const id = randomBytes(8).toString("hex");
  const generation = keys.generation(id);
  options.onJoin(generation, self);
  await execTransaction(
    cmd
      .multi()
      .set(keys.current, id, "PX", RUN_RECORD_TTL_MS)
      .hset(generation.joined, "0", self)
      .pexpire(generation.joined, RUN_RECORD_TTL_MS)
      .set(generation.alive(0), self, "PX", deadAfterMs)
      .publish(keys.joinChannel, id),
  );
  for (;;) {
    const [current, joined] = (await execTransaction(
      cmd.multi().get(keys.current).hgetall(generation.joined).set(generation.alive(0), self, "PX", deadAfterMs),
    )) as [string | null, Record<string, string>, unknown];
    if (current !== id) {
      throw new GangError(
        `another run of job ${keys.jobId} started at ${options.where} while this one was gathering its ranks (are two launches using the same --job-id?)`,
        { code: "GANG_JOB_IN_USE" },
      );
    }
    for (const [rank, record] of Object.entries(joined)) {
      const mismatch = worldSizeMismatch(options, Number(rank), record);
      if (mismatch) throw mismatch;
    }
    const members = Array.from({ length: worldSize }, (_, rank) => joined[String(rank)]);
    const missing = ranksWhere(members, (member) => member === undefined);
    if (missing.length === 0) {
      const sealed = members as string[];
      await execTransaction(
        cmd
          .multi()
          .set(generation.sealed, JSON.stringify(sealed), "PX", RUN_RECORD_TTL_MS)
          .pexpire(keys.current, RUN_RECORD_TTL_MS)
          .publish(keys.joinChannel, `sealed ${id}`),
      );
      return { generation, members: sealed, self };
    }
    // A rank that joined keeps its alive key fresh while it waits; one that lost it has died.
    const joinedRanks = ranksWhere(members, (member, rank) => member !== undefined && rank !== 0);
    if (joinedRanks.length > 0) {
      const alive = await cmd.mget(joinedRanks.map((rank) => generation.alive(rank)));
      const dead = joinedRanks.find((_, index) => alive[index] === null);
      if (dead !== undefined) {
        throw new GangError(
          `rank ${dead} (${describeMember(members[dead])}) joined job ${keys.jobId} and then stopped sending heartbeats to ${options.where}: it died or lost its connection`,
          { rank: dead, code: "GANG_RANK_GONE" },
        );
      }
    }
    if (Date.now() >= deadline) throw joinTimeout(options, `rank(s) ${missing.join(", ")} to join`);
    await wakeup.wait(Math.min(options.heartbeatMs, deadline - Date.now()));
  }
}

/**
 * A rank 0 finding a started earlier run waits until none of its ranks is alive (their keys
 * expire at most `deadAfterMs` after they died), so a relaunch right after a failure works but a
 * second launch beside a running job with the same id is refused.
 */
async function waitForEarlierRunToEnd(options: JoinOptions, deadline: number): Promise<void> {
  const { cmd, keys } = options;
  const earlier = await cmd.get(keys.current);
  if (earlier === null) return;
  const generation = keys.generation(earlier);
  const sealed = await cmd.get(generation.sealed);
  // Never started: its rank 0, if still alive, sees that it was replaced and gives up.
  if (sealed === null) return;
  const earlierMembers = parseSealed(sealed, options.where);
  const giveUpAt = Math.min(deadline, Date.now() + options.deadAfterMs + 2 * options.heartbeatMs);
  for (;;) {
    const alive = await cmd.mget(earlierMembers.map((_, rank) => generation.alive(rank)));
    // A rank that closed its transport marks its key; only a key still beating is a live rank.
    const live = alive.findIndex((value) => value !== null && !value.startsWith(CLOSED_MARK));
    if (live < 0) return;
    if (Date.now() >= giveUpAt) {
      throw new GangError(
        `job id ${keys.jobId} is in use at ${options.where}: rank ${live} (${describeMember(alive[live])}) of a running job is alive; stop that job or give this one another --job-id`,
        { code: "GANG_JOB_IN_USE" },
      );
    }
    await new Promise((resolve) => setTimeout(resolve, options.heartbeatMs));
  }
}

async function follow(options: JoinOptions, self: string, wakeup: Wakeup, deadline: number): Promise<JoinedRun> {
  const { cmd, keys, rank, deadAfterMs } = options;
  let joinedId: string | undefined;
  for (;;) {
    const id = await cmd.get(keys.current);
    let waitingFor = "rank 0 to start the run";
    if (id !== null) {
      const generation = keys.generation(id);
      const sealed = await cmd.get(generation.sealed);
      if (sealed !== null) {
        const members = parseSealed(sealed, options.where);
        if (members[rank] === self) return { generation, members, self };
        if (joinedId === id) {
          throw new GangError(
            `another process (${describeMember(members[rank])}) joined job ${keys.jobId} as rank ${rank} (are two launches using the same --job-id and node rank?)`,
            { code: "GANG_JOB_IN_USE" },
          );
        }
        // An earlier run of the job: this run's rank 0 will publish a new one.
      } else {
        const transaction = cmd
          .multi()
          .hset(generation.joined, String(rank), self)
          .pexpire(generation.joined, RUN_RECORD_TTL_MS)
          .set(generation.alive(rank), self, "PX", deadAfterMs)
          .hkeys(generation.joined)
          .hget(generation.joined, "0")
          .get(generation.alive(0));
        if (joinedId !== id) transaction.publish(keys.joinChannel, `joined ${rank}`);
        const replies = await execTransaction(transaction);
        // Only a live rank 0 speaks for this run: that of an unfinished earlier run may differ.
        const leaderAlive = typeof replies[5] === "string" && !replies[5].startsWith(CLOSED_MARK);
        const mismatch = leaderAlive ? worldSizeMismatch(options, 0, replies[4] as string | null) : undefined;
        if (mismatch) throw mismatch;
        if (joinedId !== id) options.onJoin(generation, self);
        joinedId = id;
        const present = new Set((replies[3] as string[]).map(Number));
        const missing = ranksWhere(new Array<undefined>(options.worldSize).fill(undefined), (_, r) => !present.has(r));
        waitingFor = missing.length > 0 ? `rank(s) ${missing.join(", ")} to join` : "rank 0 to start the run";
      }
    }
    if (Date.now() >= deadline) throw joinTimeout(options, waitingFor);
    await wakeup.wait(Math.min(options.heartbeatMs, deadline - Date.now()));
  }
}

function joinTimeout(options: JoinOptions, waitingFor: string): GangError {
  return new GangError(
    `rank ${options.rank} timed out after ${options.joinTimeoutMs} ms waiting for ${waitingFor} of job ${options.keys.jobId} at ${options.where}`,
    { code: "GANG_TIMEOUT" },
  );
}

function parseSealed(sealed: string, where: string): string[] {
  try {
    const members: unknown = JSON.parse(sealed);
    if (Array.isArray(members) && members.every((member) => typeof member === "string")) return members;
  } catch {
    // reported below
  }
  throw new GangError(`the member list of a run at ${where} is damaged: ${sealed.slice(0, 100)}`, { code: "GANG_REDIS" });
}

function ranksWhere<T>(members: T[], test: (member: T, rank: number) => boolean): number[] {
  return members.flatMap((member, rank) => (test(member, rank) ? [rank] : []));
}

/** Sleeps until notified (a message on the join channel) or until a timeout, whichever is first. */
class Wakeup {
  private notified = false;
  private wake: (() => void) | undefined;
  private timer: NodeJS.Timeout | undefined;

  notify(): void {
    if (this.wake) this.wake();
    else this.notified = true;
  }

  wait(ms: number): Promise<void> {
    if (this.notified) {
      this.notified = false;
      return Promise.resolve();
    }
    return new Promise((resolve) => {
      this.wake = () => {
        clearTimeout(this.timer);
        this.wake = undefined;
        resolve();
      };
      this.timer = setTimeout(this.wake, Math.max(0, ms));
    });
  }

  cancel(): void {
    clearTimeout(this.timer);
  }
}
