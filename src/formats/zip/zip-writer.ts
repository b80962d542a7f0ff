import { crc32 } from "../crc32.js";
import { FormatError } from "../../errors.js";
import type { ByteSink } from "../byte-io.js";
import { crc32Combine } from "./crc32-combine.js";
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

export interface ZipWriterOptions {
  /** Entry data starts at a multiple of this (PyTorch uses 64, so storages can be mapped). */
  alignment?: number;
  /** Write zip64 records even when the sizes fit in 32 bits (to test readers). */
  forceZip64?: boolean;
}

interface WrittenEntry {
  name: Uint8Array;
  crc: number;
  size: number;
  offset: number;
}

/** Entry data at least this long joins the file CRC by combining CRCs instead of a second pass. */
const COMBINE_MIN_BYTES = 16 << 10;
/** Small pieces are gathered into writes of about this size. */
const STAGE_BYTES = 1 << 20;
/** Queued bytes past which adding an entry waits for the sink (the bytes are the caller's, not copies). */
const MAX_QUEUED_BYTES = 64 << 20;

/** 1980-01-01 00:00, the earliest DOS date: a fixed time keeps identical states byte-identical. */
const DOS_DATE = (0 << 9) | (1 << 5) | 1;
const DOS_TIME = 0;
const VERSION_ZIP64 = 45;
const VERSION_PLAIN = 20;

const utf8 = new TextEncoder();

/**
 * Writes a zip of Stored entries straight to a sink, one entry after another: the CRC is computed
 * before the header is written, so no data descriptors and no seeking are needed, and entry data
 * is never copied into a file-sized buffer. Writes are queued, so the CRC of the next entry is
 * computed while the sink writes the last one; the CRC of the whole file comes for free.
 */
export class ZipWriter {
  private offset = 0;
  private fileCrc = 0;
  private queue: Promise<void> = Promise.resolve();
  private pendingBytes = 0;
  private staged: Uint8Array[] = [];
  private stagedBytes = 0;
  private readonly entries: WrittenEntry[] = [];
  private readonly names = new Set<string>();
  private readonly alignment: number;
  private readonly forceZip64: boolean;

  constructor(
    private readonly sink: ByteSink,
    options: ZipWriterOptions = {},
  ) {
    this.alignment = options.alignment ?? 64;
    this.forceZip64 = options.forceZip64 ?? false;
  }

  /** Adds an entry whose data is the concatenation of `chunks`. */
  async addEntry(name: string, chunks: Uint8Array | readonly Uint8Array[]): Promise<void> {
    checkEntryName(name);
    if (this.names.has(name)) throw new FormatError("ZIP_NAME", `zip entry "${name}" written twice`);
    this.names.add(name);
    const parts = chunks instanceof Uint8Array ? [chunks] : chunks;
    let crc = 0;
    let size = 0;
    for (const part of parts) {
      crc = await crc32Yielding(part, crc);
      size += part.byteLength;
    }
    const encodedName = utf8.encode(name);
    const header = this.localHeader(encodedName, crc, size);
    const entry = { name: encodedName, crc, size, offset: this.offset };
    this.stage(header);
    if (size >= COMBINE_MIN_BYTES) {
      // Large data goes to the sink as it is (no copy); its CRC joins the file's by combination.
      this.flushStaged();
      for (const part of parts) if (part.byteLength > 0) this.send(part);
      this.fileCrc = crc32Combine(this.fileCrc, crc, size);
    } else {
      for (const part of parts) this.stage(part);
    }
    this.entries.push(entry);
    await this.drainIfBehind();
  }

  /** Size and CRC-32 of everything written; complete once `finish()` has resolved. */
  get digest(): { size: number; crc32: number } {
    return { size: this.offset, crc32: this.fileCrc };
  }

  /** Writes the central directory and end records; the sink then holds a complete zip. */
  async finish(): Promise<void> {
    const directoryOffset = this.offset;
    const headers = this.entries.map((entry) => this.centralHeader(entry));
    const directorySize = headers.reduce((sum, header) => sum + header.length, 0);
    for (const header of headers) this.stage(header);
    const needZip64 =
      this.forceZip64 || this.entries.length >= UINT16_MAX || directoryOffset >= UINT32_MAX || directorySize >= UINT32_MAX;
    if (needZip64) this.stage(this.zip64End(directoryOffset, directorySize));
    const end = Buffer.alloc(END_SIZE);
    end.writeUInt32LE(END_SIGNATURE, 0);
    end.writeUInt16LE(needZip64 ? UINT16_MAX : this.entries.length, 8);
    end.writeUInt16LE(needZip64 ? UINT16_MAX : this.entries.length, 10);
    end.writeUInt32LE(needZip64 ? UINT32_MAX : directorySize, 12);
    end.writeUInt32LE(needZip64 ? UINT32_MAX : directoryOffset, 16);
    this.stage(end);
    this.flushStaged();
    await this.queue;
  }

  private entryNeedsZip64(size: number, offset: number): boolean {
    return this.forceZip64 || size >= UINT32_MAX || offset >= UINT32_MAX;
  }

  private localHeader(name: Uint8Array, crc: number, size: number): Buffer {
    const zip64 = this.entryNeedsZip64(size, this.offset);
    const zip64Extra = zip64 ? 4 + 16 : 0;
    const unpadded = this.offset + LOCAL_HEADER_SIZE + name.length + zip64Extra;
    let padding = (this.alignment - (unpadded % this.alignment)) % this.alignment;
    // A padding field needs 4 bytes of its own header: round up to the next aligned position.
    if (padding > 0 && padding < 4) padding += this.alignment;
    const extraLength = zip64Extra + padding;
    const header = Buffer.alloc(LOCAL_HEADER_SIZE + name.length + extraLength);
    header.writeUInt32LE(LOCAL_HEADER_SIGNATURE, 0);
    header.writeUInt16LE(zip64 ? VERSION_ZIP64 : VERSION_PLAIN, 4);
    header.writeUInt16LE(0, 6); // flags
    header.writeUInt16LE(METHOD_STORED, 8);
    header.writeUInt16LE(DOS_TIME, 10);
    header.writeUInt16LE(DOS_DATE, 12);
    header.writeUInt32LE(crc, 14);
    header.writeUInt32LE(zip64 ? UINT32_MAX : size, 18);
    header.writeUInt32LE(zip64 ? UINT32_MAX : size, 22);
    header.writeUInt16LE(name.length, 26);
    header.writeUInt16LE(extraLength, 28);
    header.set(name, LOCAL_HEADER_SIZE);
    let at = LOCAL_HEADER_SIZE + name.length;
    if (zip64) {
      header.writeUInt16LE(ZIP64_EXTRA_ID, at);
      header.writeUInt16LE(16, at + 2);
      header.writeBigUInt64LE(BigInt(size), at + 4);
      header.writeBigUInt64LE(BigInt(size), at + 12);
      at += zip64Extra;
    }
    if (padding > 0) {
      header.writeUInt16LE(PADDING_EXTRA_ID, at);
      header.writeUInt16LE(padding - 4, at + 2);
      // the rest stays zero-filled (PyTorch fills with 'Z'; readers ignore the content)
    }
    return header;
  }

  private centralHeader(entry: WrittenEntry): Buffer {
    const bigSize = this.forceZip64 || entry.size >= UINT32_MAX;
    const bigOffset = this.forceZip64 || entry.offset >= UINT32_MAX;
    const zip64Fields = (bigSize ? 2 : 0) + (bigOffset ? 1 : 0);
    const extraLength = zip64Fields > 0 ? 4 + 8 * zip64Fields : 0;
    const header = Buffer.alloc(CENTRAL_HEADER_SIZE + entry.name.length + extraLength);
    const version = zip64Fields > 0 ? VERSION_ZIP64 : VERSION_PLAIN;
    header.writeUInt32LE(CENTRAL_HEADER_SIGNATURE, 0);
    header.writeUInt16LE(version, 4);
    header.writeUInt16LE(version, 6);
    header.writeUInt16LE(0, 8);
    header.writeUInt16LE(METHOD_STORED, 10);
    header.writeUInt16LE(DOS_TIME, 12);
    header.writeUInt16LE(DOS_DATE, 14);
    header.writeUInt32LE(entry.crc, 16);
    header.writeUInt32LE(bigSize ? UINT32_MAX : entry.size, 20);
    header.writeUInt32LE(bigSize ? UINT32_MAX : entry.size, 24);
    header.writeUInt16LE(entry.name.length, 28);
    header.writeUInt16LE(extraLength, 30);
    header.writeUInt32LE(bigOffset ? UINT32_MAX : entry.offset, 42);
    header.set(entry.name, CENTRAL_HEADER_SIZE);
    if (zip64Fields > 0) {
      let at = CENTRAL_HEADER_SIZE + entry.name.length;
      header.writeUInt16LE(ZIP64_EXTRA_ID, at);
      header.writeUInt16LE(8 * zip64Fields, at + 2);
      at += 4;
      if (bigSize) {
        header.writeBigUInt64LE(BigInt(entry.size), at);
        header.writeBigUInt64LE(BigInt(entry.size), at + 8);
        at += 16;
      }
      if (bigOffset) header.writeBigUInt64LE(BigInt(entry.offset), at);
    }
    return header;
  }

  private zip64End(directoryOffset: number, directorySize: number): Buffer {
    const endOffset = this.offset;
    const out = Buffer.alloc(ZIP64_END_SIZE + ZIP64_LOCATOR_SIZE);
    out.writeUInt32LE(ZIP64_END_SIGNATURE, 0);
    out.writeBigUInt64LE(BigInt(ZIP64_END_SIZE - 12), 4);
    out.writeUInt16LE(VERSION_ZIP64, 12);
    out.writeUInt16LE(VERSION_ZIP64, 14);
    out.writeBigUInt64LE(BigInt(this.entries.length), 24);
    out.writeBigUInt64LE(BigInt(this.entries.length), 32);
    out.writeBigUInt64LE(BigInt(directorySize), 40);
    out.writeBigUInt64LE(BigInt(directoryOffset), 48);
    out.writeUInt32LE(ZIP64_LOCATOR_SIGNATURE, ZIP64_END_SIZE);
    out.writeBigUInt64LE(BigInt(endOffset), ZIP64_END_SIZE + 8);
    out.writeUInt32LE(1, ZIP64_END_SIZE + 16); // total number of disks
    return out;
  }

  /**
   * Gathers small pieces (headers, small tensors) to send as one write of STAGE_BYTES: thousands
   * of tiny writes would each cost a promise and a system call. The file CRC is taken per batch.
   */
  private stage(bytes: Uint8Array): void {
    if (bytes.byteLength === 0) return;
    this.offset += bytes.byteLength;
    this.staged.push(bytes);
    this.stagedBytes += bytes.byteLength;
    if (this.stagedBytes >= STAGE_BYTES) this.flushStaged();
  }

  private flushStaged(): void {
    if (this.stagedBytes === 0) return;
    const batch = this.staged.length === 1 ? this.staged[0]! : Buffer.concat(this.staged, this.stagedBytes);
    this.staged = [];
    this.stagedBytes = 0;
    this.fileCrc = crc32(batch, this.fileCrc);
    this.enqueue(batch);
  }

  /** Sends large data untouched; the caller accounts for it in the file CRC. */
  private send(bytes: Uint8Array): void {
    this.offset += bytes.byteLength;
    this.enqueue(bytes);
  }

  private enqueue(bytes: Uint8Array): void {
    this.pendingBytes += bytes.byteLength;
    this.queue = this.queue.then(async () => {
      await this.sink.write(bytes);
      this.pendingBytes -= bytes.byteLength;
    });
    // The rejection is observed by finish() or drainIfBehind(); this only keeps Node from calling it unhandled.
    this.queue.catch(() => undefined);
  }

  /** Lets at most one queued write stand ahead of the CRC work, so errors surface promptly. */
  private async drainIfBehind(): Promise<void> {
    if (this.pendingBytes > MAX_QUEUED_BYTES) await this.queue;
  }
}

/** CRC pieces between which the event loop may run: a background save must not freeze training. */
const CRC_PIECE = 8 << 20;

async function crc32Yielding(bytes: Uint8Array, crc: number): Promise<number> {
  for (let offset = 0; offset < bytes.byteLength; offset += CRC_PIECE) {
    if (offset > 0) await new Promise((resolve) => setImmediate(resolve));
    crc = crc32(bytes.subarray(offset, offset + CRC_PIECE), crc);
  }
  return crc;
}

/** Entry names are relative paths without `..`: a reader that extracts them must stay inside. */
export function checkEntryName(name: string): void {
  if (UNSAFE_NAME.test(name)) throw new FormatError("ZIP_NAME", `unsafe zip entry name ${JSON.stringify(name)}`);
}

/** Empty, absolute, with a backslash or NUL, or with a "." or ".." segment. */
const UNSAFE_NAME = /^$|^\/|[\\\0]|(^|\/)\.{1,2}(\/|$)/;
