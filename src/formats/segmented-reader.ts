import type { RandomAccessReader } from "./byte-io.js";
import { keepShape } from "../keep-shapes.js";

/**
 * A file in memory as consecutive segments, each its own buffer: a range inside one segment is a
 * view, a range across two is copied. A loader reads a file of many small tensors this way
 * because memory of that size comes back warm from the allocator on the next load, while one
 * file-sized buffer is fresh memory every time (docs/design.md, "Reading into memory that is
 * already mapped").
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
