/** A JSON value: what gangs exchange (small control messages, never tensors). */
export type JsonValue = null | boolean | number | string | JsonValue[] | { [key: string]: JsonValue };

/**
 * A group of processes that act together (fairseq2's Gang). The checkpoint manager needs only a
 * barrier and an all-gather of small JSON messages; a real implementation must turn a dead or
 * failing peer into an error on every member within a bounded time, never a hang.
 */
export interface Gang {
  readonly rank: number;
  readonly size: number;
  /** Resolves when every member has called it. */
  barrier(): Promise<void>;
  /** Every member's `value`, indexed by rank. */
  allGather(value: JsonValue): Promise<JsonValue[]>;
  /**
   * The element-wise sum of every member's `values` (all of the same length), added in rank
   * order so every member gets the same bits. For small arrays, such as a small model's
   * gradients: the values travel as JSON (see `MAX_ALL_REDUCE_ELEMENTS`), not over a fast
   * interconnect.
   *
   * @example
   * const sum = await gangs.dp.allReduceSum(gradients);
   * for (let i = 0; i < sum.length; i++) gradients[i] = sum[i]! / gangs.dp.size;
   */
  allReduceSum(values: Float32Array): Promise<Float32Array>;
}

/**
 * The gangs of a job: `root` holds every process; `dp` the data-parallel peers of this process
 * (same tensor-parallel shard); `tp` the tensor-parallel peers (same data-parallel replica).
 */
export interface Gangs {
  root: Gang;
  dp: Gang;
  tp: Gang;
}
