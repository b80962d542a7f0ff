import { GangError, InvalidArgumentError } from "../errors.js";
import type { JsonValue } from "./gang.js";
import { commandFailure, closeConnection, execTransaction, unreachable, type RedisClient } from "./redis-client.js";
import { CLOSED_MARK, type Heartbeat } from "./redis-heartbeat.js";
import { describeMember, type JoinedRun } from "./redis-join.js";
import { ABORT_SCRIPT, ROUND_TTL_MARGIN_MS, RUN_RECORD_TTL_MS, TAKE_ROUND_SCRIPT, WRITE_ROUND_SCRIPT, type GenerationKeys } from "./redis-keys.js";
import type { Transport } from "./transport.js";

/**
 * One run of a job on the Redis server, as seen by one rank: rounds, aborts and the watch on the
 * other ranks. Made by `connectRedisTransport` once every rank has joined.
 */

export interface RunSettings {
  heartbeatMs: number;
  deadAfterMs: number;
}

/** Node's timers cannot wait longer. */
export const MAX_TIMEOUT_MS = 2 ** 31 - 1;

interface PendingRound {
  readonly group: string;
  readonly seq: number;
  readonly members: readonly number[];
  readonly resolve: (values: JsonValue[]) => void;
  readonly reject: (error: GangError) => void;
  readonly timer: NodeJS.Timeout;
  /** A write or read of the round is under way. */
  taking: boolean;
  /** A notice of completion came while `taking`: read again if that reply found it incomplete. */
  noticed: boolean;
}

export class RedisRun implements Transport {
  private readonly generation: GenerationKeys;
  private readonly members: string[];
  /** Pending rounds by round key. */
  private readonly pending = new Map<string, PendingRound>();
  private failure: GangError | undefined;
  private closed = false;
  private checkTimer: NodeJS.Timeout | undefined;
  private checking = false;

  constructor(
    private readonly cmd: RedisClient,
    private readonly sub: RedisClient,
    private readonly heartbeat: Heartbeat,
    run: JoinedRun,
    private readonly where: string,
    readonly rank: number,
    readonly worldSize: number,
    private readonly settings: RunSettings,
  ) {
    this.generation = run.generation;
    this.members = run.members;
  }

  /**
   * Subscribes to this rank's inbox and to the run's aborts before the first round is written, so
   * no notice is missed; and watches both connections, whose loss fails the transport at once.
   */
  async listen(): Promise<void> {
    for (const client of [this.cmd, this.sub]) {
      let lastError: unknown;
      client.on("error", (error: unknown) => (lastError = error));
      client.on("close", () => this.fail(unreachable(this.where, lastError ?? "connection lost")));
    }
    this.sub.on("message", (channel: string, message: string) => this.onMessage(channel, message));
    await this.sub.subscribe(this.generation.inbox(this.rank), this.generation.abort);
    // An abort published before the subscription.
    const standing = await this.cmd.get(this.generation.abort);
    if (standing !== null) this.onAbort(standing);
  }

  exchange(group: string, members: readonly number[], seq: number, value: JsonValue, timeoutMs: number): Promise<JsonValue[]> {
    try {
      this.checkExchange(group, members, seq, timeoutMs);
    } catch (error) {
      return Promise.reject(error);
    }
    if (this.failure) return Promise.reject(this.failure);
    if (this.closed) return Promise.reject(new GangError(`rank ${this.rank}: exchange "${group}" round ${seq} after the transport was closed`));
    if (members.length === 1) return Promise.resolve([JSON.parse(JSON.stringify(value)) as JsonValue]);
    const key = this.generation.round(group, seq);
    if (this.pending.has(key)) return Promise.reject(new InvalidArgumentError(`exchange "${group}" round ${seq} is already pending on rank ${this.rank}`));
    let payload: string;
    try {
      payload = JSON.stringify(value);
    } catch (error) {
      return Promise.reject(new InvalidArgumentError(`exchange "${group}" round ${seq}: the value is not JSON (${(error as Error).message})`, { cause: error }));
    }
    return new Promise<JsonValue[]>((resolve, reject) => {
      const timer = setTimeout(() => void this.timeOut(key, timeoutMs), timeoutMs);
      const round: PendingRound = { group, seq, members, resolve, reject, timer, taking: true, noticed: false };
      this.pending.set(key, round);
      this.startChecks();
      const ttl = timeoutMs + ROUND_TTL_MARGIN_MS;
      const keys = [key, this.generation.readers(group, seq)];
      const args = [this.rank, members.length, ttl, payload, this.generation.inboxPrefix, ...members];
      this.cmd.eval(WRITE_ROUND_SCRIPT, 2, ...keys, ...args).then(
        (reply) => this.received(key, round, reply),
        (error: unknown) => this.fail(commandFailure(this.where, error)),
      );
    });
  }

  async abort(reason: string): Promise<void> {
    if (this.closed) return;
    await this.report(this.rank, `rank ${this.rank} (${describeMember(this.members[this.rank])}) aborted: ${reason}`, "GANG_ABORTED");
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.stopChecks();
    for (const [key, round] of this.pending) {
      this.settle(key, round);
      round.reject(new GangError(`rank ${this.rank}: the transport was closed during exchange "${round.group}" round ${round.seq}`));
    }
    await this.heartbeat.stop();
    await Promise.all([closeConnection(this.cmd), closeConnection(this.sub)]);
  }

  /** Fails every pending and later exchange with `error` (the first failure wins). */
  fail(error: GangError): void {
    if (this.failure || this.closed) return;
    this.failure = error;
    this.stopChecks();
    for (const [key, round] of this.pending) {
      this.settle(key, round);
      round.reject(error);
    }
  }

  private checkExchange(group: string, members: readonly number[], seq: number, timeoutMs: number): void {
    const ascending = members.every((member, index) => Number.isInteger(member) && member >= 0 && member < this.worldSize && (index === 0 || member > members[index - 1]!));
    if (!ascending || !members.includes(this.rank)) {
      throw new InvalidArgumentError(`exchange "${group}": members [${members.join(", ")}] must be ascending ranks below ${this.worldSize} including rank ${this.rank}`);
    }
    if (!Number.isInteger(seq) || seq < 0) throw new InvalidArgumentError(`exchange "${group}": round must be a non-negative integer, got ${seq}`);
    if (!(timeoutMs > 0 && timeoutMs <= MAX_TIMEOUT_MS)) {
      throw new InvalidArgumentError(`exchange "${group}": timeout must be in (0, ${MAX_TIMEOUT_MS}] ms, got ${timeoutMs}`);
    }
  }

  private onMessage(channel: string, message: string): void {
    if (channel === this.generation.abort) {
      this.onAbort(message);
      return;
    }
    // A notice that round `message` is complete.
    const round = this.pending.get(message);
    if (round !== undefined) this.take(message, round);
  }

  /**
   * Records a failure of the job as its abort record, unless one stands already, and fails this
   * rank with the record that stands: every rank then reports the same, first, failure.
   * Best effort: if the server is gone, every rank fails anyway.
   */
  private async report(rank: number, message: string, code: string): Promise<void> {
    const record = JSON.stringify({ rank, message, code });
    const standing = await this.cmd.eval(ABORT_SCRIPT, 1, this.generation.abort, record, RUN_RECORD_TTL_MS).catch(() => record);
    this.onAbort(typeof standing === "string" ? standing : record);
  }

  private onAbort(record: string): void {
    let parsed: { rank?: unknown; message?: unknown; code?: unknown } = {};
    try {
      parsed = JSON.parse(record) as typeof parsed;
    } catch {
      // Not ours; reported as it is.
    }
    const message = typeof parsed.message === "string" ? parsed.message : `the job was aborted: ${record}`;
    const code = typeof parsed.code === "string" ? parsed.code : "GANG_ABORTED";
    this.fail(new GangError(message, typeof parsed.rank === "number" ? { rank: parsed.rank, code } : { code }));
  }

  /** Reads a round that is complete; its members' notices and checks may race, one read suffices. */
  private take(key: string, round: PendingRound): void {
    if (round.taking) {
      round.noticed = true;
      return;
    }
    round.taking = true;
    round.noticed = false;
    const ttl = ROUND_TTL_MARGIN_MS;
    this.cmd.eval(TAKE_ROUND_SCRIPT, 2, key, this.generation.readers(round.group, round.seq), this.rank, round.members.length, ttl).then(
      (reply) => this.received(key, round, reply),
      (error: unknown) => this.fail(commandFailure(this.where, error)),
    );
  }

  /** Handles the reply of a write or a read: the round's values, or nil while it is incomplete. */
  private received(key: string, round: PendingRound, reply: unknown): void {
    if (this.pending.get(key) !== round) return;
    round.taking = false;
    if (reply === null) {
      if (round.noticed) this.take(key, round);
      return;
    }
    this.settle(key, round);
    try {
      round.resolve(parseRound(reply, round, this.where));
    } catch (error) {
      round.reject(commandFailure(this.where, error));
    }
  }

  private settle(key: string, round: PendingRound): void {
    clearTimeout(round.timer);
    this.pending.delete(key);
    if (this.pending.size === 0) this.stopChecks();
  }

  private async timeOut(key: string, timeoutMs: number): Promise<void> {
    const round = this.pending.get(key);
    if (round === undefined) return;
    this.settle(key, round);
    const arrived = await this.cmd.hkeys(key).catch(() => undefined);
    const late = arrived === undefined ? [] : round.members.filter((member) => !arrived.includes(String(member)));
    const waitingFor = late.length > 0 ? ` waiting for rank(s) ${late.join(", ")}` : "";
    round.reject(new GangError(`rank ${this.rank}: exchange "${round.group}" round ${round.seq} timed out after ${timeoutMs} ms${waitingFor}`, { code: "GANG_TIMEOUT" }));
  }

  private startChecks(): void {
    this.checkTimer ??= setInterval(() => void this.check(), this.settings.heartbeatMs);
  }

  private stopChecks(): void {
    clearInterval(this.checkTimer);
    this.checkTimer = undefined;
  }

  /**
   * While this rank waits: looks for an abort, for rounds completed without a notice reaching us,
   * and for members missing from a round whose heartbeat expired (or who closed). A member that
   * wrote its value before dying is not blamed: the round can still complete.
   */
  private async check(): Promise<void> {
    if (this.checking || this.pending.size === 0) return;
    this.checking = true;
    try {
      const rounds = [...this.pending.entries()];
      const transaction = this.cmd.multi().get(this.generation.abort);
      for (const [key] of rounds) transaction.hkeys(key);
      const [abort, ...arrivals] = await execTransaction(transaction);
      if (abort !== null) return this.onAbort(abort as string);
      const missing = new Set<number>();
      let completed = false;
      rounds.forEach(([key, round], index) => {
        const arrived = new Set(arrivals[index] as string[]);
        const late = round.members.filter((member) => !arrived.has(String(member)));
        if (late.length === 0) {
          completed = true;
          this.take(key, round);
        }
        for (const member of late) if (member !== this.rank) missing.add(member);
      });
      if (completed || missing.size === 0) return;
      const suspects = [...missing].sort((a, b) => a - b);
      const alive = await this.cmd.mget(suspects.map((rank) => this.generation.alive(rank)));
      const dead = suspects.find((_, index) => alive[index] === null);
      const left = suspects.find((_, index) => alive[index]?.startsWith(CLOSED_MARK));
      if (dead !== undefined) {
        const message = `rank ${dead} (${describeMember(this.members[dead])}) is gone: no heartbeat at the rendezvous ${this.where} for ${this.settings.deadAfterMs} ms (it died, exited or lost its connection)`;
        await this.report(dead, message, "GANG_RANK_GONE");
      } else if (left !== undefined) {
        const message = `rank ${left} (${describeMember(this.members[left])}) closed its transport while rank ${this.rank} waited for it`;
        await this.report(left, message, "GANG_RANK_GONE");
      }
    } catch (error) {
      this.fail(commandFailure(this.where, error));
    } finally {
      this.checking = false;
    }
  }
}

/** The values of a complete round in member order, from the flat HGETALL reply. */
function parseRound(reply: unknown, round: PendingRound, server: string): JsonValue[] {
  const fields = reply as string[];
  const byRank = new Map<string, string>();
  for (let index = 0; index + 1 < fields.length; index += 2) byRank.set(fields[index]!, fields[index + 1]!);
  return round.members.map((member) => {
    const value = byRank.get(String(member));
    const where = `exchange "${round.group}" round ${round.seq} at ${server}`;
    if (value === undefined) throw new GangError(`${where} has no value from rank ${member}`, { code: "GANG_REDIS" });
    try {
      return JSON.parse(value) as JsonValue;
    } catch (error) {
      throw new GangError(`${where} holds a damaged value from rank ${member}`, { cause: error, code: "GANG_REDIS" });
    }
  });
}
