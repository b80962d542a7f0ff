import { crc32, crc32Yielding, YIELDING_CRC_PIECE_BYTES } from "../crc32.js";
import type { ByteSink } from "../byte-io.js";
import { Crc32Shifter, crc32Combine, shiftAndCombine } from "./crc32-combine.js";
import { crc32Small } from "./crc32-small.js";
import { EntryNames } from "./zip-entry-names.js";
import { keepShape } from "../../keep-shapes.js";

export { checkEntryName } from "./zip-entry-names.js";
import { CENTRAL_HEADER_SIZE, END_SIZE, LOCAL_HEADER_SIZE, UINT16_MAX, UINT32_MAX, ZIP64_END_SIZE, ZIP64_LOCATOR_SIZE } from "./zip-constants.js";
import { ZIP64_LOCAL_EXTRA_BYTES, centralExtraLength, writeCentralHeader, writeEndRecord, writePlainCentralHeader, writeLocalHeader, writeZip64EndRecords } from "./zip-records.js";

export interface ZipWriterOptions {
  /** Entry data starts at a multiple of this (PyTorch uses 64, so storages can be mapped). */
  alignment?: number;
  /** Write zip64 records even when the sizes fit in 32 bits (to test readers). */
  forceZip64?: boolean;
}

/** Entry data at least this long is sent as it is (no copy), its CRC combined into the file's. */
const COMBINE_MIN_BYTES = 16 << 10;
/** Staged bytes shorter than this join the file CRC through the JavaScript CRC (no native call). */
const SMALL_CRC_BYTES = 256;
/**
 * Headers and small entries are gathered into writes of this size. Their buffers are a process's
 * first save's fresh memory, at 0.28 GB/s on this VM the first time it is touched: 1 MiB ones took a
 * first save of 20,000 small tensors to 356 ms (median of eight), these to 328 ms.
 */
const STAGE_BYTES = 256 << 10;
/**
 * Full-size staging and central-directory buffers the sink has written, kept for the next archive
 * of the process: a save's buffers then cost no allocation (a steady save of 20,000 small tensors
 * allocated 3.6 MB of staging buffers, and the garbage collector ran for it) and their memory is
 * already touched.
 */
const spareStages: Buffer[] = [];
/**
 * At most this many are kept (3 MiB): the batches one archive has in flight and the one it fills,
 * and the central directory of 20,000 small tensors (1.3 MB).
 */
const KEPT_STAGES = 12;

function giveStage(buffer: Buffer): void {
  if (buffer.length === STAGE_BYTES && spareStages.length < KEPT_STAGES) spareStages.push(buffer);
}
/**
 * Staged bytes sent but not yet written past which `add` asks the caller to wait: they are
 * copies, and waiting lets the event loop see finished writes, so I/O overlaps the CPU work.
 */
const MAX_STAGED_IN_FLIGHT = 3 * STAGE_BYTES;
/** Queued bytes past which adding an entry waits for the sink (the bytes are the caller's, not copies). */
const MAX_QUEUED_BYTES = 64 << 20;

/**
 * Writes a zip of Stored entries straight to a sink, one entry after another: the CRC is computed
 * before the header is written, so no data descriptors and no seeking are needed, and entry data
 * is never copied into a file-sized buffer. Writes are queued, so the CRC of the next entry is
 * computed while the sink writes the last one; the CRC of the whole file comes for free.
 *
 * Small entries cost no promise, no allocation of their own and one copy: `add` works
 * synchronously when it can, and headers and small data are written straight into a staging
 * buffer that goes to the sink in large writes (see docs/design.md, "Per-tensor cost").
 */
export class ZipWriter {
  private offset = 0;
  private fileCrc = 0;
  private queue: Promise<void> = Promise.resolve();
  private pendingBytes = 0;
  /** The staging buffer: bytes [stageStart, stageAt) are written but not yet sent to the sink. */
  private stageBuffer: Buffer = Buffer.allocUnsafe(0);
  private stageStart = 0;
  private stageAt = 0;
  /** Staged batches sent to the sink and not yet written, oldest first. */
  private readonly stagedInFlight: { bytes: number; written: Promise<void> }[] = [];
  private stagedInFlightBytes = 0;
  /**
   * Bytes [stageStart, crcAt) of the staging buffer are in `fileCrc`: a small entry's header is
   * taken at once and its data combined from the entry's CRC, so its bytes are read only once.
   */
  private crcAt = 0;
  private readonly shifter = new Crc32Shifter();
  /**
   * The central directory, written as entries are added (see centralHeader): the filled parts of
   * `centralBuffers`, the last of which is `central`, filled to `centralAt`.
   */
  private central: Buffer = Buffer.allocUnsafe(0);
  private centralAt = 0;
  private readonly centralBuffers: Buffer[] = [];
  private readonly centralFilled: Buffer[] = [];
  private entryCount = 0;
  private readonly names = new EntryNames();
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
    if (chunks instanceof Uint8Array) {
      await this.add(name, chunks);
      return;
    }
    this.names.claim(name);
    let crc = 0;
    let size = 0;
    for (const part of chunks) {
      crc = await crc32Yielding(part, crc);
      size += part.byteLength;
    }
    this.writeEntry(name, crc, size, chunks);
    await this.drainIfBehind();
  }

  /**
   * Adds an entry of one piece of data. Returns a promise only when the caller must wait (data
   * whose CRC is taken in pieces between which the event loop runs, or a sink far behind);
   * otherwise the entry is written (or queued) when it returns: no promise per small entry.
   */
  add(name: string, data: Uint8Array): Promise<void> | undefined {
    this.names.claim(name);
    return this.addClaimed(name, data);
  }

  /**
   * Adds the entry `prefix` + `index` (as `add` does), for archives of many numbered entries
   * (PyTorch's `archive/data/0`, `1`, …): the name is never built as a string, checked or kept in
   * a set. Indices come in order from 0, and a writer has one such prefix.
   */
  addNumbered(prefix: string, index: number, data: Uint8Array): Promise<void> | undefined {
    this.names.claimNumbered(prefix, index);
    return this.addClaimed(index, data);
  }

  /** `add` of an entry whose name is claimed: a numbered entry's name is its number. */
  private addClaimed(name: string | number, data: Uint8Array): Promise<void> | undefined {
    if (data.byteLength > YIELDING_CRC_PIECE_BYTES) {
      return crc32Yielding(data, 0).then((crc) => {
        this.writeEntry(name, crc, data.byteLength, data);
        return this.drainIfBehind();
      });
    }
    this.writeEntry(name, crc32(data), data.byteLength, data);
    return this.waitIfBehind();
  }

  private waitIfBehind(): Promise<void> | undefined {
    if (this.pendingBytes > MAX_QUEUED_BYTES) return this.queue;
    if (this.stagedInFlightBytes > MAX_STAGED_IN_FLIGHT) return this.stagedInFlight[0]!.written;
    return undefined;
  }

  /** Writes an entry's header and data: one piece (no array made for it: this runs per small tensor) or several. */
  private writeEntry(name: string | number, crc: number, size: number, parts: Uint8Array | readonly Uint8Array[]): void {
    const nameLength = this.names.byteLength(name);
    this.centralHeader(name, nameLength, crc, size, this.offset);
    const headerStart = this.localHeader(name, nameLength, crc, size);
    if (size >= COMBINE_MIN_BYTES) {
      // Large data goes to the sink as it is (no copy); its CRC joins the file's by combination.
      this.flushStaged();
      if (parts instanceof Uint8Array) this.send(parts);
      else for (const part of parts) if (part.byteLength > 0) this.send(part);
      this.fileCrc = crc32Combine(this.fileCrc, crc, size);
      return;
    }
    // Small data is copied into the staging buffer. If its CRC can be combined into the file's
    // cheaply (a length seen before), the header is taken now and the data is not read again.
    const shift = this.shifter.tableFor(size);
    let combined: number | undefined;
    if (shift !== undefined) {
      this.crcStagedTo(headerStart);
      this.crcAt = this.stageAt;
      this.fileCrc = crc32Small(this.stageBuffer, headerStart, this.stageAt, this.fileCrc);
      combined = shiftAndCombine(shift, this.fileCrc, crc);
    }
    let at = this.reserve(size);
    if (parts instanceof Uint8Array) {
      this.stageBuffer.set(parts, at);
    } else {
      for (const part of parts) {
        this.stageBuffer.set(part, at);
        at += part.byteLength;
      }
    }
    if (combined !== undefined) {
      // reserve may have sent the header's buffer and started another: the data's end counts either way.
      this.fileCrc = combined;
      this.crcAt = this.stageAt;
    }
  }

  /** Takes the staged bytes [crcAt, end) into the file CRC. */
  private crcStagedTo(end: number): void {
    const start = this.crcAt;
    if (end <= start) return;
    this.fileCrc = end - start < SMALL_CRC_BYTES ? crc32Small(this.stageBuffer, start, end, this.fileCrc) : crc32(this.stageBuffer.subarray(start, end), this.fileCrc);
    this.crcAt = end;
  }

  /** Size and CRC-32 of everything written; complete once `finish()` has resolved. */
  get digest(): { size: number; crc32: number } {
    return { size: this.offset, crc32: this.fileCrc };
  }

  /** Writes the central directory and end records; the sink then holds a complete zip. */
  async finish(): Promise<void> {
    // The staged entries go first (and into the file CRC), then the directory as it was written.
    this.flushStaged();
    const directoryOffset = this.offset;
    if (this.centralAt > 0) this.centralFilled.push(this.central.subarray(0, this.centralAt));
    for (const part of this.centralFilled) {
      this.fileCrc = crc32(part, this.fileCrc);
      this.send(part);
    }
    const count = this.entryCount;
    const directorySize = this.offset - directoryOffset;
    const needZip64 =
      this.forceZip64 || count >= UINT16_MAX || directoryOffset >= UINT32_MAX || directorySize >= UINT32_MAX;
    if (needZip64) this.zip64End(count, directoryOffset, directorySize);
    const at = this.reserve(END_SIZE); // may start a new staging buffer: take it after
    writeEndRecord(this.stageBuffer, at, count, directoryOffset, directorySize, needZip64);
    this.flushStaged();
    await this.queue;
    // Every write is done: the last staging buffer and the directory's are free for the next archive.
    giveStage(this.stageBuffer);
    this.stageBuffer = Buffer.allocUnsafe(0);
    for (const buffer of this.centralBuffers.splice(0)) giveStage(buffer);
  }

  private entryNeedsZip64(size: number, offset: number): boolean {
    return this.forceZip64 || size >= UINT32_MAX || offset >= UINT32_MAX;
  }

  /** Stages the local header of an entry; returns where it starts in the staging buffer. */
  private localHeader(name: string | number, nameLength: number, crc: number, size: number): number {
    const zip64 = this.entryNeedsZip64(size, this.offset);
    const zip64Extra = zip64 ? ZIP64_LOCAL_EXTRA_BYTES : 0;
    const unpadded = this.offset + LOCAL_HEADER_SIZE + nameLength + zip64Extra;
    let padding = (this.alignment - (unpadded % this.alignment)) % this.alignment;
    // A padding field needs 4 bytes of its own header: round up to the next aligned position.
    if (padding > 0 && padding < 4) padding += this.alignment;
    const start = this.reserve(LOCAL_HEADER_SIZE + nameLength + zip64Extra + padding);
    writeLocalHeader(this.stageBuffer, start, nameLength, crc, size, zip64, padding);
    this.names.write(this.stageBuffer, start + LOCAL_HEADER_SIZE, name, nameLength);
    return start;
  }

  /**
   * Writes the central directory's record of an entry whose local header is at `offset`, as the
   * entry is added: the loop over tens of thousands of entries at the end of a process's first save
   * ran before V8 had optimized it (11-16 ms for 20,000 small tensors here), while the code that
   * adds entries is optimized early in it.
   */
  private centralHeader(name: string | number, nameLength: number, crc: number, size: number, offset: number): void {
    const bigSize = this.forceZip64 || size >= UINT32_MAX;
    const bigOffset = this.forceZip64 || offset >= UINT32_MAX;
    const length = CENTRAL_HEADER_SIZE + nameLength + centralExtraLength(bigSize, bigOffset);
    if (this.centralAt + length > this.central.length) this.nextCentralBuffer(length);
    const start = this.centralAt;
    this.centralAt += length;
    this.entryCount++;
    if (bigSize || bigOffset) writeCentralHeader(this.central, start, nameLength, crc, size, offset, bigSize, bigOffset);
    else writePlainCentralHeader(this.central, start, nameLength, crc, size, offset);
    this.names.write(this.central, start + CENTRAL_HEADER_SIZE, name, nameLength);
  }

  /** Keeps the full part of the central directory's buffer and starts another (a name may be up to 64 KiB). */
  private nextCentralBuffer(length: number): void {
    if (this.centralAt > 0) this.centralFilled.push(this.central.subarray(0, this.centralAt));
    this.central = (length <= STAGE_BYTES ? spareStages.pop() : undefined) ?? Buffer.allocUnsafeSlow(Math.max(STAGE_BYTES, length));
    this.centralBuffers.push(this.central);
    this.centralAt = 0;
  }

  private zip64End(count: number, directoryOffset: number, directorySize: number): void {
    const endOffset = this.offset;
    const start = this.reserve(ZIP64_END_SIZE + ZIP64_LOCATOR_SIZE);
    writeZip64EndRecords(this.stageBuffer, start, count, directoryOffset, directorySize, endOffset);
  }

  /**
   * Makes room for `length` bytes in the staging buffer and advances the file offset; returns
   * where they go. Thousands of tiny writes would each cost a promise and a system call, so small
   * pieces (headers, small tensors) are gathered and sent as one write of about STAGE_BYTES; the
   * file CRC is taken per batch. A full buffer is sent and a new one started (the sink may keep
   * what it was given until its write resolves, so a buffer is reused only once its last write is done).
   */
  private reserve(length: number): number {
    if (this.stageAt + length > this.stageBuffer.length) {
      this.flushStaged();
      const retired = this.stageBuffer;
      if (retired.length === STAGE_BYTES) {
        // Reused once the sink has written its last batch (writes complete in order).
        this.queue.then(() => giveStage(retired), () => undefined);
      }
      // Small archives stay small: the buffer grows from 64 KiB to STAGE_BYTES.
      const next = Math.min(STAGE_BYTES, Math.max(64 << 10, 2 * retired.length));
      // A spare full-size buffer costs nothing: taken even where a smaller one would do.
      const spare = length <= STAGE_BYTES ? spareStages.pop() : undefined;
      this.stageBuffer = spare ?? Buffer.allocUnsafeSlow(Math.max(next, length));
      this.stageStart = 0;
      this.stageAt = 0;
      this.crcAt = 0;
    }
    const at = this.stageAt;
    this.stageAt += length;
    this.offset += length;
    return at;
  }

  private flushStaged(): void {
    if (this.stageAt === this.stageStart) return;
    this.crcStagedTo(this.stageAt);
    const batch = this.stageBuffer.subarray(this.stageStart, this.stageAt);
    this.stageStart = this.stageAt;
    this.enqueue(batch);
    const inFlight = { bytes: batch.byteLength, written: this.queue };
    this.stagedInFlight.push(inFlight);
    this.stagedInFlightBytes += inFlight.bytes;
    this.queue.then(() => {
      this.stagedInFlight.shift();
      this.stagedInFlightBytes -= inFlight.bytes;
    }, () => undefined);
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

  static {
    // Offsets and CRCs pass 2^31 (a CRC-32 does half the time): doubles from the start (keep-shapes.ts).
    const kept = new ZipWriter({ write: async () => undefined });
    kept.offset = kept.fileCrc = kept.pendingBytes = kept.stageStart = kept.stageAt = kept.stagedInFlightBytes = kept.crcAt = 0.5;
    keepShape(kept);
  }
}

