import { FormatError } from "../../errors.js";
import { Op } from "./opcodes.js";
import { MAX_SMALL_OP_BYTES, putSmallInt } from "./pickle-encoding.js";

/** Strings up to this length are memoized by value, so repeated keys are written once. */
const MEMO_STRING_LENGTH = 64;

/** Decimal strings up to this value are memoized in `decimalMemo`. */
const MAX_DECIMAL_KEY = 999_999_999;

const BIG_INT32_MIN = -(2 ** 31);
const BIG_INT32_MAX = 2 ** 31 - 1;

/**
 * The growing byte buffer of a pickle and the opcodes of its scalars (ints, floats, strings, short
 * int tuples) and memo entries: what `Pickler` writes a state's values with, and what the torch
 * writer writes each tensor's rebuild call with, op by op (see docs/design.md, "Per-tensor cost").
 */
export class PickleOutput {
  private buffer: Buffer = Buffer.alloc(1 << 16);
  private view: DataView = new DataView(this.buffer.buffer, this.buffer.byteOffset, this.buffer.byteLength);
  private length = 0;
  private readonly stringMemo = new Map<string, number>();
  /**
   * The memo of strings that are decimal numbers ("0" … "999999999"), indexed by their value: the
   * storage keys of a state are these, one per tensor, and writing them needs no string then.
   */
  private readonly decimalMemo: number[] = [];
  /** Memo entries written so far: the next one's index. */
  private memoCount = 0;

  /** The bytes written so far (a view, not a copy). */
  written(): Uint8Array {
    return this.buffer.subarray(0, this.length);
  }

  /**
   * Makes room for `count` more bytes and returns where they start in `bytes`: a writer of a record
   * repeated thousands of times (a tensor's rebuild call) stores its bytes there itself and ends
   * with `advanceTo`, instead of a call per opcode.
   */
  room(count: number): number {
    this.ensure(count);
    return this.length;
  }

  /** The buffer `room` made room in (a new one after `room` grows it). */
  get roomBuffer(): Buffer {
    return this.buffer;
  }

  /** Ends a raw write: the pickle now ends at `end`, within the room made. */
  advanceTo(end: number): void {
    this.length = end;
  }

  /** The memo index of `value` if a memoized string of it was written, else -1. */
  stringMemoIndex(value: string): number {
    return this.stringMemo.get(value) ?? -1;
  }

  /** Writes MARK. */
  mark(): void {
    this.byte(Op.MARK);
  }

  /**
   * Writes a tuple of safe integers (a shape, strides), not memoized: the bytes `tuple(items, [])`
   * writes, without its per-item dispatch.
   */
  intTuple(items: readonly number[]): void {
    const n = items.length;
    if (n === 0) {
      this.byte(Op.EMPTY_TUPLE);
      return;
    }
    if (n > 3) this.byte(Op.MARK);
    for (let i = 0; i < n; i++) {
      const item = items[i]!;
      if (Number.isSafeInteger(item) && !Object.is(item, -0)) this.int(item);
      else this.float(item);
    }
    this.byte(n > 3 ? Op.TUPLE : Op.TUPLE1 + n - 1);
  }

  int(value: number | bigint): void {
    if (typeof value === "number" && value >= 0 && value <= BIG_INT32_MAX) {
      this.ensure(MAX_SMALL_OP_BYTES);
      this.length = putSmallInt(this.buffer, this.length, value);
    } else if (typeof value === "number" && value >= BIG_INT32_MIN && value <= BIG_INT32_MAX) {
      this.byte(Op.BININT);
      this.ensure(4);
      this.view.setInt32(this.length, value, true);
      this.length += 4;
    } else {
      const bytes = encodeLong(BigInt(value));
      this.byte(Op.LONG1);
      this.byte(bytes.length);
      this.bytes(bytes);
    }
  }

  float(value: number): void {
    this.byte(Op.BINFLOAT);
    this.ensure(8);
    this.view.setFloat64(this.length, value, false);
    this.length += 8;
  }

  string(value: string, memoize = true): void {
    const memoized = memoize && value.length <= MEMO_STRING_LENGTH;
    if (memoized && isDecimalKey(value)) {
      this.decimalString(Number(value));
      return;
    }
    if (memoized) {
      const index = this.stringMemo.get(value);
      if (index !== undefined) {
        this.memoGet(index);
        return;
      }
    }
    // Encoded straight into the pickle: no intermediate buffer per string (states have thousands of keys).
    if (value.length <= MEMO_STRING_LENGTH && this.shortAscii(value)) {
      // written
    } else {
      const length = Buffer.byteLength(value, "utf8");
      this.byte(Op.BINUNICODE);
      this.ensure(4 + length);
      this.view.setUint32(this.length, length, true);
      this.length += 4;
      this.length += this.buffer.write(value, this.length, length, "utf8");
    }
    if (memoized) this.stringMemo.set(value, this.newMemoIndex());
  }

  /**
   * Writes a key of a large dict, which is unique within it: not memoized, since a memo entry pays
   * only for a string met again elsewhere, and the memo's map cost a process's first save of a
   * 20,000-key dict about 10 ms (see Pickler.dictSteps). Decimal keys keep their memo: an array
   * slot, shared with the storage keys.
   */
  uniqueKey(value: string): void {
    if (isDecimalKey(value)) this.decimalString(Number(value));
    else this.string(value, false);
  }

  /**
   * Writes the string of `n`, a non-negative integer (what `string(String(n))` writes, memo
   * included), without making the string.
   */
  decimalString(n: number): void {
    if (!(Number.isInteger(n) && n >= 0 && n <= MAX_DECIMAL_KEY)) {
      this.string(String(n));
      return;
    }
    const index = this.decimalMemo[n];
    if (index !== undefined) {
      this.memoGet(index);
      return;
    }
    let digits = 1;
    for (let rest = n; rest >= 10; rest = Math.floor(rest / 10)) digits++;
    this.ensure(5 + digits);
    const buffer = this.buffer;
    buffer[this.length] = Op.BINUNICODE;
    this.view.setUint32(this.length + 1, digits, true);
    let rest = n;
    for (let i = this.length + 4 + digits; i > this.length + 4; i--) {
      buffer[i] = 48 + (rest % 10);
      rest = Math.floor(rest / 10);
    }
    this.length += 5 + digits;
    this.decimalMemo[n] = this.newMemoIndex();
  }

  /**
   * Writes BINUNICODE of a short ASCII string byte by byte (a native UTF-8 encoder call costs more
   * than the copy for keys like "layers.3.weight"); false, with nothing written, if it is not ASCII.
   */
  private shortAscii(value: string): boolean {
    const n = value.length;
    this.ensure(5 + n);
    const buffer = this.buffer;
    const at = this.length + 5;
    for (let i = 0; i < n; i++) {
      const code = value.charCodeAt(i);
      if (code > 0x7f) return false;
      buffer[at + i] = code;
    }
    buffer[this.length] = Op.BINUNICODE;
    this.view.setUint32(this.length + 1, n, true);
    this.length = at + n;
    return true;
  }

  /** Memoizes the object on top of the pickle stack without a key (see EncodeFirst); returns its index. */
  putMemo(): number {
    return this.newMemoIndex();
  }

  /** Writes a reference to memo entry `index` (from putMemo). */
  getMemoEntry(index: number): void {
    this.memoGet(index);
  }

  protected newMemoIndex(): number {
    const index = this.memoCount++;
    this.memoOp(Op.BINPUT, Op.LONG_BINPUT, index);
    return index;
  }

  protected memoGet(index: number): void {
    this.memoOp(Op.BINGET, Op.LONG_BINGET, index);
  }

  /**
   * A memo opcode and its index, in the form putMemoOp stores (pickle-encoding.ts). Written here
   * op by op rather than through it: a state has three of these per tensor, and the extra call
   * cost a process's first pickle of 20,000 tensors 5–10 ms (medians of ten, alternated).
   */
  private memoOp(short: number, long: number, index: number): void {
    if (index < 0x100) {
      this.byte(short);
      this.byte(index);
    } else {
      this.byte(long);
      this.ensure(4);
      this.view.setUint32(this.length, index, true);
      this.length += 4;
    }
  }

  byte(value: number): void {
    this.ensure(1);
    this.buffer[this.length++] = value;
  }

  private bytes(bytes: Uint8Array): void {
    this.ensure(bytes.length);
    this.buffer.set(bytes, this.length);
    this.length += bytes.length;
  }

  protected ascii(text: string): void {
    this.ensure(text.length);
    this.length += this.buffer.write(text, this.length, "latin1");
  }

  /**
   * Starts the buffer at `bytes` if that is more than it holds, before anything is written: grown by
   * doubling from 64 KiB, a pickle of 20,000 tensors (1.3 MB) filled five buffers it then dropped,
   * 2 MB of fresh memory more than one buffer of the right size (about 14 µs a page the first time
   * it is touched on this VM). Pages of it never written are never touched: an estimate on the
   * high side costs address space only.
   */
  expect(bytes: number): void {
    if (this.length === 0 && bytes > this.buffer.length) this.setBuffer(Buffer.alloc(bytes));
  }

  private ensure(extra: number): void {
    if (this.length + extra <= this.buffer.length) return;
    let size = this.buffer.length * 2;
    while (size < this.length + extra) size *= 2;
    const grown = Buffer.alloc(size);
    grown.set(this.buffer.subarray(0, this.length));
    this.setBuffer(grown);
  }

  private setBuffer(buffer: Buffer): void {
    this.buffer = buffer;
    this.view = new DataView(buffer.buffer, buffer.byteOffset, buffer.byteLength);
  }

  /**
   * Readies an instance kept for its shape (keep-shapes.ts): its buffer is replaced by an empty one
   * (nothing held for nothing), and so V8 learns that the field changes. Until some instance had
   * replaced it, V8 took the field for a constant, and the first pickle to grow its buffer threw
   * away the code optimized for it (`--trace-deopt`: "code dependencies", at a process's first save).
   */
  protected readyForKeeping(): void {
    this.length = 0;
    this.setBuffer(Buffer.alloc(0));
  }
}

/** Two's complement, little-endian, shortest form (Python's `encode_long`). */
function encodeLong(value: bigint): Uint8Array {
  if (value === 0n) return new Uint8Array(0);
  const bytes: number[] = [];
  let rest = value;
  for (;;) {
    bytes.push(Number(rest & 0xffn));
    rest >>= 8n;
    const signBitSet = (bytes[bytes.length - 1]! & 0x80) !== 0;
    if ((rest === 0n && !signBitSet) || (rest === -1n && signBitSet)) break;
  }

  if (bytes.length > 255) throw new FormatError("PICKLE_LIMIT", "an int longer than 255 bytes cannot be saved");
  return Uint8Array.from(bytes);
}

/** "0", "7", "12345": digits without a leading zero, at most 9 of them (what decimalString memoizes). */
function isDecimalKey(value: string): boolean {
  const n = value.length;
  if (n === 0 || n > 9) return false;
  const first = value.charCodeAt(0);
  if (first < 48 || first > 57 || (first === 48 && n > 1)) return false;
  for (let i = 1; i < n; i++) {
    const code = value.charCodeAt(i);
    if (code < 48 || code > 57) return false;
  }

  return true;
}
