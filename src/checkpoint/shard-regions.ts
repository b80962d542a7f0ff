import type { TensorRegionFile } from "../io/tensor-regions.js";
import { DTYPES, type DType } from "../tensor/dtype.js";
import { Tensor, contiguousStrides } from "../tensor/tensor.js";

/** A block of a full tensor: its first index and size in each dimension. */
export interface Region {
  offsets: number[];
  shape: number[];
}

/** One saved shard of a full tensor, in the file that holds it (its storage not read). */
export interface SourceShard {
  file: TensorRegionFile;
  tensor: Tensor;
  offsets: readonly number[];
}

/**
 * The dimension a tensor was split along when saved: the first one that some shard does not span
 * whole; 0 when every shard holds the whole tensor (nothing to follow, dim 0 as FSDP splits).
 */
export function savedSplitDim(shards: readonly { tensor: Tensor }[], globalShape: readonly number[]): number {
  for (let d = 0; d < globalShape.length; d++) if (shards.some(({ tensor }) => tensor.shape[d] !== globalShape[d])) return d;
  return 0;
}

/**
 * Part `index` of `count` of a tensor split evenly along `dim`: rows [⌊i·n/c⌋, ⌊(i+1)·n/c⌋), so
 * sizes differ by at most one and every row belongs to exactly one part.
 */
export function evenSplit(globalShape: readonly number[], dim: number, index: number, count: number): Region {
  const offsets = globalShape.map(() => 0);
  const shape = [...globalShape];
  if (globalShape.length === 0) return { offsets, shape };
  const size = globalShape[dim]!;
  const start = Math.floor((index * size) / count);
  offsets[dim] = start;
  shape[dim] = Math.floor(((index + 1) * size) / count) - start;
  return { offsets, shape };
}

/**
 * Reads `region` of a full tensor of `globalShape` from the saved shards that tile it: a new
 * contiguous tensor is allocated once and each overlap with a shard is read into it by positioned
 * reads, one per contiguous run (one read per shard for a split along dim 0). Throws when the
 * shards do not cover the region exactly once.
 */
export async function readRegion(shards: readonly SourceShard[], dtype: DType, region: Region): Promise<Tensor> {
  const rank = region.shape.length;
  // The overlaps first: a global shape read from a file is only trusted once the shards, whose
  // storages the reader checked against the file, cover the region exactly (before allocating it).
  const overlaps: { source: SourceShard; lo: number[]; hi: number[] }[] = [];
  let covered = 0;
  for (const source of shards) {
    const lo: number[] = [];
    const hi: number[] = [];
    for (let d = 0; d < rank; d++) {
      lo.push(Math.max(source.offsets[d]!, region.offsets[d]!));
      hi.push(Math.min(source.offsets[d]! + source.tensor.shape[d]!, region.offsets[d]! + region.shape[d]!));
    }
    if (lo.some((start, d) => hi[d]! <= start)) continue;
    covered += lo.reduce((n, start, d) => n * (hi[d]! - start), 1);
    overlaps.push({ source, lo, hi });
  }
  const wanted = region.shape.reduce((n, size) => n * size, 1);
  if (covered !== wanted) throw new Error(`the saved shards cover ${covered} of the ${wanted} elements asked for: they must tile the tensor exactly once`);

  const target = Tensor.zeros(region.shape, dtype);
  const { itemSize } = DTYPES[dtype];
  const out = target.bytes;
  const targetStrides = target.strides;
  for (const { source, lo, hi } of overlaps) {
    const { tensor } = source;
    // Contiguous source needed for positioned reads; a view is read whole and copied from memory.
    const direct = tensor.isContiguous;
    if (!direct) await source.file.readWhole(tensor);
    const sourceBytes = direct ? undefined : tensor.contiguous().bytes;
    const sourceStrides = direct ? tensor.strides : contiguousStrides(tensor.shape);
    const base = direct ? tensor.offset : 0;
    // Trailing dimensions the overlap spans whole in both the shard and the region merge into one run.
    let split = rank;
    while (split > 0 && hi[split - 1]! - lo[split - 1]! === tensor.shape[split - 1] && hi[split - 1]! - lo[split - 1]! === region.shape[split - 1]) split--;
    const runDims = Math.max(split - 1, 0);
    const runLength = lo.slice(runDims).reduce((n, start, i) => n * (hi[runDims + i]! - start), 1);
    const index = lo.slice(0, runDims);
    for (;;) {
      let from = base;
      let to = 0;
      for (let d = 0; d < rank; d++) {
        const at = d < runDims ? index[d]! : lo[d]!;
        from += (at - source.offsets[d]!) * sourceStrides[d]!;
        to += (at - region.offsets[d]!) * targetStrides[d]!;
      }
      const into = out.subarray(to * itemSize, (to + runLength) * itemSize);
      if (sourceBytes === undefined) await source.file.readElements(tensor, from, runLength, into);
      else into.set(sourceBytes.subarray(from * itemSize, (from + runLength) * itemSize));
      let d = runDims - 1;
      for (; d >= 0; d--) {
        if (++index[d]! < hi[d]!) break;
        index[d] = lo[d]!;
      }
      if (d < 0) break;
    }
  }
  return target;
}
