import {
  CENTRAL_HEADER_SIGNATURE,
  CENTRAL_HEADER_SIZE,
  END_SIGNATURE,
  END_SIZE,
  LOCAL_HEADER_SIGNATURE,
  LOCAL_HEADER_SIZE,
  METHOD_STORED,
  PADDING_EXTRA_ID,
  UINT16_MAX,
  UINT32_MAX,
  ZIP64_END_SIGNATURE,
  ZIP64_END_SIZE,
  ZIP64_EXTRA_ID,
  ZIP64_LOCATOR_SIGNATURE,
  ZIP64_LOCATOR_SIZE,
} from "./zip-constants.js";

// The byte layouts of the records ZipWriter writes. Each function fills bytes the writer has
// reserved in its staging buffer; an entry's name, which sits between a header's fixed fields and
// its extra fields, is the writer's to write.

/** 1980-01-01 00:00, the earliest DOS date: a fixed time keeps identical states byte-identical. */
const DOS_DATE = (0 << 9) | (1 << 5) | 1;
const DOS_TIME = 0;
const VERSION_ZIP64 = 45;
const VERSION_PLAIN = 20;

/** Bytes of a local header's zip64 extra field: its id and length, then both sizes. */
export const ZIP64_LOCAL_EXTRA_BYTES = 4 + 16;

/**
 * A local header at `start` for a name of `nameLength` bytes: a zip64 extra field when `zip64`,
 * then a padding field of `padding` bytes (0, or at least 4: it has a header of its own).
 */
export function writeLocalHeader(b: Buffer, start: number, nameLength: number, crc: number, size: number, zip64: boolean, padding: number): void {
  const zip64Extra = zip64 ? ZIP64_LOCAL_EXTRA_BYTES : 0;
  writeU32(b, start, LOCAL_HEADER_SIGNATURE);
  writeU16(b, start + 4, zip64 ? VERSION_ZIP64 : VERSION_PLAIN);
  writeU16(b, start + 6, 0); // flags
  writeU16(b, start + 8, METHOD_STORED);
  writeU16(b, start + 10, DOS_TIME);
  writeU16(b, start + 12, DOS_DATE);
  writeU32(b, start + 14, crc);
  writeU32(b, start + 18, zip64 ? UINT32_MAX : size);
  writeU32(b, start + 22, zip64 ? UINT32_MAX : size);
  writeU16(b, start + 26, nameLength);
  writeU16(b, start + 28, zip64Extra + padding);
  let at = start + LOCAL_HEADER_SIZE + nameLength;
  if (zip64) {
    writeU16(b, at, ZIP64_EXTRA_ID);
    writeU16(b, at + 2, 16);
    b.writeBigUInt64LE(BigInt(size), at + 4);
    b.writeBigUInt64LE(BigInt(size), at + 12);
    at += zip64Extra;
  }
  if (padding > 0) {
    writeU16(b, at, PADDING_EXTRA_ID);
    writeU16(b, at + 2, padding - 4);
    // the rest is zero-filled (PyTorch fills with 'Z'; readers ignore the content)
    for (let i = at + 4; i < at + padding; i++) b[i] = 0;
  }
}

/** Bytes of a central header's zip64 extra field for the fields that do not fit in 32 bits. */
export function centralExtraLength(bigSize: boolean, bigOffset: boolean): number {
  const fields = (bigSize ? 2 : 0) + (bigOffset ? 1 : 0);
  return fields > 0 ? 4 + 8 * fields : 0;
}

/**
 * A central header without zip64 fields at `start`, as writeCentralHeader writes it: its fixed
 * fields copied from a template, then the entry's own. An archive of many small tensors has tens
 * of thousands of these, written at the end of a save (a process's first save runs this before
 * V8 has optimized it: one copy then costs less than forty-six stores).
 */
export function writePlainCentralHeader(b: Buffer, start: number, nameLength: number, crc: number, size: number, offset: number): void {
  b.set(PLAIN_CENTRAL_HEADER, start);
  writeU32(b, start + 16, crc);
  writeU32(b, start + 20, size);
  writeU32(b, start + 24, size);
  writeU16(b, start + 28, nameLength);
  writeU32(b, start + 42, offset);
}

/** A central header at `start` for a name of `nameLength` bytes, with its zip64 extra field if any. */
export function writeCentralHeader(b: Buffer, start: number, nameLength: number, crc: number, size: number, offset: number, bigSize: boolean, bigOffset: boolean): void {
  const extraLength = centralExtraLength(bigSize, bigOffset);
  const version = extraLength > 0 ? VERSION_ZIP64 : VERSION_PLAIN;
  for (let i = start; i < start + CENTRAL_HEADER_SIZE; i++) b[i] = 0;
  writeU32(b, start, CENTRAL_HEADER_SIGNATURE);
  writeU16(b, start + 4, version);
  writeU16(b, start + 6, version);
  writeU16(b, start + 10, METHOD_STORED);
  writeU16(b, start + 12, DOS_TIME);
  writeU16(b, start + 14, DOS_DATE);
  writeU32(b, start + 16, crc);
  writeU32(b, start + 20, bigSize ? UINT32_MAX : size);
  writeU32(b, start + 24, bigSize ? UINT32_MAX : size);
  writeU16(b, start + 28, nameLength);
  writeU16(b, start + 30, extraLength);
  writeU32(b, start + 42, bigOffset ? UINT32_MAX : offset);
  if (extraLength > 0) {
    let at = start + CENTRAL_HEADER_SIZE + nameLength;
    writeU16(b, at, ZIP64_EXTRA_ID);
    writeU16(b, at + 2, extraLength - 4);
    at += 4;
    if (bigSize) {
      b.writeBigUInt64LE(BigInt(size), at);
      b.writeBigUInt64LE(BigInt(size), at + 8);
      at += 16;
    }
    if (bigOffset) b.writeBigUInt64LE(BigInt(offset), at);
  }
}

/** The zip64 end record (written at `endOffset` in the file) and its locator, at `start`. */
export function writeZip64EndRecords(b: Buffer, start: number, count: number, directoryOffset: number, directorySize: number, endOffset: number): void {
  b.fill(0, start, start + ZIP64_END_SIZE + ZIP64_LOCATOR_SIZE);
  b.writeUInt32LE(ZIP64_END_SIGNATURE, start);
  b.writeBigUInt64LE(BigInt(ZIP64_END_SIZE - 12), start + 4);
  b.writeUInt16LE(VERSION_ZIP64, start + 12);
  b.writeUInt16LE(VERSION_ZIP64, start + 14);
  b.writeBigUInt64LE(BigInt(count), start + 24);
  b.writeBigUInt64LE(BigInt(count), start + 32);
  b.writeBigUInt64LE(BigInt(directorySize), start + 40);
  b.writeBigUInt64LE(BigInt(directoryOffset), start + 48);
  b.writeUInt32LE(ZIP64_LOCATOR_SIGNATURE, start + ZIP64_END_SIZE);
  b.writeBigUInt64LE(BigInt(endOffset), start + ZIP64_END_SIZE + 8);
  b.writeUInt32LE(1, start + ZIP64_END_SIZE + 16); // total number of disks
}

/** The end record at `at`; with `zip64`, its fields say to read the zip64 end record instead. */
export function writeEndRecord(b: Buffer, at: number, count: number, directoryOffset: number, directorySize: number, zip64: boolean): void {
  b.fill(0, at, at + END_SIZE);
  b.writeUInt32LE(END_SIGNATURE, at);
  b.writeUInt16LE(zip64 ? UINT16_MAX : count, at + 8);
  b.writeUInt16LE(zip64 ? UINT16_MAX : count, at + 10);
  b.writeUInt32LE(zip64 ? UINT32_MAX : directorySize, at + 12);
  b.writeUInt32LE(zip64 ? UINT32_MAX : directoryOffset, at + 16);
}

function writeU16(b: Uint8Array, at: number, value: number): void {
  b[at] = value & 0xff;
  b[at + 1] = (value >>> 8) & 0xff;
}

function writeU32(b: Uint8Array, at: number, value: number): void {
  b[at] = value & 0xff;
  b[at + 1] = (value >>> 8) & 0xff;
  b[at + 2] = (value >>> 16) & 0xff;
  b[at + 3] = (value >>> 24) & 0xff;
}

/** The fixed fields of a central header without zip64 fields (see writePlainCentralHeader). */
const PLAIN_CENTRAL_HEADER = Buffer.alloc(CENTRAL_HEADER_SIZE);
writeCentralHeader(PLAIN_CENTRAL_HEADER, 0, 0, 0, 0, 0, false, false);
