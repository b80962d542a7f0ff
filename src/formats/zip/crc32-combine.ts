import { keepShape } from "../../keep-shapes.js";

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

/**
 * Shifting a CRC over a fixed number of zero bytes is linear in the CRC's bits, so it is four table
 * lookups once a table of 4 × 256 entries is built for that length (32 multiplications). A writer
 * of thousands of same-sized small entries combines each entry's CRC into the file's with it
 * instead of taking the CRC of the entry's bytes a second time.
 */
export class Crc32Shifter {
  private readonly tables = new Map<number, Int32Array>();
  /** Lengths seen once: a table is built when a length comes again. */
  private readonly seen = new Set<number>();

  /** The table shifting a CRC over `length` zero bytes, or undefined when none is worth building yet. */
  tableFor(length: number): Int32Array | undefined {
    let table = this.tables.get(length);
    if (table === undefined) {
      if (!this.seen.has(length)) {
        if (this.seen.size < MAX_SHIFT_TABLES) this.seen.add(length);
        return undefined;
      }
      if (this.tables.size >= MAX_SHIFT_TABLES) return undefined;
      this.tables.set(length, (table = shiftTable(length)));
    }
    return table;
  }

  static {
    keepShape(new Crc32Shifter());
  }
}

/** crc32Combine(crcA, crcB, lengthB) with the table of Crc32Shifter.tableFor(lengthB). */
export function shiftAndCombine(table: Int32Array, crcA: number, crcB: number): number {
  return (table[crcA & 0xff]! ^ table[256 + ((crcA >>> 8) & 0xff)]! ^ table[512 + ((crcA >>> 16) & 0xff)]! ^ table[768 + (crcA >>> 24)]! ^ crcB) >>> 0;
}

/** Tables kept per writer (4 KiB each): states hold few distinct small tensor sizes. */
const MAX_SHIFT_TABLES = 64;

function shiftTable(bytes: number): Int32Array {
  const shift = shiftForBytes(bytes);
  const table = new Int32Array(1024);
  for (let k = 0; k < 4; k++) {
    const base = 256 * k;
    for (let bit = 0; bit < 8; bit++) {
      const value = multiplyModP(shift, (1 << (8 * k + bit)) >>> 0) | 0;
      const step = 1 << bit;
      // Every byte value with this as its highest bit: the table entry for the lower bits, plus it.
      for (let low = 0; low < step; low++) table[base + step + low] = table[base + low]! ^ value;
    }
  }
  return table;
}
