import { InvalidArgumentError } from "../errors.js";
import { DTYPES } from "./dtype.js";
import { Tensor } from "./tensor.js";

/**
 * One rank's shard of a tensor split across data-parallel ranks (FSDP-style): `shard` holds the
 * block of the full tensor (of shape `globalShape`) that starts at index `offsets` in each
 * dimension. Saved in the rank's own file and loaded back as the same shard;
 * `saveConsolidatedFsdpModel` assembles the full tensors from every rank's shards.
 *
 * @example
 * // rank r of 2 holds rows [r * 4, r * 4 + 4) of an 8 × 16 weight
 * const weight = new ShardedTensor(localRows, { globalShape: [8, 16], offsets: [r * 4, 0] });
 */
export class ShardedTensor {
  readonly shard: Tensor;
  readonly globalShape: readonly number[];
  readonly offsets: readonly number[];

  constructor(shard: Tensor, options: { globalShape: readonly number[]; offsets: readonly number[] }) {
    if (!(shard instanceof Tensor)) throw new InvalidArgumentError("a ShardedTensor's shard must be a Tensor");
    const { globalShape, offsets } = options ?? {};
    if (!Array.isArray(globalShape) || !Array.isArray(offsets)) throw new InvalidArgumentError("a ShardedTensor needs globalShape and offsets arrays");
    if (globalShape.length !== shard.shape.length || offsets.length !== shard.shape.length) {
      throw new InvalidArgumentError(
        `a ShardedTensor's shard has ${shard.shape.length} dimensions but globalShape has ${globalShape.length} and offsets ${offsets.length}`,
      );
    }
    shard.shape.forEach((size, d) => {
      const full = globalShape[d]!;
      const at = offsets[d]!;
      if (!Number.isSafeInteger(full) || full < 0 || !Number.isSafeInteger(at) || at < 0 || at + size > full) {
        throw new InvalidArgumentError(`a ShardedTensor's shard of size ${size} at offset ${String(at)} does not fit dimension ${d} of size ${String(full)}`);
      }
    });
    this.shard = shard;
    this.globalShape = Object.freeze([...globalShape]);
    this.offsets = Object.freeze([...offsets]);
  }
}

/**
 * Copies `shard` into the full tensor `target` (contiguous, same dtype) at `offsets`, row by row
 * of the last dimension, so no element is touched twice and nothing is allocated but the rows.
 */
export function copyShardInto(target: Tensor, shard: Tensor, offsets: readonly number[]): void {
  if (target.dtype !== shard.dtype) throw new InvalidArgumentError(`a ${shard.dtype} shard cannot go into a ${target.dtype} tensor`);
  if (!target.isContiguous) throw new InvalidArgumentError("shards are assembled into a contiguous tensor");
  const itemSize = DTYPES[target.dtype].itemSize;
  const source = shard.bytes; // row-major, contiguous
  const dest = target.bytes;
  const rank = target.shape.length;
  if (rank === 0) {
    dest.set(source);
    return;
  }
  const rowLength = shard.shape[rank - 1]! * itemSize;
  const rows = rowLength === 0 ? 0 : shard.numel / shard.shape[rank - 1]!;
  const targetStrides = target.strides;
  const index = new Array<number>(rank - 1).fill(0);
  for (let row = 0; row < rows; row++) {
    let at = offsets[rank - 1]!;
    for (let d = 0; d < rank - 1; d++) at += (offsets[d]! + index[d]!) * targetStrides[d]!;
    dest.set(source.subarray(row * rowLength, (row + 1) * rowLength), at * itemSize);
    for (let d = rank - 2; d >= 0; d--) {
      if (++index[d]! < shard.shape[d]!) break;
      index[d] = 0;
    }
  }
}
