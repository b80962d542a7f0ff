import { crc32 } from "../formats/crc32.js";
import type { RandomAccessReader } from "../formats/byte-io.js";

/** Read in pieces of this size, the next piece in flight while the last one is checksummed. */
const CHUNK_SIZE = 16 << 20;
/**
 * Files up to this size are read whole; larger ones tensor by tensor, each into its own buffer (up
 * to MAX_BUFFER_BYTES). Above 2 GiB tensors are large, so reading them one by one costs nothing,
 * and a tensor the caller keeps does not keep the rest of a file that size alive.
 */
export const WHOLE_FILE_MAX = 2 ** 31;

/** Pieces read at once: they proceed in libuv's threads while the main thread parses or checksums. */
const PIECES_IN_FLIGHT = 4;

/**
 * Reads a whole file into one new buffer in large sequential pieces, computing its CRC-32 on the
 * way when asked (overlapped with the reads, so it costs no extra pass). Several pieces are in
 * flight at once, so the reading goes on while the caller's thread is busy with other work (the
 * torch loader parses the pickle meanwhile).
 */
export async function readWholeFile(
  reader: RandomAccessReader,
  options: { crc?: boolean; onProgress?: ((done: number, total: number) => void) | undefined } = {},
): Promise<{ bytes: Uint8Array; crc32: number | undefined }> {
  const size = reader.size;
  const bytes = Buffer.allocUnsafeSlow(size);
  const readPiece = (position: number): Promise<Uint8Array> => {
    const length = Math.min(CHUNK_SIZE, size - position);
    return reader.read(position, length, bytes.subarray(position, position + length));
  };
  const inFlight: Promise<Uint8Array>[] = [];
  let requested = 0;
  const requestMore = (): void => {
    while (inFlight.length < PIECES_IN_FLIGHT && requested < size) {
      const piece = readPiece(requested);
      piece.catch(() => undefined); // observed below, in order; a later one may fail first
      inFlight.push(piece);
      requested += Math.min(CHUNK_SIZE, size - requested);
    }
  };
  requestMore();
  let crc = 0;
  let position = 0;
  try {
    while (inFlight.length > 0) {
      const piece = await inFlight[0]!;
      inFlight.shift();
      position += piece.byteLength;
      requestMore();
      if (options.crc === true) crc = crc32(piece, crc);
      options.onProgress?.(position, size);
    }
  } finally {
    // On an error, the reads still under way must end before the caller closes the file.
    await Promise.allSettled(inFlight);
  }
  return { bytes, crc32: options.crc === true ? crc : undefined };
}
