import type { JsonValue } from "../gang/gang.js";
import { isCkptMessage, parseWorkerMessage, type AbortMessage, type ExchangeMessage, type LauncherMessage } from "../gang/ipc-messages.js";

/** What the relay needs from the launcher. */
export interface RelayHost {
  /** Sends a message to a worker's IPC channel (dropped when the channel is closed). */
  send(rank: number, message: LauncherMessage): void;
  /** A worker reported that it failed (an uncaught error, a timed-out round). */
  workerAborted(rank: number, reason: string): void;
  /** A worker broke the protocol: the launcher treats it as a failed worker. */
  protocolError(rank: number, problem: string): void;
}

interface Round {
  members: number[];
  values: Map<number, JsonValue>;
  /** Set when the round cannot complete; later arrivals are told at once. */
  failure?: { rank: number | null; reason: string };
}

/**
 * The launcher's side of the embedded transport: it collects each round (group, seq) from every
 * member and sends every member the values in member order. It holds no timers: a worker that
 * never arrives is the workers' collective timeout's business, and a worker that is gone is
 * reported by the launcher (`memberLeft`, `abortAll`) as soon as its process or channel closes.
 */
export class IpcRelay {
  private readonly rounds = new Map<string, Round>();
  private readonly departed = new Set<number>();
  private aborted: AbortMessage | undefined;

  constructor(
    private readonly worldSize: number,
    private readonly host: RelayHost,
  ) {}

  /** A message from worker `rank`'s channel; messages that are not ours are left to the worker's own code. */
  receive(rank: number, raw: unknown): void {
    if (!isCkptMessage(raw)) return;
    const message = parseWorkerMessage(raw);
    if (typeof message === "string") this.host.protocolError(rank, message);
    else if (message.ckpt === "abort") this.host.workerAborted(rank, message.reason);
    else this.contribute(rank, message);
  }

  /**
   * Worker `rank` can no longer take part (its channel closed: it ended, or closed its gangs).
   * Every round that still needs its value fails now instead of waiting for its timeout.
   */
  memberLeft(rank: number): void {
    if (this.departed.has(rank)) return;
    this.departed.add(rank);
    for (const [key, round] of this.rounds) {
      if (round.failure === undefined && round.members.includes(rank) && !round.values.has(rank)) this.failRound(key, round, rank, leftReason(rank, key));
    }
  }

  /** The incomplete rounds rank `rank` waits in, with the members still missing ("round 3 of group root for ranks 1, 2"). */
  waitingFor(rank: number): string[] {
    const waits: string[] = [];
    for (const [key, round] of this.rounds) {
      if (round.failure !== undefined || !round.values.has(rank)) continue;
      const [group, seq] = splitKey(key);
      const missing = round.members.filter((m) => !round.values.has(m));
      waits.push(`round ${seq} of group ${group} for rank${missing.length > 1 ? "s" : ""} ${missing.join(", ")}`);
    }
    return waits;
  }

  /** The job failed because of rank `rank`: every other worker is told, and later rounds are refused. */
  abortAll(rank: number, reason: string): void {
    if (this.aborted !== undefined) return;
    this.aborted = { ckpt: "abort", rank, reason };
    this.rounds.clear();
    for (let other = 0; other < this.worldSize; other++) if (other !== rank && !this.departed.has(other)) this.host.send(other, this.aborted);
  }

  private contribute(rank: number, message: ExchangeMessage): void {
    const { group, members, seq, value } = message;
    if (this.aborted !== undefined) return this.host.send(rank, this.aborted);
    const key = `${group}#${seq}`;
    const reject = (reason: string, at: number | null = null): void => this.host.send(rank, { ckpt: "round-failed", group, seq, rank: at, reason });
    if (!members.includes(rank) || members.some((m) => m >= this.worldSize)) {
      return reject(`rank ${rank} sent round ${seq} of group ${group} with members [${members.join(", ")}], which must include it and lie in [0, ${this.worldSize})`);
    }
    let round = this.rounds.get(key);
    if (round === undefined) {
      round = { members, values: new Map() };
      this.rounds.set(key, round);
    }
    if (round.failure !== undefined) return reject(round.failure.reason, round.failure.rank);
    if (round.members.join() !== members.join()) {
      round.values.set(rank, value);
      return this.failRound(key, round, null, `ranks disagree on the members of group ${group}: [${round.members.join(", ")}] and, from rank ${rank}, [${members.join(", ")}]`);
    }
    if (round.values.has(rank)) return reject(`rank ${rank} joined round ${seq} of group ${group} twice`);
    round.values.set(rank, value);
    const gone = members.find((m) => this.departed.has(m) && !round.values.has(m));
    if (gone !== undefined) return this.failRound(key, round, gone, leftReason(gone, key));
    if (round.values.size < members.length) return;
    this.rounds.delete(key);
    const values = members.map((m) => round.values.get(m)!);
    for (const member of members) this.host.send(member, { ckpt: "result", group, seq, values });
  }

  /** Tells every member that joined (and every later one) that the round cannot complete. */
  private failRound(key: string, round: Round, rank: number | null, reason: string): void {
    round.failure = { rank, reason };
    const [group, seq] = splitKey(key);
    for (const member of round.values.keys()) this.host.send(member, { ckpt: "round-failed", group, seq, rank, reason });
    // Kept (without values) only while someone may still arrive for it.
    round.values.clear();
  }
}

function leftReason(rank: number, key: string): string {
  const [group, seq] = splitKey(key);
  return `rank ${rank} left the job (its process ended, or it closed its gangs) before joining round ${seq} of group ${group}`;
}

function splitKey(key: string): [string, number] {
  const at = key.lastIndexOf("#");
  return [key.slice(0, at), Number(key.slice(at + 1))];
}
