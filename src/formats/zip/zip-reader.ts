import { crc32 } from "../crc32.js";
import { FormatError } from "../../errors.js";
import { MemoryReader, readIntoExisting, type RandomAccessReader } from "../byte-io.js";
import { SegmentedReader } from "../segmented-reader.js";
import { CENTRAL_HEADER_SIZE, END_SIGNATURE, END_SIZE, LOCAL_HEADER_SIGNATURE, LOCAL_HEADER_SIZE, MAX_END_SEARCH, UINT16_MAX, UINT32_MAX, ZIP64_END_SIGNATURE, ZIP64_END_SIZE, ZIP64_LOCATOR_SIGNATURE, ZIP64_LOCATOR_SIZE } from "./zip-constants.js";
import { crc32Combine } from "./crc32-combine.js";
import { ZipDirectory, checkedNumber, type ZipEntry } from "./zip-directory.js";
import { keepShape } from "../../keep-shapes.js";

export type { ZipEntry } from "./zip-directory.js";

/**
 * Reads a zip of Stored entries through positioned reads: the end records and the central
 * directory first, then only the entries asked for. Every offset and size is checked against the
 * file's size before it is used, so the reader never allocates more than the file holds.
 */
export class ZipReader {
  private constructor(
    private readonly reader: RandomAccessReader,
    private readonly directory: ZipDirectory,
    /** Where entry data must end: the start of the central directory. */
    private readonly dataEnd: number,
  ) {}

  static async open(reader: RandomAccessReader): Promise<ZipReader> {
    const { directoryOffset, directorySize, entryCount } = await readEnd(reader);
    const directory = await reader.read(directoryOffset, directorySize);
    return new ZipReader(reader, ZipDirectory.parse(directory, entryCount, directoryOffset), directoryOffset);
  }

  /** The same archive read from other bytes (the whole file, once read into memory). */
  withReader(reader: RandomAccessReader): ZipReader {
    if (reader.size !== this.reader.size) throw new FormatError("ZIP_BOUNDS", "the new bytes are not the same file");
    return new ZipReader(reader, this.directory, this.dataEnd);
  }

  get entryCount(): number {
    return this.directory.count;
  }

  /**
   * Every entry by name, in directory order. Built on first use (an object and a string per
   * entry): look entries up with `find`, `entry` or `numberedEntry` instead where there are many.
   */
  get entries(): ReadonlyMap<string, ZipEntry> {
    return this.directory.entries;
  }

  /** The entry named `name`, or undefined. */
  find(name: string): ZipEntry | undefined {
    const index = this.directory.find(name);
    return index < 0 ? undefined : this.directory.entryAt(index);
  }

  entry(name: string): ZipEntry {
    const entry = this.find(name);
    if (entry === undefined) throw new FormatError("ZIP_MISSING", `the zip has no entry "${name}"`);
    return entry;
  }

  /** The entry named `prefix` + `number` (its digits without leading zeros: PyTorch's storages), or undefined. */
  numberedEntry(prefix: string, number: number): ZipEntry | undefined {
    const index = this.directory.findNumbered(prefix, number);
    return index < 0 ? undefined : this.directory.entryAt(index);
  }

  /** The names of the entries that are not numbered (those of a PyTorch archive besides its storages). */
  unnumberedNames(): IterableIterator<string> {
    return this.directory.unnumberedNames();
  }

  /** Where each entry starts (its local header), ascending. */
  entryStarts(): Float64Array {
    return this.directory.headerOffsetsInFileOrder();
  }

  /** Where an entry's data starts, read from its local header. */
  async dataOffset(entry: ZipEntry): Promise<number> {
    const header = this.reader.view?.(entry.headerOffset, LOCAL_HEADER_SIZE) ?? (await this.reader.read(entry.headerOffset, LOCAL_HEADER_SIZE));
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
   * between entries (headers, directory) are checksummed, and each entry contributes its recorded
   * CRC. A reader that checksummed the file while reading it compares the two instead of checking
   * each entry again.
   */
  async expectedFileCrc(): Promise<number> {
    // In memory, the bytes between entries (headers, directory: small) are views; else they are read.
    const bytesBetween = (from: number, to: number): Promise<Uint8Array> | Uint8Array =>
      this.reader.view?.(from, to - from) ?? this.reader.read(from, to - from);
    const directory = this.directory;
    const order = Array.from({ length: directory.count }, (_, i) => i).sort((a, b) => directory.headerOffsetAt(a) - directory.headerOffsetAt(b));
    let crc = 0;
    let position = 0;
    for (const index of order) {
      const entry = directory.entryAt(index);
      const start = await this.dataOffset(entry);
      if (start < position) throw new FormatError("ZIP_BOUNDS", `entry "${entry.name}" overlaps the entry before it`);
      crc = crc32(await bytesBetween(position, start), crc);
      crc = crc32Combine(crc, entry.crc, entry.size);
      position = start + entry.size;
    }
    return crc32(await bytesBetween(position, this.reader.size), crc);
  }

  /**
   * Reads an entry's bytes (into `target` when given: memory the process already uses, such as a
   * tensor filled in place), checking its CRC-32 unless told not to.
   */
  async read(name: string, options: { target?: Uint8Array; verifyCrc?: boolean } = {}): Promise<Uint8Array> {
    return this.readEntry(this.entry(name), options);
  }

  /**
   * An entry's bytes when the archive is in memory and no target is given: a view, checked,
   * without a promise (a load of many small tensors reads thousands); undefined otherwise.
   */
  viewInMemory(entry: ZipEntry, verifyCrc = true): Uint8Array | undefined {
    // The header is parsed where it lies, with no view made of it: a load of many small tensors
    // looks up thousands of entries.
    const reader = this.reader;
    let bytes: Uint8Array;
    let base: number;
    if (reader instanceof MemoryReader) {
      bytes = reader.bytes;
      base = 0;
    } else if (reader instanceof SegmentedReader) {
      const index = reader.segmentAt(entry.headerOffset);
      bytes = reader.segments[index]!;
      base = reader.starts[index]!;
    } else {
      return undefined;
    }
    const at = entry.headerOffset - base;
    if (at + LOCAL_HEADER_SIZE > bytes.byteLength) return undefined; // never where segments start at headers
    const start = this.dataStart(entry, bytes, at) - base;
    if (start + entry.size > bytes.byteLength) return undefined; // in the next segment too: read() copies it
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
    const target = options.target;
    const data = target === undefined ? (this.reader.view?.(start, entry.size) ?? (await this.reader.read(start, entry.size))) : await readIntoExisting(this.reader, start, entry.size, target);
    if ((options.verifyCrc ?? true) && crc32(data) !== entry.crc) {
      throw new FormatError("ZIP_CRC", `entry "${name}" fails its CRC-32 check: the file is corrupt`);
    }
    return data;
  }

  static {
    keepShape(new ZipReader(new MemoryReader(Buffer.alloc(0)), undefined as never, 0.5));
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
