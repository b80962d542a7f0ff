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

/**
 * Reads a whole file into one new buffer in large sequential pieces, computing its CRC-32 on the
 * way when asked (overlapped with the reads, so it costs no extra pass).
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
  let crc = 0;
  let next = size > 0 ? readPiece(0) : undefined;
  for (let position = 0; next !== undefined; ) {
    const piece = await next;
    position += piece.byteLength;
    next = position < size ? readPiece(position) : undefined;
    if (options.crc === true) crc = crc32(piece, crc);
    options.onProgress?.(position, size);
  }
  return { bytes, crc32: options.crc === true ? crc : undefined };
}
