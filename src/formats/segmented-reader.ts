import type { RandomAccessReader } from "./byte-io.js";
import { keepShape } from "../keep-shapes.js";

/**
 * Largest segment that groups small parts of a file (`segmentStarts`). The allocator hands back
 * freed buffers of this size from memory the process already has, where a buffer the size of the
 * file is fresh memory on every load: on the machines measured, first touch of fresh memory ran
 * at 0.2–0.6 GB/s, against ~10 GB/s for a read into memory already touched (docs/design.md,
 * "Reading into memory the process already has"). Up to 4 MiB measured as warm as 1 MiB.
 */
export const SEGMENT_BYTES = 1 << 20;

/**
 * Where to split a file of `size` bytes made of parts starting at `cuts` (ascending) into
 * segments: whole parts are grouped up to `maxBytes` a segment, and a part larger than that is a
 * segment of its own. Returns each segment's start, then `size`.
 */
export function segmentStarts(cuts: ArrayLike<number>, size: number, maxBytes = SEGMENT_BYTES): Float64Array {
  const starts = [0];
  let open = 0; // where the segment being grown starts
  let last = 0; // the last cut seen: the segment may close there
  const closeAt = (at: number): void => {
    if (at > open) {
      starts.push(at);
      open = at;
    }
  };
  for (let i = 0; i < cuts.length; i++) {
    const cut = cuts[i]!;
    if (!(cut > last && cut < size)) continue;
    if (cut - open > maxBytes) {
      closeAt(last);
      if (cut - open > maxBytes) closeAt(cut); // one part alone is larger
    }
    last = cut;
  }
  if (size - open > maxBytes) closeAt(last);
  if (size > 0) starts.push(size);
  return new Float64Array(starts);
}

/**
 * A file in memory as consecutive segments, each its own buffer: a range inside one segment is a
 * view, a range across two is copied. A loader reads a file of many small tensors this way
 * because memory of that size comes back warm from the allocator on the next load, while one
 * file-sized buffer is fresh memory every time (docs/design.md, "Reading into memory the process
 * already has").
 */
export class SegmentedReader implements RandomAccessReader {
  /** The segment the last lookup found: a load asks for ranges in file order. */
  private last = 0;

  /**
   * @param segments consecutive segments, none empty, together the whole file
   * @param starts where each segment starts in the file, ascending, then the file's size
   */
  constructor(
    readonly segments: readonly Uint8Array[],
    readonly starts: Float64Array,
  ) {
    if (starts.length !== segments.length + 1 || starts[0] !== 0) throw new RangeError("each segment needs its start, and the file its size");
    for (let i = 0; i < segments.length; i++) {
      if (starts[i + 1]! - starts[i]! !== segments[i]!.byteLength || segments[i]!.byteLength === 0) {
        throw new RangeError(`segment ${i} has ${segments[i]!.byteLength} bytes where its starts leave ${starts[i + 1]! - starts[i]!}`);
      }
    }
  }

  get size(): number {
    return this.starts[this.starts.length - 1]!;
  }

  /** `length` bytes at `position` as a view, when they lie in one segment; undefined when they do not. */
  view(position: number, length: number): Uint8Array | undefined {
    this.checkRange(position, length);
    if (this.segments.length === 0) return new Uint8Array(0);
    const index = this.segmentAt(position);
    const start = position - this.starts[index]!;
    const segment = this.segments[index]!;
    return start + length <= segment.byteLength ? segment.subarray(start, start + length) : undefined;
  }

  async read(position: number, length: number, target?: Uint8Array): Promise<Uint8Array> {
    const view = this.view(position, length);
    if (view !== undefined && target === undefined) return view;
    const into = target ?? new Uint8Array(length);
    if (into.byteLength < length) throw new RangeError(`a read of ${length} bytes into a buffer of ${into.byteLength}`);
    if (view !== undefined) {
      into.set(view);
    } else {
      for (let done = 0, index = this.segmentAt(position); done < length; index++) {
        const from = position + done - this.starts[index]!;
        const piece = this.segments[index]!.subarray(from, from + length - done);
        into.set(piece, done);
        done += piece.byteLength;
      }
    }
    return into.subarray(0, length);
  }

  private checkRange(position: number, length: number): void {
    if (!(position >= 0 && length >= 0 && position + length <= this.size)) {
      throw new RangeError(`read of ${length} bytes at ${position} is outside ${this.size} bytes`);
    }
  }

  /** The index of the segment holding byte `position` (of the last one, for the file's end). */
  segmentAt(position: number): number {
    const starts = this.starts;
    const count = this.segments.length;
    let index = this.last;
    if (!(starts[index]! <= position && position < starts[index + 1]!)) {
      // Binary search for the last start at or before `position`.
      let low = 0;
      let high = count - 1;
      while (low < high) {
        const middle = (low + high + 1) >> 1;
        if (starts[middle]! <= position) low = middle;
        else high = middle - 1;
      }
      index = low;
    }
    this.last = index;
    return index;
  }

  static {
    keepShape(new SegmentedReader([new Uint8Array(1)], new Float64Array([0, 1])));
  }
}
