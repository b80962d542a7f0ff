/**
 * CRC-32 (IEEE) in JavaScript, for the few dozen bytes of a zip header: a native CRC call costs
 * about 190 ns however short its input, this loop about 75 ns for 64 bytes (see docs/design.md,
 * "Per-tensor cost"). Longer input goes to the native CRC (`../crc32.js`).
 */
const TABLE = new Int32Array(256);
for (let n = 0; n < 256; n++) {
  let c = n;
  for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ 0xedb88320 : c >>> 1;
  TABLE[n] = c;
}

/** The CRC-32 of bytes[start, end), continuing from `crc`. */
export function crc32Small(bytes: Uint8Array, start: number, end: number, crc: number): number {
  let c = ~crc;
  for (let i = start; i < end; i++) c = TABLE[(c ^ bytes[i]!) & 0xff]! ^ (c >>> 8);
  return ~c >>> 0;
}
