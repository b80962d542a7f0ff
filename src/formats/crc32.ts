import { createRequire } from "node:module";
import { crc32 as zlibCrc32 } from "node:zlib";

/**
 * Pieces the CRC is taken in. Node hands zlib's crc32 the length as a 32-bit `uInt`, so a buffer of
 * 4 GiB (the largest Node 20 allocates) would be checksummed as if empty; 1 GiB pieces stay far
 * below that and cost nothing in speed.
 */
export const CRC_PIECE_BYTES = 1 << 30;

type Crc32 = (bytes: Uint8Array, crc?: number) => number;

/**
 * `@node-rs/crc32` (SIMD, a prebuilt binary in its npm package) runs about 2.4× zlib's speed here,
 * and the CRC is on every save's and load's path; where its binary cannot load, zlib's serves.
 * Chosen once, at start-up.
 */
function loadFastCrc32(): Crc32 | undefined {
  try {
    const { crc32 } = createRequire(import.meta.url)("@node-rs/crc32") as { crc32: Crc32 };
    return crc32(new Uint8Array([1, 2, 3])) === zlibCrc32(new Uint8Array([1, 2, 3])) ? crc32 : undefined;
  } catch {
    return undefined;
  }
}

const fastCrc32 = loadFastCrc32();
const pieceCrc32: Crc32 = fastCrc32 ?? zlibCrc32;

/** Which implementation computes CRC-32 in this process (the benchmark names it). */
export const CRC32_IMPLEMENTATION = fastCrc32 !== undefined ? "@node-rs/crc32" : "node:zlib";

/**
 * CRC-32 (IEEE, as in zip and gzip) of `bytes`, continuing from `crc`: correct for buffers of any
 * length.
 */
export function crc32(bytes: Uint8Array, crc = 0): number {
  if (bytes.byteLength <= CRC_PIECE_BYTES) return pieceCrc32(bytes, crc);
  for (let offset = 0; offset < bytes.byteLength; offset += CRC_PIECE_BYTES) {
    crc = pieceCrc32(bytes.subarray(offset, offset + CRC_PIECE_BYTES), crc);
  }
  return crc;
}

/** Pieces of crc32Yielding, between which the event loop may run: a background save must not freeze training. */
export const YIELDING_CRC_PIECE_BYTES = 8 << 20;

/** crc32 of a large buffer in pieces, letting the event loop run between them. */
export async function crc32Yielding(bytes: Uint8Array, crc = 0): Promise<number> {
  for (let offset = 0; offset < bytes.byteLength; offset += YIELDING_CRC_PIECE_BYTES) {
    if (offset > 0) await new Promise((resolve) => setImmediate(resolve));
    crc = crc32(bytes.subarray(offset, offset + YIELDING_CRC_PIECE_BYTES), crc);
  }
  return crc;
}
