import { Op } from "./opcodes.js";

// The byte forms of the opcodes a state repeats by the ten thousand (memo references, small ints,
// tuples of them), stored straight into a buffer: what a writer of raw records (the torch writer's
// rebuild calls) stores, and PickleOutput's ints. (Its memo opcodes are the same bytes written op
// by op: see PickleOutput.memoOp.)

/** Integers below this (and not negative) are BININT1, BININT2 or BININT; see isSmallInt. */
const SMALL_INT_LIMIT = 2 ** 31;

/** Bytes putSmallInt and putMemoOp store at most. */
export const MAX_SMALL_OP_BYTES = 5;

/** 0 ≤ value < 2^31, an integer and not -0 (which a pickle of a state writes as a float). */
export function isSmallInt(value: number): boolean {
  return value >= 0 && value < SMALL_INT_LIMIT && Number.isInteger(value) && (value !== 0 || 1 / value > 0);
}

/** A memo opcode and its index at `at`: the one-byte form below 256, else the four-byte one, as PickleOutput.memoOp writes it. Returns the end. */
export function putMemoOp(bytes: Uint8Array, at: number, short: number, long: number, index: number): number {
  if (index < 0x100) {
    bytes[at] = short;
    bytes[at + 1] = index;
    return at + 2;
  }
  bytes[at] = long;
  putUint32(bytes, at + 1, index);
  return at + 5;
}

/** An integer 0 ≤ value < 2^31 in its shortest form at `at`. Returns the end. */
export function putSmallInt(bytes: Uint8Array, at: number, value: number): number {
  if (value < 0x100) {
    bytes[at] = Op.BININT1;
    bytes[at + 1] = value;
    return at + 2;
  }
  if (value < 0x10000) {
    bytes[at] = Op.BININT2;
    bytes[at + 1] = value & 0xff;
    bytes[at + 2] = value >>> 8;
    return at + 3;
  }
  bytes[at] = Op.BININT;
  putUint32(bytes, at + 1, value);
  return at + 5;
}

/** A tuple of small ints (isSmallInt) at `at`, as PickleOutput.intTuple writes one; at most 2 + 5n bytes. Returns the end. */
export function putSmallIntTuple(bytes: Uint8Array, at: number, items: readonly number[]): number {
  const n = items.length;
  if (n === 0) {
    bytes[at] = Op.EMPTY_TUPLE;
    return at + 1;
  }
  if (n > 3) bytes[at++] = Op.MARK;
  for (let i = 0; i < n; i++) at = putSmallInt(bytes, at, items[i]!);
  bytes[at] = n > 3 ? Op.TUPLE : Op.TUPLE1 + n - 1;
  return at + 1;
}

function putUint32(bytes: Uint8Array, at: number, value: number): void {
  bytes[at] = value & 0xff;
  bytes[at + 1] = (value >>> 8) & 0xff;
  bytes[at + 2] = (value >>> 16) & 0xff;
  bytes[at + 3] = value >>> 24;
}
