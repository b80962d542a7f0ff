import { constants as bufferConstants } from "node:buffer";
import { keepShape } from "../keep-shapes.js";

/**
 * The largest buffer (and typed array) this Node.js can allocate: 4 GiB on Node 20. A storage or
 * file read whole must fit in one; a larger one is refused by name instead of failing in `alloc`.
 */
export const MAX_BUFFER_BYTES = bufferConstants.MAX_LENGTH;

/**
 * The two ways formats touch bytes. Formats never see a file system: `io/` hands them these,
 * made from a local file, an object in a bucket, or memory.
 */

/** Reads any byte range of a file of known size (a positioned read, or an HTTP range request). */
export interface RandomAccessReader {
  readonly size: number;
  /**
   * Reads `length` bytes at `position` into `target` (at its start), or else into a buffer of the
   * reader's choosing, which may share memory with the reader (MemoryReader returns a view).
   */
  read(position: number, length: number, target?: Uint8Array): Promise<Uint8Array>;
  /**
   * For bytes already in memory: `length` bytes at `position` as a view, without a promise, or
   * undefined where they are not in one piece of memory (a read then copies them).
   */
  view?(position: number, length: number): Uint8Array | undefined;
  /**
   * As `read` with a target, for a target the process already uses (a tensor filled in place). A
   * local file stages such reads through reused buffers: on some machines the kernel's first write
   * into a page the program touched costs as much as a fault (src/fs/staged-reads.ts).
   */
  readIntoExisting?(position: number, length: number, target: Uint8Array): Promise<Uint8Array>;
}

/** Reads into `target`, memory the process already uses, the reader's best way (RandomAccessReader.readIntoExisting). */
export function readIntoExisting(reader: RandomAccessReader, position: number, length: number, target: Uint8Array): Promise<Uint8Array> {
  return reader.readIntoExisting === undefined ? reader.read(position, length, target) : reader.readIntoExisting(position, length, target);
}

/** Takes bytes in order (a local file, a multipart upload). `write` may keep `chunk` until it resolves. */
export interface ByteSink {
  write(chunk: Uint8Array): Promise<void>;
  /**
   * Optional: the bytes the caller will write in all (about: headers aside), told before the first
   * write. A sink may size its buffers by it (a local file, its direct-write blocks).
   */
  expectBytes?(total: number): void;
}

/** A RandomAccessReader over bytes already in memory; reads without a target are views, not copies. */
export class MemoryReader implements RandomAccessReader {
  constructor(readonly bytes: Uint8Array) {}

  get size(): number {
    return this.bytes.length;
  }

  view(position: number, length: number): Uint8Array {
    if (!(position >= 0 && length >= 0 && position + length <= this.bytes.length)) {
      throw new RangeError(`read of ${length} bytes at ${position} is outside ${this.bytes.length} bytes`);
    }
    return this.bytes.subarray(position, position + length);
  }

  async read(position: number, length: number, target?: Uint8Array): Promise<Uint8Array> {
    const slice = this.view(position, length);
    if (target === undefined) return slice;
    target.set(slice);
    return target.subarray(0, length);
  }

  static {
    keepShape(new MemoryReader(Buffer.alloc(0)));
  }
}

/** A ByteSink that collects everything in memory. */
export class MemorySink implements ByteSink {
  private readonly chunks: Uint8Array[] = [];

  async write(chunk: Uint8Array): Promise<void> {
    // A copy even of a Buffer, whose slice() is a view: writers reuse the memory they wrote from.
    this.chunks.push(Uint8Array.prototype.slice.call(chunk));
  }

  toBytes(): Uint8Array {
    return Buffer.concat(this.chunks);
  }
}
