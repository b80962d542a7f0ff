import { crc32 } from "../crc32.js";
import { FormatError } from "../../errors.js";
import { MemoryReader, type RandomAccessReader } from "../byte-io.js";
import {
  CENTRAL_HEADER_SIGNATURE,
  CENTRAL_HEADER_SIZE,
  END_SIGNATURE,
  END_SIZE,
  LOCAL_HEADER_SIGNATURE,
  LOCAL_HEADER_SIZE,
  MAX_END_SEARCH,
  METHOD_STORED,
  UINT16_MAX,
  UINT32_MAX,
  ZIP64_END_SIGNATURE,
  ZIP64_END_SIZE,
  ZIP64_EXTRA_ID,
  ZIP64_LOCATOR_SIGNATURE,
  ZIP64_LOCATOR_SIZE,
} from "./zip-constants.js";
import { crc32Combine } from "./crc32-combine.js";
import { checkEntryName } from "./zip-writer.js";

export interface ZipEntry {
  readonly name: string;
  readonly size: number;
  readonly crc: number;
  readonly headerOffset: number;
}

const utf8 = new TextDecoder("utf-8", { fatal: true });

/**
 * Reads a zip of Stored entries through positioned reads: the end records and the central
 * directory first, then only the entries asked for. Every offset and size is checked against the
 * file's size before it is used, so the reader never allocates more than the file holds.
 */
export class ZipReader {
  private constructor(
    private readonly reader: RandomAccessReader,
    readonly entries: ReadonlyMap<string, ZipEntry>,
    /** Where entry data must end: the start of the central directory. */
    private readonly dataEnd: number,
  ) {}

  static async open(reader: RandomAccessReader): Promise<ZipReader> {
    const { directoryOffset, directorySize, entryCount } = await readEnd(reader);
    const directory = await reader.read(directoryOffset, directorySize);
    const entries = parseCentralDirectory(directory, entryCount, directoryOffset);
    return new ZipReader(reader, entries, directoryOffset);
  }

  /** The same archive read from other bytes (the whole file, once read into memory). */
  withReader(reader: RandomAccessReader): ZipReader {
    if (reader.size !== this.reader.size) throw new FormatError("ZIP_BOUNDS", "the new bytes are not the same file");
    return new ZipReader(reader, this.entries, this.dataEnd);
  }

  entry(name: string): ZipEntry {
    const entry = this.entries.get(name);
    if (entry === undefined) throw new FormatError("ZIP_MISSING", `the zip has no entry "${name}"`);
    return entry;
  }

  /** Where an entry's data starts, read from its local header. */
  async dataOffset(entry: ZipEntry): Promise<number> {
    const header = this.reader instanceof MemoryReader ? this.reader.bytes.subarray(entry.headerOffset, entry.headerOffset + LOCAL_HEADER_SIZE) : await this.reader.read(entry.headerOffset, LOCAL_HEADER_SIZE);
    return this.dataStart(entry, header, 0);
  }

  /** Where an entry's data starts, from its local header at byte `at` of `bytes`. */
  private dataStart(entry: ZipEntry, bytes: Uint8Array, at: number): number {
    // Read byte by byte: no Buffer object (nor view of the header) made per entry.
    const signature = (bytes[at]! | (bytes[at + 1]! << 8) | (bytes[at + 2]! << 16) | (bytes[at + 3]! << 24)) >>> 0;
    if (bytes.length - at < LOCAL_HEADER_SIZE || signature !== LOCAL_HEADER_SIGNATURE) {
      throw new FormatError("ZIP_HEADER", `entry "${entry.name}" has no local header at offset ${entry.headerOffset}`);
    }
    const start = entry.headerOffset + LOCAL_HEADER_SIZE + (bytes[at + 26]! | (bytes[at + 27]! << 8)) + (bytes[at + 28]! | (bytes[at + 29]! << 8));
    if (start + entry.size > this.dataEnd) {
      throw new FormatError("ZIP_BOUNDS", `entry "${entry.name}" (${entry.size} bytes at ${start}) runs past the end of the entry data (${this.dataEnd})`);
    }
    return start;
  }

  /**
   * The CRC-32 the whole file has if every entry's data matches its recorded CRC: the bytes
   * between entries (headers, directory) are checksummed from `file`, the whole file in memory,
   * and each entry contributes its recorded CRC. A reader that checksummed the file while reading
   * it compares the two instead of checking each entry again.
   */
  async expectedFileCrc(file?: Uint8Array): Promise<number> {
    // Without the file in memory, the bytes between entries (headers, directory: small) are read.
    const bytesBetween = (from: number, to: number): Promise<Uint8Array> | Uint8Array =>
      file !== undefined ? file.subarray(from, to) : this.reader.read(from, to - from);
    const entries = [...this.entries.values()].sort((a, b) => a.headerOffset - b.headerOffset);
    let crc = 0;
    let position = 0;
    for (const entry of entries) {
      const start = await this.dataOffset(entry);
      if (start < position) throw new FormatError("ZIP_BOUNDS", `entry "${entry.name}" overlaps the entry before it`);
      crc = crc32(await bytesBetween(position, start), crc);
      crc = crc32Combine(crc, entry.crc, entry.size);
      position = start + entry.size;
    }
    return crc32(await bytesBetween(position, this.reader.size), crc);
  }

  /** Reads an entry's bytes (into `target` when given), checking its CRC-32 unless told not to. */
  async read(name: string, options: { target?: Uint8Array; verifyCrc?: boolean } = {}): Promise<Uint8Array> {
    return this.readEntry(this.entry(name), options);
  }

  /**
   * An entry's bytes when the archive is in memory and no target is given: a view, checked,
   * without a promise (a load of many small tensors reads thousands); undefined otherwise.
   */
  viewInMemory(entry: ZipEntry, verifyCrc = true): Uint8Array | undefined {
    if (!(this.reader instanceof MemoryReader)) return undefined;
    const bytes = this.reader.bytes;
    const start = this.dataStart(entry, bytes, entry.headerOffset);
    const data = bytes.subarray(start, start + entry.size);
    if (verifyCrc && crc32(data) !== entry.crc) {
      throw new FormatError("ZIP_CRC", `entry "${entry.name}" fails its CRC-32 check: the file is corrupt`);
    }
    return data;
  }

  /** As `read`, for an entry already looked up. */
  async readEntry(entry: ZipEntry, options: { target?: Uint8Array; verifyCrc?: boolean } = {}): Promise<Uint8Array> {
    const name = entry.name;
    const start = await this.dataOffset(entry);
    if (options.target !== undefined && options.target.byteLength < entry.size) {
      throw new FormatError("ZIP_BOUNDS", `entry "${name}" has ${entry.size} bytes, more than the ${options.target.byteLength} given`);
    }
    // In memory: a view, or one copy into the target, without another promise per entry.
    const data =
      this.reader instanceof MemoryReader && options.target === undefined
        ? this.reader.bytes.subarray(start, start + entry.size)
        : await this.reader.read(start, entry.size, options.target);
    if ((options.verifyCrc ?? true) && crc32(data) !== entry.crc) {
      throw new FormatError("ZIP_CRC", `entry "${name}" fails its CRC-32 check: the file is corrupt`);
    }
    return data;
  }
}

/** The tail read first when looking for the end record: the record and a short comment fit. */
const SHORT_END_SEARCH = 1024;

async function readEnd(reader: RandomAccessReader): Promise<{ directoryOffset: number; directorySize: number; entryCount: number }> {
  const size = reader.size;
  if (size < END_SIZE) throw new FormatError("ZIP_TRUNCATED", `${size} bytes is too short for a zip file`);
  // A short tail first: without a long archive comment the end record is in it, and reading only
  // the parts of a file it needs (resharding) must not cost 64 KiB per file. Else the whole search.
  let tailLength = Math.min(size, SHORT_END_SEARCH);
  let tailStart = size - tailLength;
  let tail = Buffer.from(await reader.read(tailStart, tailLength));
  let at = findEndRecord(tail);
  if (at < 0 && tailLength < Math.min(size, MAX_END_SEARCH)) {
    tailLength = Math.min(size, MAX_END_SEARCH);
    tailStart = size - tailLength;
    tail = Buffer.from(await reader.read(tailStart, tailLength));
    at = findEndRecord(tail);
  }
  if (at < 0) throw new FormatError("ZIP_END", "no zip end record: the file is truncated or not a zip");
  let entryCount = tail.readUInt16LE(at + 10);
  let directorySize = tail.readUInt32LE(at + 12);
  let directoryOffset = tail.readUInt32LE(at + 16);
  const endOffset = tailStart + at;
  let directoryEnd = endOffset;

  const locatorOffset = endOffset - ZIP64_LOCATOR_SIZE;
  if (locatorOffset >= 0) {
    const locator = Buffer.from(await reader.read(locatorOffset, ZIP64_LOCATOR_SIZE));
    if (locator.readUInt32LE(0) === ZIP64_LOCATOR_SIGNATURE) {
      const zip64EndOffset = checkedNumber(locator.readBigUInt64LE(8), locatorOffset - ZIP64_END_SIZE, "zip64 end record offset");
      const zip64End = Buffer.from(await reader.read(zip64EndOffset, ZIP64_END_SIZE));
      if (zip64End.readUInt32LE(0) !== ZIP64_END_SIGNATURE) throw new FormatError("ZIP_END", "the zip64 locator points at no zip64 end record");
      entryCount = checkedNumber(zip64End.readBigUInt64LE(32), size, "zip64 entry count");
      directorySize = checkedNumber(zip64End.readBigUInt64LE(40), size, "zip64 central directory size");
      directoryOffset = checkedNumber(zip64End.readBigUInt64LE(48), size, "zip64 central directory offset");
      directoryEnd = zip64EndOffset;
    } else if (entryCount === UINT16_MAX || directorySize === UINT32_MAX || directoryOffset === UINT32_MAX) {
      throw new FormatError("ZIP_END", "the zip end record needs zip64 records that are missing");
    }
  }
  if (directoryOffset + directorySize > directoryEnd) {
    throw new FormatError("ZIP_BOUNDS", `the central directory (${directorySize} bytes at ${directoryOffset}) runs past its end (${directoryEnd}): the file is truncated`);
  }
  if (entryCount * CENTRAL_HEADER_SIZE > directorySize) {
    throw new FormatError("ZIP_DIRECTORY", `${entryCount} entries cannot fit in a central directory of ${directorySize} bytes`);
  }
  return { directoryOffset, directorySize, entryCount };
}

/** Where the end record starts in `tail` (the last one whose comment runs to the end), or -1. */
function findEndRecord(tail: Buffer): number {
  for (let i = tail.length - END_SIZE; i >= 0; i--) {
    if (tail.readUInt32LE(i) === END_SIGNATURE && i + END_SIZE + tail.readUInt16LE(i + 20) === tail.length) return i;
  }
  return -1;
}

function parseCentralDirectory(directory: Uint8Array, entryCount: number, directoryOffset: number): Map<string, ZipEntry> {
  const bytes = Buffer.from(directory.buffer, directory.byteOffset, directory.byteLength);
  const entries = new Map<string, ZipEntry>();
  let at = 0;
  for (let i = 0; i < entryCount; i++) {
    if (at + CENTRAL_HEADER_SIZE > bytes.length || bytes.readUInt32LE(at) !== CENTRAL_HEADER_SIGNATURE) {
      throw new FormatError("ZIP_DIRECTORY", `central directory entry ${i} is missing or damaged`);
    }
    const method = bytes.readUInt16LE(at + 10);
    const flags = bytes.readUInt16LE(at + 8);
    const crc = bytes.readUInt32LE(at + 16);
    let compressedSize = bytes.readUInt32LE(at + 20);
    let size = bytes.readUInt32LE(at + 24);
    const nameLength = bytes.readUInt16LE(at + 28);
    const extraLength = bytes.readUInt16LE(at + 30);
    const commentLength = bytes.readUInt16LE(at + 32);
    let headerOffset = bytes.readUInt32LE(at + 42);
    const next = at + CENTRAL_HEADER_SIZE + nameLength + extraLength + commentLength;
    if (next > bytes.length) throw new FormatError("ZIP_DIRECTORY", `central directory entry ${i} runs past the directory`);
    let name: string;
    const nameStart = at + CENTRAL_HEADER_SIZE;
    if (isAscii(bytes, nameStart, nameStart + nameLength)) {
      // ASCII (every name PyTorch writes): the same string, without a TextDecoder call per entry.
      name = bytes.toString("latin1", nameStart, nameStart + nameLength);
    } else {
      try {
        name = utf8.decode(bytes.subarray(nameStart, nameStart + nameLength));
      } catch (error) {
        throw new FormatError("ZIP_NAME", `central directory entry ${i} has a name that is not UTF-8`, { cause: error });
      }
    }
    checkEntryName(name);
    if (flags & 0x1) throw new FormatError("ZIP_UNSUPPORTED", `entry "${name}" is encrypted`);

    // zip64: the fields that are saturated come, in this order, from the zip64 extra field.
    const extraStart = at + CENTRAL_HEADER_SIZE + nameLength;
    for (let e = extraStart; e + 4 <= extraStart + extraLength; ) {
      const id = bytes.readUInt16LE(e);
      const length = bytes.readUInt16LE(e + 2);
      if (e + 4 + length > extraStart + extraLength) throw new FormatError("ZIP_DIRECTORY", `entry "${name}" has a damaged extra field`);
      if (id === ZIP64_EXTRA_ID) {
        let field = e + 4;
        const take = (what: string): number => {
          if (field + 8 > e + 4 + length) throw new FormatError("ZIP_DIRECTORY", `entry "${name}" lacks its zip64 ${what}`);
          const value = checkedNumber(bytes.readBigUInt64LE(field), directoryOffset, `entry "${name}" zip64 ${what}`);
          field += 8;
          return value;
        };
        if (size === UINT32_MAX) size = take("size");
        if (compressedSize === UINT32_MAX) compressedSize = take("compressed size");
        if (headerOffset === UINT32_MAX) headerOffset = take("offset");
      }
      e += 4 + length;
    }
    if (method !== METHOD_STORED) throw new FormatError("ZIP_UNSUPPORTED", `entry "${name}" is compressed (method ${method}); checkpoint entries are stored`);
    if (compressedSize !== size) throw new FormatError("ZIP_DIRECTORY", `stored entry "${name}" has differing sizes (${compressedSize} and ${size})`);
    if (headerOffset + LOCAL_HEADER_SIZE + size > directoryOffset) {
      throw new FormatError("ZIP_BOUNDS", `entry "${name}" (${size} bytes at ${headerOffset}) runs into the central directory`);
    }
    if (entries.has(name)) throw new FormatError("ZIP_NAME", `entry "${name}" appears twice`);
    entries.set(name, { name, size, crc, headerOffset });
    at = next;
  }
  return entries;
}

function isAscii(bytes: Uint8Array, start: number, end: number): boolean {
  for (let i = start; i < end; i++) if (bytes[i]! > 0x7f) return false;
  return true;
}

function checkedNumber(value: bigint, limit: number, what: string): number {
  if (value > BigInt(limit)) throw new FormatError("ZIP_BOUNDS", `${what} (${value}) is beyond the file (${limit})`);
  return Number(value);
}
