import { FormatError } from "../../errors.js";
import { CENTRAL_HEADER_SIGNATURE, CENTRAL_HEADER_SIZE, LOCAL_HEADER_SIZE, METHOD_STORED, UINT32_MAX, ZIP64_EXTRA_ID } from "./zip-constants.js";
import { checkEntryName } from "./zip-entry-names.js";
import { keepShape } from "../../keep-shapes.js";

export interface ZipEntry {
  readonly name: string;
  readonly size: number;
  readonly crc: number;
  readonly headerOffset: number;
}

const utf8 = new TextDecoder("utf-8", { fatal: true });

/** Digits a numbered name's last segment may have (below 10⁹: an index into an array). */
const MAX_NUMBER_DIGITS = 9;

/**
 * A zip's central directory, checked whole when parsed and kept in columns: an entry is an index
 * until someone asks for it. Most entries of a PyTorch archive are numbered (`archive/data/0`,
 * `1`, …): those are never built as strings nor hashed, only filed by number under their prefix;
 * the few other names go into a Map. A load of 20,000 small tensors spent about 1 µs per entry on
 * a string, a Map entry and an object each (docs/design.md, "Loading, round three").
 */
export class ZipDirectory {
  private readonly headerOffsets: Float64Array;
  private readonly sizes: Float64Array;
  private readonly crcs: Uint32Array;
  private readonly nameStarts: Uint32Array;
  private readonly nameLengths: Uint16Array;
  /** Names that are not ASCII, decoded once while checking them (ASCII ones are sliced when asked for). */
  private readonly decodedNames = new Map<number, string>();
  /** Numbered entries: under each prefix, the entry index by number. */
  private readonly numbered = new Map<string, number[]>();
  /** Every other entry by name. */
  private readonly named = new Map<string, number>();
  private materialized: Map<string, ZipEntry> | undefined;

  private constructor(
    private readonly bytes: Buffer,
    readonly count: number,
  ) {
    this.headerOffsets = new Float64Array(count);
    this.sizes = new Float64Array(count);
    this.crcs = new Uint32Array(count);
    this.nameStarts = new Uint32Array(count);
    this.nameLengths = new Uint16Array(count);
  }

  /**
   * Parses and checks `entryCount` central directory records (each a Stored, unencrypted entry
   * with a safe, unique UTF-8 name whose data ends before the directory at `directoryOffset`).
   */
  static parse(directory: Uint8Array, entryCount: number, directoryOffset: number): ZipDirectory {
    const bytes = Buffer.from(directory.buffer, directory.byteOffset, directory.byteLength);
    const parsed = new ZipDirectory(bytes, entryCount);
    let at = 0;
    // The prefix of the last numbered name, reused while the next ones share it (they all do in a PyTorch archive).
    let lastPrefix = "";
    let lastPrefixStart = -1;
    let lastPrefixLength = -1;
    let lastNumbers: number[] = [];
    for (let i = 0; i < entryCount; i++) {
      if (at + CENTRAL_HEADER_SIZE > bytes.length || u32(bytes, at) !== CENTRAL_HEADER_SIGNATURE) {
        throw new FormatError("ZIP_DIRECTORY", `central directory entry ${i} is missing or damaged`);
      }
      // Byte by byte: no bounds-checked Buffer method call per field (the record's bounds are checked above).
      const method = u16(bytes, at + 10);
      const flags = u16(bytes, at + 8);
      const crc = u32(bytes, at + 16);
      let compressedSize = u32(bytes, at + 20);
      let size = u32(bytes, at + 24);
      const nameLength = u16(bytes, at + 28);
      const extraLength = u16(bytes, at + 30);
      const commentLength = u16(bytes, at + 32);
      let headerOffset = u32(bytes, at + 42);
      const next = at + CENTRAL_HEADER_SIZE + nameLength + extraLength + commentLength;
      if (next > bytes.length) throw new FormatError("ZIP_DIRECTORY", `central directory entry ${i} runs past the directory`);
      const nameStart = at + CENTRAL_HEADER_SIZE;
      const nameEnd = nameStart + nameLength;
      parsed.nameStarts[i] = nameStart;
      parsed.nameLengths[i] = nameLength;
      if (isAscii(bytes, nameStart, nameEnd)) {
        // ASCII (every name PyTorch writes): checked as bytes, made a string only when asked for.
        if (!isSafeAsciiName(bytes, nameStart, nameEnd)) checkEntryName(bytes.toString("latin1", nameStart, nameEnd));
      } else {
        let name: string;
        try {
          name = utf8.decode(bytes.subarray(nameStart, nameEnd));
        } catch (error) {
          throw new FormatError("ZIP_NAME", `central directory entry ${i} has a name that is not UTF-8`, { cause: error });
        }
        checkEntryName(name);
        parsed.decodedNames.set(i, name);
      }
      if (flags & 0x1) throw new FormatError("ZIP_UNSUPPORTED", `entry "${parsed.nameAt(i)}" is encrypted`);

      // zip64: the fields that are saturated come, in this order, from the zip64 extra field.
      const extraStart = nameEnd;
      for (let e = extraStart; e + 4 <= extraStart + extraLength; ) {
        const id = bytes.readUInt16LE(e);
        const length = bytes.readUInt16LE(e + 2);
        if (e + 4 + length > extraStart + extraLength) throw new FormatError("ZIP_DIRECTORY", `entry "${parsed.nameAt(i)}" has a damaged extra field`);
        if (id === ZIP64_EXTRA_ID) {
          let field = e + 4;
          const take = (what: string): number => {
            if (field + 8 > e + 4 + length) throw new FormatError("ZIP_DIRECTORY", `entry "${parsed.nameAt(i)}" lacks its zip64 ${what}`);
            const value = checkedNumber(bytes.readBigUInt64LE(field), directoryOffset, `entry "${parsed.nameAt(i)}" zip64 ${what}`);
            field += 8;
            return value;
          };
          if (size === UINT32_MAX) size = take("size");
          if (compressedSize === UINT32_MAX) compressedSize = take("compressed size");
          if (headerOffset === UINT32_MAX) headerOffset = take("offset");
        }
        e += 4 + length;
      }
      if (method !== METHOD_STORED) throw new FormatError("ZIP_UNSUPPORTED", `entry "${parsed.nameAt(i)}" is compressed (method ${method}); checkpoint entries are stored`);
      if (compressedSize !== size) throw new FormatError("ZIP_DIRECTORY", `stored entry "${parsed.nameAt(i)}" has differing sizes (${compressedSize} and ${size})`);
      if (headerOffset + LOCAL_HEADER_SIZE + size > directoryOffset) {
        throw new FormatError("ZIP_BOUNDS", `entry "${parsed.nameAt(i)}" (${size} bytes at ${headerOffset}) runs into the central directory`);
      }
      parsed.headerOffsets[i] = headerOffset;
      parsed.sizes[i] = size;
      parsed.crcs[i] = crc;

      // File the entry by number under its prefix, or by name.
      const digits = numberedTail(bytes, nameStart, nameEnd, entryCount);
      if (digits < 0) {
        const name = parsed.nameAt(i);
        if (parsed.named.has(name)) throw new FormatError("ZIP_NAME", `entry "${name}" appears twice`);
        parsed.named.set(name, i);
      } else {
        const prefixLength = nameLength - digits;
        if (prefixLength !== lastPrefixLength || !sameBytes(bytes, nameStart, lastPrefixStart, prefixLength)) {
          // Digits are ASCII: the prefix is the name less as many characters as there are digits.
          const name = parsed.nameAt(i);
          lastPrefix = name.slice(0, name.length - digits);
          lastPrefixStart = nameStart;
          lastPrefixLength = prefixLength;
          lastNumbers = parsed.numbered.get(lastPrefix) ?? [];
          parsed.numbered.set(lastPrefix, lastNumbers);
        }
        const number = decimalValue(bytes, nameEnd - digits, nameEnd);
        if (lastNumbers[number] !== undefined) throw new FormatError("ZIP_NAME", `entry "${parsed.nameAt(i)}" appears twice`);
        lastNumbers[number] = i;
      }
      at = next;
    }
    parsed.packNumbered();
    return parsed;
  }

  /**
   * PyTorch files its storages in name order ("0", "1", "10", "100", …), which leaves the arrays
   * of numbered entries with holes while they fill. Holey arrays cost every lookup a check, and
   * code optimized for them was dropped after each load (keep-shapes.ts); a full one is copied
   * into an array without holes.
   */
  private packNumbered(): void {
    this.numbered.forEach((numbers, prefix) => {
      const packed: number[] = [];
      for (let i = 0; i < numbers.length; i++) {
        const index = numbers[i];
        if (index === undefined) return; // a hole: some number is missing, the array stays as it is
        packed.push(index);
      }
      this.numbered.set(prefix, packed);
    });
  }

  /** Entry `index`'s name. */
  nameAt(index: number): string {
    const start = this.nameStarts[index]!;
    return this.decodedNames.get(index) ?? this.bytes.toString("latin1", start, start + this.nameLengths[index]!);
  }

  headerOffsetAt(index: number): number {
    return this.headerOffsets[index]!;
  }

  /** Every entry's header offset, ascending: where entries start in the file. */
  headerOffsetsInFileOrder(): Float64Array {
    return this.headerOffsets.slice().sort();
  }

  /** Entry `index` as an object (made on each call; its name only when read). */
  entryAt(index: number): ZipEntry {
    return new DirectoryEntry(this, index, this.sizes[index]!, this.crcs[index]!, this.headerOffsets[index]!);
  }

  /** The index of the entry named `name`, or -1. */
  find(name: string): number {
    // Numbered as parse files them: the last segment (or the whole name) is the number.
    const prefixLength = name.lastIndexOf("/") + 1;
    const number = decimalNumber(name, prefixLength, this.count);
    if (number < 0) return this.named.get(name) ?? -1;
    return this.numbered.get(name.slice(0, prefixLength))?.[number] ?? -1;
  }

  /** The index of the entry named `prefix` + `number` (written without leading zeros), or -1. */
  findNumbered(prefix: string, number: number): number {
    return this.numbered.get(prefix)?.[number] ?? -1;
  }

  /** The names that are not numbered (a PyTorch archive's few entries besides its storages). */
  unnumberedNames(): IterableIterator<string> {
    return this.named.keys();
  }

  /** Every entry by name, in directory order (built on first use: each entry becomes a string and an object). */
  get entries(): ReadonlyMap<string, ZipEntry> {
    if (this.materialized === undefined) {
      this.materialized = new Map();
      for (let i = 0; i < this.count; i++) {
        const entry = this.entryAt(i);
        this.materialized.set(entry.name, entry);
      }
    }
    return this.materialized;
  }

  static {
    keepShape(new ZipDirectory(Buffer.alloc(0), 0));
  }
}

/**
 * An entry of a parsed directory. Its name becomes a string only when read (an error message, a
 * listing): a load reads thousands of entries by number and never their names.
 */
class DirectoryEntry implements ZipEntry {
  constructor(
    private readonly directory: ZipDirectory,
    private readonly index: number,
    readonly size: number,
    readonly crc: number,
    readonly headerOffset: number,
  ) {}

  get name(): string {
    return this.directory.nameAt(this.index);
  }

  static {
    keepShape(new DirectoryEntry(undefined as never, 0, 0.5, 0.5, 0.5));
  }
}

function u16(bytes: Uint8Array, at: number): number {
  return bytes[at]! | (bytes[at + 1]! << 8);
}

function u32(bytes: Uint8Array, at: number): number {
  return (bytes[at]! | (bytes[at + 1]! << 8) | (bytes[at + 2]! << 16) | (bytes[at + 3]! << 24)) >>> 0;
}

/** Whether `length` bytes at `a` and at `b` are the same (a short prefix: a native call would cost more). */
function sameBytes(bytes: Uint8Array, a: number, b: number, length: number): boolean {
  for (let i = 0; i < length; i++) if (bytes[a + i] !== bytes[b + i]) return false;
  return true;
}

function isAscii(bytes: Uint8Array, start: number, end: number): boolean {
  for (let i = start; i < end; i++) if (bytes[i]! > 0x7f) return false;
  return true;
}

const SLASH = 0x2f;
const DOT = 0x2e;
const DIGIT_0 = 0x30;

/** What checkEntryName accepts, on ASCII bytes: not empty nor absolute, no backslash or NUL, no "." or ".." segment. */
export function isSafeAsciiName(bytes: Uint8Array, start: number, end: number): boolean {
  if (end === start || bytes[start] === SLASH) return false;
  let segmentStart = start;
  for (let i = start; i <= end; i++) {
    const byte = i < end ? bytes[i]! : SLASH;
    if (byte === 0x5c || byte === 0) return false;
    if (byte !== SLASH) continue;
    const length = i - segmentStart;
    if ((length === 1 || length === 2) && bytes[segmentStart] === DOT && bytes[i - 1] === DOT) return false;
    segmentStart = i + 1;
  }
  return true;
}

/**
 * How many digits end a numbered name (its last segment, or the whole name: a number below
 * `limit` written without leading zeros, as "7" and never "07"); -1 if the name is not numbered.
 */
function numberedTail(bytes: Uint8Array, start: number, end: number, limit: number): number {
  let first = end;
  while (first > start && end - first < MAX_NUMBER_DIGITS + 1 && bytes[first - 1]! >= DIGIT_0 && bytes[first - 1]! <= DIGIT_0 + 9) first--;
  const digits = end - first;
  if (digits === 0 || digits > MAX_NUMBER_DIGITS || (first > start && bytes[first - 1] !== SLASH)) return -1;
  if (digits > 1 && bytes[first] === DIGIT_0) return -1;
  return decimalValue(bytes, first, end) < limit ? digits : -1;
}

/**
 * `text` from `start` to its end read as a number below `limit`, written the one way numbered
 * names are ("7", never "07", at most MAX_NUMBER_DIGITS digits); -1 if it is not one.
 */
export function decimalNumber(text: string, start: number, limit: number): number {
  const length = text.length - start;
  if (length < 1 || length > MAX_NUMBER_DIGITS || (length > 1 && text.charCodeAt(start) === DIGIT_0)) return -1;
  let number = 0;
  for (let i = start; i < text.length; i++) {
    const digit = text.charCodeAt(i) - DIGIT_0;
    if (digit < 0 || digit > 9) return -1;
    number = number * 10 + digit;
  }
  return number < limit ? number : -1;
}

function decimalValue(bytes: Uint8Array, start: number, end: number): number {
  let value = 0;
  for (let i = start; i < end; i++) value = value * 10 + (bytes[i]! - DIGIT_0);
  return value;
}

export function checkedNumber(value: bigint, limit: number, what: string): number {
  if (value > BigInt(limit)) throw new FormatError("ZIP_BOUNDS", `${what} (${value}) is beyond the file (${limit})`);
  return Number(value);
}
