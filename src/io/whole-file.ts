import { crc32 } from "../formats/crc32.js";
import type { RandomAccessReader } from "../formats/byte-io.js";
import { SegmentedReader } from "../formats/segmented-reader.js";

/** Read in pieces of at most this size, the next pieces in flight while the last one is checksummed. */
const CHUNK_SIZE = 16 << 20;
/**
 * Files up to this size are read whole; larger ones tensor by tensor, each into its own buffer (up
 * to MAX_BUFFER_BYTES). Above 2 GiB tensors are large, so reading them one by one costs nothing,
 * and a tensor the caller keeps does not keep the rest of a file that size alive.
 */
export const WHOLE_FILE_MAX = 2 ** 31;

/**
 * Bytes asked for at once: the reads proceed in libuv's threads while the main thread parses or
 * checksums, so as much is in flight in small segments as in four large pieces (reads of 1 MiB
 * four at a time stalled while the pickle was parsed, and made a first load 5% slower).
 */
const BYTES_IN_FLIGHT = 4 * CHUNK_SIZE;

/**
 * Largest segment that groups small parts of a file (`segmentStarts`). The allocator hands back
 * freed buffers of this size from memory the process already has, where a buffer the size of the
 * file is fresh memory on every load: on the machines measured, first touch of fresh memory ran
 * at 0.2–0.6 GB/s, against ~10 GB/s for a read into memory already touched (docs/design.md,
 * "Reading into memory that is already mapped"). Up to 4 MiB measured as warm as 1 MiB.
 */
export const SEGMENT_BYTES = 1 << 20;

export interface WholeFileReadOptions {
  /** Compute the file's CRC-32 while reading it (overlapped with the reads: no extra pass). */
  crc?: boolean;
  onProgress?: ((done: number, total: number) => void) | undefined;
}

/**
 * Reads a whole file into one new buffer in large sequential pieces, computing its CRC-32 on the
 * way when asked. Several pieces are in flight at once, so the reading goes on while the caller's
 * thread is busy with other work (the torch loader parses the pickle meanwhile).
 */
export async function readWholeFile(reader: RandomAccessReader, options: WholeFileReadOptions = {}): Promise<{ bytes: Uint8Array; crc32: number | undefined }> {
  const { segments, crc32 } = await readSegments(reader, new Float64Array(reader.size === 0 ? [0] : [0, reader.size]), options);
  return { bytes: segments[0] ?? new Uint8Array(0), crc32 };
}

/**
 * Reads a whole file as `readWholeFile` does, into one buffer per segment (`segmentStarts`): the
 * result reads ranges inside a segment as views.
 */
export async function readFileInSegments(reader: RandomAccessReader, starts: Float64Array, options: WholeFileReadOptions = {}): Promise<{ reader: SegmentedReader; crc32: number | undefined }> {
  const { segments, crc32 } = await readSegments(reader, starts, options);
  return { reader: new SegmentedReader(segments, starts), crc32 };
}

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

/** Reads the file's segments (`starts` as segmentStarts gives them), each into a new buffer. */
async function readSegments(reader: RandomAccessReader, starts: Float64Array, options: WholeFileReadOptions): Promise<{ segments: Uint8Array[]; crc32: number | undefined }> {
  const size = reader.size;
  if (starts[0] !== 0 || starts[starts.length - 1] !== size) throw new RangeError(`segments must cover the ${size} bytes of the file`);
  const segments: Uint8Array[] = [];
  for (let i = 0; i + 1 < starts.length; i++) segments.push(Buffer.allocUnsafeSlow(starts[i + 1]! - starts[i]!));
  // The next piece to request: a segment, and a position in it.
  let segment = 0;
  let offset = 0;
  const inFlight: Promise<Uint8Array>[] = [];
  let bytesInFlight = 0;
  const requestMore = (): void => {
    while (bytesInFlight < BYTES_IN_FLIGHT && segment < segments.length) {
      const bytes = segments[segment]!;
      const length = Math.min(CHUNK_SIZE, bytes.byteLength - offset);
      const piece = reader.read(starts[segment]! + offset, length, bytes.subarray(offset, offset + length));
      piece.catch(() => undefined); // observed below, in order; a later one may fail first
      inFlight.push(piece);
      bytesInFlight += length;
      offset += length;
      if (offset === bytes.byteLength) {
        segment++;
        offset = 0;
      }
    }
  };
  requestMore();
  let crc = 0;
  let position = 0;
  try {
    while (inFlight.length > 0) {
      const piece = await inFlight[0]!;
      inFlight.shift();
      bytesInFlight -= piece.byteLength;
      position += piece.byteLength;
      requestMore();
      if (options.crc === true) crc = crc32(piece, crc);
      options.onProgress?.(position, size);
    }
  } finally {
    // On an error, the reads still under way must end before the caller closes the file.
    await Promise.allSettled(inFlight);
  }
  return { segments, crc32: options.crc === true ? crc : undefined };
}
