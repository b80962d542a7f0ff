import { InvalidArgumentError } from "../errors.js";
import { checkAllReduceInput, sumInRankOrder } from "./all-reduce.js";
import type { Gang, Gangs, JsonValue } from "./gang.js";

/**
 * A gang of one process that plays rank `rank` of `size` (fairseq2's FakeGang): collectives
 * return at once, and an all-gather returns this rank's value for every rank. With it, one
 * process writes exactly the files that rank would write in a real job.
 *
 * @example
 * const manager = new FileCheckpointManager({ checkpointDir, gangs: fakeGangs({ dpRank: 1, dpSize: 4 }) });
 */
export class FakeGang implements Gang {
  readonly rank: number;
  readonly size: number;

  constructor(options: { rank?: number; size?: number } = {}) {
    const rank = options.rank ?? 0;
    const size = options.size ?? 1;
    if (!Number.isInteger(size) || size < 1) throw new InvalidArgumentError(`gang size must be a positive integer, got ${size}`);
    if (!Number.isInteger(rank) || rank < 0 || rank >= size) throw new InvalidArgumentError(`rank must be an integer in [0, ${size}), got ${rank}`);
    this.rank = rank;
    this.size = size;
  }

  async barrier(): Promise<void> {}

  async allGather(value: JsonValue): Promise<JsonValue[]> {
    return new Array<JsonValue>(this.size).fill(value);
  }

  /** As with `allGather`, every rank is taken to hold this rank's values: the sum is `size` copies. */
  async allReduceSum(values: Float32Array): Promise<Float32Array> {
    checkAllReduceInput(values);
    return sumInRankOrder(new Array<Float32Array>(this.size).fill(values));
  }
}

export interface FakeGangsOptions {
  dpRank?: number;
  dpSize?: number;
  tpRank?: number;
  tpSize?: number;
}

/** Gangs for one process playing data-parallel rank `dpRank` and tensor-parallel rank `tpRank`. */
export function fakeGangs(options: FakeGangsOptions = {}): Gangs {
  const dp = new FakeGang({ rank: options.dpRank ?? 0, size: options.dpSize ?? 1 });
  const tp = new FakeGang({ rank: options.tpRank ?? 0, size: options.tpSize ?? 1 });
  const root = new FakeGang({ rank: dp.rank * tp.size + tp.rank, size: dp.size * tp.size });
  return { root, dp, tp };
}
