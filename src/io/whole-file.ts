import { FormatError } from "../errors.js";
import { crc32 } from "../formats/crc32.js";
import { MAX_BUFFER_BYTES, type RandomAccessReader } from "../formats/byte-io.js";
import { SegmentedReader } from "../formats/segmented-reader.js";

/** Read in pieces of at most this size, the next pieces in flight while the last one is checksummed. */
const CHUNK_SIZE = 16 << 20;

/**
 * Bytes asked for at once: the reads proceed in libuv's threads while the main thread parses or
 * checksums, so as much is in flight in small segments as in four large pieces (reads of 1 MiB
 * four at a time stalled while the pickle was parsed, and made a first load 5% slower).
 */
const BYTES_IN_FLIGHT = 4 * CHUNK_SIZE;

/** Segments keep their bytes at the file's offsets modulo this (a storage's data alignment). */
const FILE_ALIGNMENT = 64;

export interface WholeFileReadOptions {
  /** Compute the file's CRC-32 while reading it (overlapped with the reads: no extra pass). */
  crc?: boolean;
  onProgress?: ((done: number, total: number) => void) | undefined;
}

/**
 * Reads a whole file in large sequential pieces into one new buffer per segment (`segmentStarts`),
 * computing its CRC-32 on the way when asked; the result reads ranges inside a segment as views.
 * Several pieces are in flight at once, so the reading goes on while the caller's thread is busy
 * with other work (the torch loader parses the pickle meanwhile). Each segment's memory sits at
 * the same offset modulo 64 as its bytes in the file, so data aligned in the file (PyTorch aligns
 * storages to 64 bytes) is aligned for typed arrays.
 */
export async function readFileInSegments(reader: RandomAccessReader, starts: Float64Array, options: WholeFileReadOptions = {}): Promise<{ reader: SegmentedReader; crc32: number | undefined }> {
  const { segments, crc32 } = await readSegments(reader, starts, options);
  return { reader: new SegmentedReader(segments, starts), crc32 };
}

/**
 * Whether each segment (`segmentStarts`) fits in one buffer of at most `maxBytes` with the padding
 * readFileInSegments puts before it. Only a part about that large (a tensor of 4 GiB on Node 20)
 * keeps a file from being read this way; the file's own size does not matter, as every large part
 * is a segment of its own.
 */
export function segmentsFitInBuffers(starts: Float64Array, maxBytes = MAX_BUFFER_BYTES): boolean {
  for (let i = 0; i + 1 < starts.length; i++) if ((starts[i]! % FILE_ALIGNMENT) + starts[i + 1]! - starts[i]! > maxBytes) return false;
  return true;
}

/** Reads the file's segments (`starts` as segmentStarts gives them), each into a new buffer. */
async function readSegments(reader: RandomAccessReader, starts: Float64Array, options: WholeFileReadOptions): Promise<{ segments: Uint8Array[]; crc32: number | undefined }> {
  const size = reader.size;
  if (starts[0] !== 0 || starts[starts.length - 1] !== size) throw new RangeError(`segments must cover the ${size} bytes of the file`);
  const segments: Uint8Array[] = [];
  for (let i = 0; i + 1 < starts.length; i++) {
    const pad = starts[i]! % FILE_ALIGNMENT;
    segments.push(Buffer.allocUnsafeSlow(pad + starts[i + 1]! - starts[i]!).subarray(pad));
  }
  // The next piece to request: a segment, and a position in it.
  let segment = 0;
  let offset = 0;
  const inFlight: { piece: Promise<Uint8Array>; position: number; length: number }[] = [];
  let bytesInFlight = 0;
  const requestMore = (): void => {
    while (segment < segments.length) {
      const bytes = segments[segment]!;
      const length = Math.min(CHUNK_SIZE, bytes.byteLength - offset);
      if (bytesInFlight + length > BYTES_IN_FLIGHT && inFlight.length > 0) return;
      const position = starts[segment]! + offset;
      const piece = reader.read(position, length, bytes.subarray(offset, offset + length));
      piece.catch(() => undefined); // observed below, in order; a later one may fail first
      inFlight.push({ piece, position, length });
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
      const { piece: reading, position: at, length } = inFlight[0]!;
      const piece = await reading;
      inFlight.shift();
      if (piece.byteLength !== length) throw new FormatError("READ_SHORT", `a read of ${length} bytes at ${at} returned ${piece.byteLength} bytes: the file changed while being read`);
      bytesInFlight -= length;
      position += length;
      requestMore();
      if (options.crc === true) crc = crc32(piece, crc);
      options.onProgress?.(position, size);
    }
  } finally {
    // On an error, the reads still under way must end before the caller closes the file.
    await Promise.allSettled(inFlight.map((read) => read.piece));
  }
  return { segments, crc32: options.crc === true ? crc : undefined };
}
