import { InvalidArgumentError } from "../errors.js";
import { allReduceSumByGather } from "./all-reduce.js";
import type { Gang, JsonValue } from "./gang.js";

/**
 * Gangs whose members live in one process and really exchange values, so several managers can
 * run side by side (in tests, or one process driving several workers). Members must call the
 * same collectives in the same order, as in any gang.
 *
 * @example
 * const [g0, g1] = InProcessGang.create(2);
 */
export class InProcessGang implements Gang {
  private constructor(
    private readonly group: Group,
    readonly rank: number,
  ) {}

  static create(size: number): InProcessGang[] {
    if (!Number.isInteger(size) || size < 1) throw new InvalidArgumentError(`gang size must be a positive integer, got ${size}`);
    const group = new Group(size);
    return Array.from({ length: size }, (_, rank) => new InProcessGang(group, rank));
  }

  get size(): number {
    return this.group.size;
  }

  async barrier(): Promise<void> {
    await this.group.exchange(this.rank, null);
  }

  async allGather(value: JsonValue): Promise<JsonValue[]> {
    return this.group.exchange(this.rank, value);
  }

  async allReduceSum(values: Float32Array): Promise<Float32Array> {
    return allReduceSumByGather(this, values);
  }
}

class Group {
  private readonly rounds = new Map<number, Round>();
  private readonly calls: number[];

  constructor(readonly size: number) {
    this.calls = new Array<number>(size).fill(0);
  }

  exchange(rank: number, value: JsonValue): Promise<JsonValue[]> {
    const index = this.calls[rank]!++;
    let round = this.rounds.get(index);
    if (round === undefined) {
      round = new Round(this.size);
      this.rounds.set(index, round);
    }
    // structuredClone: members must not share mutable objects, as across processes.
    const result = round.contribute(rank, structuredClone(value));
    if (round.complete) this.rounds.delete(index);
    return result;
  }
}

class Round {
  private readonly values: JsonValue[];
  private arrived = 0;
  private readonly waiters: ((values: JsonValue[]) => void)[] = [];

  constructor(size: number) {
    this.values = new Array<JsonValue>(size).fill(null);
  }

  get complete(): boolean {
    return this.arrived === this.values.length;
  }

  contribute(rank: number, value: JsonValue): Promise<JsonValue[]> {
    this.values[rank] = value;
    this.arrived++;
    const done = new Promise<JsonValue[]>((resolve) => this.waiters.push(resolve));
    if (this.arrived === this.values.length) for (const resolve of this.waiters) resolve([...this.values]);
    return done;
  }
}
