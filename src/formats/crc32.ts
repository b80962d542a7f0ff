import { crc32 as zlibCrc32 } from "node:zlib";

/**
 * Pieces the CRC is taken in. Node hands zlib's crc32 the length as a 32-bit `uInt`, so a buffer of
 * 4 GiB (the largest Node 20 allocates) would be checksummed as if empty; 1 GiB pieces stay far
 * below that and cost nothing in speed.
 */
export const CRC_PIECE_BYTES = 1 << 30;

/**
 * CRC-32 (IEEE, as in zip and gzip) of `bytes`, continuing from `crc`: zlib's, correct for
 * buffers of any length.
 */
export function crc32(bytes: Uint8Array, crc = 0): number {
  if (bytes.byteLength <= CRC_PIECE_BYTES) return zlibCrc32(bytes, crc);
  for (let offset = 0; offset < bytes.byteLength; offset += CRC_PIECE_BYTES) {
    crc = zlibCrc32(bytes.subarray(offset, offset + CRC_PIECE_BYTES), crc);
  }
  return crc;
}
