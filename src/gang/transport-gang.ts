import { GangError, InvalidArgumentError } from "../errors.js";
import { allReduceSumByGather } from "./all-reduce.js";
import type { Gang, JsonValue } from "./gang.js";
import { GANG_TIMEOUT, type Transport } from "./transport.js";

/** How long a collective waits for the other members by default: 30 minutes, as PyTorch's. */
export const DEFAULT_COLLECTIVE_TIMEOUT_MS = 30 * 60 * 1000;
/** The longest timeout a Node timer can hold (about 24.8 days); longer ones would fire at once. */
export const MAX_COLLECTIVE_TIMEOUT_MS = 2 ** 31 - 1;

export interface TransportGangOptions {
  /** Names the group on the transport; every member must use the same name (e.g. `"dp.1"`). */
  name: string;
  /** The global ranks of the members, ascending; the transport's rank must be one of them. */
  members: readonly number[];
  /** How long one collective waits for the other members. Default 30 minutes. */
  timeoutMs?: number;
}

/**
 * A gang of processes over a `Transport`: each collective is one numbered round among the
 * members' global ranks. Members must call the same collectives in the same order, as in any gang.
 *
 * After a failed collective the gang is broken (members no longer agree on round numbers), so
 * every later collective fails with the same error. A timed-out round also aborts the job through
 * the transport: the rank that is not there may be stuck, and its peers must not each wait out
 * their own timeout.
 *
 * @example
 * const root = new TransportGang(transport, { name: "root", members: [0, 1, 2, 3] });
 * await root.barrier();
 */
export class TransportGang implements Gang {
  readonly rank: number;
  readonly size: number;
  private readonly name: string;
  private readonly members: readonly number[];
  private readonly timeoutMs: number;
  private seq = 0;
  private broken: GangError | undefined;

  constructor(
    private readonly transport: Transport,
    options: TransportGangOptions,
  ) {
    const { name, members } = options;
    if (members.length === 0 || !members.every((m, i) => Number.isInteger(m) && m >= 0 && m < transport.worldSize && (i === 0 || m > members[i - 1]!))) {
      throw new InvalidArgumentError(`gang ${name}: members must be ascending ranks in [0, ${transport.worldSize}), got [${members.join(", ")}]`);
    }
    const rank = members.indexOf(transport.rank);
    if (rank < 0) throw new InvalidArgumentError(`gang ${name}: rank ${transport.rank} is not among its members [${members.join(", ")}]`);
    this.timeoutMs = checkTimeout(options.timeoutMs ?? DEFAULT_COLLECTIVE_TIMEOUT_MS, "timeoutMs");
    this.name = name;
    this.members = [...members];
    this.rank = rank;
    this.size = members.length;
  }

  async barrier(): Promise<void> {
    await this.exchange("barrier", null);
  }

  async allGather(value: JsonValue): Promise<JsonValue[]> {
    return this.exchange("allGather", value);
  }

  async allReduceSum(values: Float32Array): Promise<Float32Array> {
    return allReduceSumByGather(this, values);
  }

  private async exchange(operation: string, value: JsonValue): Promise<JsonValue[]> {
    if (this.broken !== undefined) throw this.broken;
    // A gang of one has nobody to wait for.
    if (this.size === 1) return [value];
    const seq = this.seq++;
    try {
      return await this.transport.exchange(this.name, this.members, seq, value, this.timeoutMs);
    } catch (error) {
      const original = error instanceof GangError ? error : new GangError(String(error), { cause: error });
      const message = `${operation} in gang ${this.name} (round ${seq}) failed: ${original.message}`;
      this.broken = new GangError(message, { cause: original, code: original.code, ...(original.rank !== undefined ? { rank: original.rank } : {}) });
      if (original.code === GANG_TIMEOUT) await this.transport.abort(message).catch(() => undefined);
      throw this.broken;
    }
  }
}

/** A collective timeout in milliseconds, checked (`what` names where it came from). */
export function checkTimeout(value: number, what: string): number {
  if (!Number.isSafeInteger(value) || value < 1 || value > MAX_COLLECTIVE_TIMEOUT_MS) {
    throw new InvalidArgumentError(`${what} must be a whole number of milliseconds in [1, ${MAX_COLLECTIVE_TIMEOUT_MS}], got ${value}`);
  }
  return value;
}
