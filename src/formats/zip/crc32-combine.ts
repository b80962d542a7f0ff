/**
 * CRC-32 of a concatenation from the CRCs of its parts (zlib's crc32_combine, which Node does not
 * expose): lets a writer know a whole file's CRC without a second pass over large entries.
 * Polynomials are bit-reflected, as in the CRC itself; see zlib's crc32.c for the algebra.
 */
const POLY = 0xedb88320;
const X0 = 0x80000000; // the polynomial 1 (x^0), reflected

/** a(x)·b(x) mod p(x). */
function multiplyModP(a: number, b: number): number {
  let m = X0;
  let product = 0;
  for (;;) {
    if (a & m) {
      product ^= b;
      if ((a & (m - 1)) === 0) break;
    }
    m >>>= 1;
    b = b & 1 ? (b >>> 1) ^ POLY : b >>> 1;
  }
  return product >>> 0;
}

/** X2N[k] = x^(2^k) mod p(x). */
const X2N = new Uint32Array(32);
{
  let p = X0 >>> 1; // x^1
  X2N[0] = p;
  for (let k = 1; k < 32; k++) X2N[k] = p = multiplyModP(p, p);
}

/** x^(8·bytes) mod p(x): shifting a CRC over `bytes` zero bytes. */
function shiftForBytes(bytes: number): number {
  let p = X0;
  let k = 3; // 8 bits per byte: start at x^(2^3)
  for (let n = bytes; n > 0; n = Math.floor(n / 2), k++) {
    if (n % 2 === 1) p = multiplyModP(X2N[k & 31]!, p);
  }
  return p;
}

/** The CRC-32 of A followed by B, from crc(A), crc(B) and B's length in bytes. */
export function crc32Combine(crcA: number, crcB: number, lengthB: number): number {
  return (multiplyModP(shiftForBytes(lengthB), crcA >>> 0) ^ (crcB >>> 0)) >>> 0;
}
