import { FormatError } from "../../errors.js";
import { keepShape } from "../../keep-shapes.js";

/** A cursor over a pickle's bytes: every read is checked against what is left. */
export class PickleReader {
  private pos: number;
  private readonly view: DataView;

  constructor(private readonly bytes: Uint8Array, start = 0) {
    this.view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    this.pos = start;
  }

  get offset(): number {
    return this.pos;
  }

  /** Continues at `offset` (after a run of opcodes read elsewhere: rebuild-fast-path.ts). */
  moveTo(offset: number): void {
    if (offset < this.pos || offset > this.bytes.length) throw new RangeError(`cannot move a pickle cursor from ${this.pos} to ${offset}`);
    this.pos = offset;
  }

  private need(n: number, what: string): number {
    if (n > this.bytes.length - this.pos) {
      throw new FormatError("PICKLE_TRUNCATED", `pickle ends inside ${what} at byte ${this.pos} (needs ${n} more bytes, has ${this.bytes.length - this.pos})`);
    }
    const at = this.pos;
    this.pos += n;
    return at;
  }

  u8(what: string): number {
    return this.bytes[this.need(1, what)]!;
  }
  u16(what: string): number {
    return this.view.getUint16(this.need(2, what), true);
  }
  u32(what: string): number {
    return this.view.getUint32(this.need(4, what), true);
  }
  i32(what: string): number {
    return this.view.getInt32(this.need(4, what), true);
  }
  /** An 8-byte length, checked against what is left before it becomes a number. */
  u64Length(what: string): number {
    const value = this.view.getBigUint64(this.need(8, what), true);
    if (value > BigInt(this.bytes.length - this.pos)) {
      throw new FormatError("PICKLE_TRUNCATED", `${what} claims ${value} bytes but only ${this.bytes.length - this.pos} are left`);
    }
    return Number(value);
  }
  f64be(what: string): number {
    return this.view.getFloat64(this.need(8, what), false);
  }
  take(n: number, what: string): Uint8Array {
    const at = this.need(n, what);
    return this.bytes.subarray(at, at + n);
  }
  line(what: string): string {
    const end = this.bytes.indexOf(0x0a, this.pos);
    if (end < 0) throw new FormatError("PICKLE_TRUNCATED", `pickle ends inside ${what} at byte ${this.pos}`);
    let text: string;
    try {
      text = utf8.decode(this.bytes.subarray(this.pos, end));
    } catch (error) {
      throw new FormatError("PICKLE_STRING", `${what} at byte ${this.pos} is not valid UTF-8`, { cause: error });
    }
    this.pos = end + 1;
    return text;
  }

  static {
    keepShape(new PickleReader(Buffer.alloc(1)));
  }
}

export const utf8 = new TextDecoder("utf-8", { fatal: true });
export const latin1 = new TextDecoder("latin1");

/** Signed little-endian two's complement bytes (LONG1/LONG4) to a number or bigint. */
export function decodeLong(bytes: Uint8Array): number | bigint {
  if (bytes.length === 0) return 0;
  let value = 0n;
  for (let i = bytes.length - 1; i >= 0; i--) value = (value << 8n) | BigInt(bytes[i]!);
  if (bytes[bytes.length - 1]! & 0x80) value -= 1n << BigInt(bytes.length * 8);
  return toIntValue(value);
}

/** Python ints become numbers when exactly representable, bigints otherwise. */
export function toIntValue(value: bigint): number | bigint {
  return value >= BigInt(Number.MIN_SAFE_INTEGER) && value <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(value) : value;
}

/** A pickled string's UTF-8 bytes as text; invalid UTF-8 is a FormatError. */
export function decodeUtf8(bytes: Uint8Array): string {
  return decodeUtf8Range(bytes, 0, bytes.length);
}

/**
 * As decodeUtf8, for bytes `from` to `to` of `bytes`. ASCII (keys, storage ids: nearly every
 * string of a state) is the same text read as latin-1, which Node reads several times faster than
 * a fatal UTF-8 TextDecoder call (one per string showed in profiles of loads of many tensors).
 */
export function decodeUtf8Range(bytes: Uint8Array, from: number, to: number): string {
  let ascii = true;
  for (let i = from; i < to; i++) {
    if (bytes[i]! > 0x7f) {
      ascii = false;
      break;
    }
  }
  if (ascii) return latin1Slice !== undefined ? latin1Slice.call(bytes, from, to) : Buffer.from(bytes.buffer, bytes.byteOffset + from, to - from).toString("latin1");
  try {
    return utf8.decode(bytes.subarray(from, to));
  } catch (error) {
    throw new FormatError("PICKLE_STRING", "a string is not valid UTF-8", { cause: error });
  }
}

/** Buffer's own latin-1 reader, which works on any Uint8Array (undefined if a Node lacks it). */
const latin1Slice = (Buffer.prototype as unknown as { latin1Slice?: (this: Uint8Array, start: number, end: number) => string }).latin1Slice;
