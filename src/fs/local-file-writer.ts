import { constants, promises as fsp } from "node:fs";
import type { FileHandle } from "node:fs/promises";
import * as nodePath from "node:path";
import type { FileWriter } from "./file-system.js";
import { BackgroundFlush } from "./background-flush.js";
import { DIRECT_ALIGNMENT, DirectBlockWriter } from "./direct-writes.js";

/**
 * The most bytes one read or write call is given. Node takes at most 2^31 − 1 per call (beyond
 * that `write` throws and `read` aborts the process) and Linux moves at most 0x7ffff000; 1 GiB
 * pieces stay below both and are as fast as any.
 */
export const MAX_IO_BYTES = 1 << 30;

/** Writes smaller than this are gathered into one buffer: thousands of tiny writes cost syscalls. */
const WRITE_BUFFER_SIZE = 4 << 20;
/**
 * Write buffers kept between files. A save writes several small files (a rank file, metadata, the
 * manifest); a buffer of its own for each was 4 MiB of fresh memory mapped and dropped per file,
 * and enough allocation to start garbage collections in a process that saves small checkpoints often.
 */
const spareBuffers: Buffer[] = [];
const SPARE_BUFFERS = 2;

/** @internal The write buffers kept for the next files (test/write-buffers.test.ts). */
export function spareWriteBuffers(): readonly Buffer[] {
  return spareBuffers;
}

/**
 * Writes at least this large go to the file as they are, without a copy into the buffer. Well below
 * the zip writer's staged batches (up to 256 KiB, but a batch ends where the next header or entry
 * would not fit, so it is a little less): at their size, every small tensor was copied a second time here.
 */
const PASS_THROUGH_BYTES = 64 << 10;
/**
 * Written bytes past which a background flush to disk (fdatasync) starts while writing goes on:
 * a file's fsync at close otherwise waits for all its bytes at once.
 */
const EARLY_SYNC_BYTES = 16 << 20;

/**
 * A file announced (expectBytes) as shorter than this many direct-write blocks is written in blocks
 * of a quarter of the size. A process's first save touches every byte of its blocks for the first
 * time (0.25 GB/s on this VM): 80 MiB of small tensors saved first took 475–617 ms in 16 MiB blocks
 * and 346–412 ms in 4 MiB ones, and later saves did not differ; a 1 GiB file is written faster in
 * 16 MiB blocks (docs/design.md, "Saving around the page cache").
 */
const SMALL_FILE_BLOCKS = 8;

/**
 * Writes a file to a hidden partial path; `close` fsyncs it, renames it into place and fsyncs the
 * directory. Small writes are gathered into a buffer. Once the file reaches `directBlockBytes` (from
 * its first byte, for a small file announced as that large: expectBytes), the rest goes around the
 * page cache in aligned blocks (see DirectBlockWriter), where the file system
 * takes O_DIRECT: filling the page cache costs CPU a save need not spend, and a checkpoint read
 * back only at a resume gains nothing from its pages.
 */
export class LocalFileWriter implements FileWriter {
  /** Taken at the first write that is gathered, given back when the file is closed or discarded. */
  private buffer: Buffer | undefined;
  private buffered = 0;
  /** Bytes written to the file so far (not counting the buffer or direct blocks). */
  private written = 0;
  private finished = false;
  /** Flushes what was written through the page cache while writing goes on (see EARLY_SYNC_BYTES). */
  private readonly diskFlush: BackgroundFlush;
  /** Where the rest of the file goes once direct writes have started. */
  private direct: DirectBlockWriter | undefined;
  /** The write under way: close and abort wait for it before touching what it uses. */
  private writing: Promise<void> | undefined;
  /** The first write that failed: the file has a hole, and `close` must not publish it. */
  private failure: { error: unknown } | undefined;

  /** A small file announced as reaching a block (expectBytes): direct writes from its first byte. */
  private directFromStart = false;
  /** The size of this file's direct-write blocks: `directBlockBytes`, or less for a small file (expectBytes). */
  private blockBytes: number | undefined;

  /**
   * `directBlockBytes`: a multiple of DIRECT_ALIGNMENT, or undefined for no direct writes. Direct
   * writes start once the file reaches it.
   */
  constructor(
    private readonly handle: FileHandle,
    private readonly partialPath: string,
    private readonly finalPath: string,
    private directBlockBytes: number | undefined,
  ) {
    this.diskFlush = new BackgroundFlush(handle, EARLY_SYNC_BYTES);
  }

  /**
   * The bytes the caller will write in all, told before the first write: a file shorter than
   * SMALL_FILE_BLOCKS blocks gets its direct writes in quarter-size blocks (less fresh memory for
   * a process's first save), and if it reaches a block, direct writes from its first byte. Said once
   * bytes are written, or without direct writes, it changes nothing.
   */
  expectBytes(total: number): void {
    if (this.directBlockBytes === undefined || this.written + this.buffered > 0) return;
    const quarter = Math.max(DIRECT_ALIGNMENT, Math.floor(this.directBlockBytes / 4 / DIRECT_ALIGNMENT) * DIRECT_ALIGNMENT);
    const small = total < SMALL_FILE_BLOCKS * this.directBlockBytes;
    this.blockBytes = small ? quarter : this.directBlockBytes;
    // A small file that will reach a block takes direct writes from its first byte: a head of a block
    // through the page cache is a fifth of it or more, and cost a process's first save of 80 MiB
    // ~24 ms of fresh page-cache pages. A larger file keeps it: its head goes to the page cache while
    // the disk is busy (1 GiB of 1 MiB tensors saved 4-6% faster with it).
    this.directFromStart = small && total >= this.directBlockBytes;
  }

  async write(chunk: Uint8Array): Promise<void> {
    if (this.finished) throw new Error(`${this.finalPath} is already closed`);
    if (this.failure !== undefined) throw this.failure.error;
    const writing = this.writeChunk(chunk);
    this.writing = writing;
    try {
      await writing;
    } catch (error) {
      this.failure ??= { error };
      throw error;
    }
  }

  private async writeChunk(chunk: Uint8Array): Promise<void> {
    if (this.direct !== undefined) return this.direct.write(chunk);
    if (this.directBlockBytes !== undefined && this.written + this.buffered + chunk.byteLength >= (this.directFromStart ? 0 : this.directBlockBytes)) {
      const { direct, rest } = await this.startDirect(chunk, this.blockBytes ?? this.directBlockBytes);
      if (direct !== undefined) return direct.write(rest);
      chunk = rest;
    }
    if (chunk.byteLength >= PASS_THROUGH_BYTES) {
      // Already a large write (the zip writer stages small pieces itself): no copy.
      await this.flush();
      await this.writeOut(chunk);
      return;
    }
    if (this.buffered + chunk.byteLength <= WRITE_BUFFER_SIZE) {
      this.takeBuffer().set(chunk, this.buffered);
      this.buffered += chunk.byteLength;
      return;
    }
    await this.flush();
    if (chunk.byteLength < WRITE_BUFFER_SIZE / 2) {
      this.takeBuffer().set(chunk, 0);
      this.buffered = chunk.byteLength;
    } else {
      await this.writeOut(chunk);
    }
  }

  /**
   * Writes what is buffered and as much of `chunk` as takes the file to an aligned size, then
   * opens the file for direct writes from there. Returns the direct writer (undefined if the file
   * system refuses direct writes: this file goes on as it started) and the rest of `chunk`.
   */
  private async startDirect(chunk: Uint8Array, blockBytes: number): Promise<{ direct: DirectBlockWriter | undefined; rest: Uint8Array }> {
    await this.flush();
    // The chunk takes the file to where direct writes start: one block (every write checks), a
    // multiple of DIRECT_ALIGNMENT, or its start (directFromStart): the bytes up to the next aligned
    // offset are all in the chunk.
    const head = (DIRECT_ALIGNMENT - (this.written % DIRECT_ALIGNMENT)) % DIRECT_ALIGNMENT;
    const start = this.written + head;
    this.directBlockBytes = undefined; // one attempt per file
    await this.writeOut(chunk.subarray(0, head));
    this.direct = await DirectBlockWriter.open(this.partialPath, start, blockBytes, (bytes, position) => writeAll(this.handle, bytes, position));
    return { direct: this.direct, rest: chunk.subarray(head) };
  }

  /**
   * Writes `bytes` at the end of what is written, and once EARLY_SYNC_BYTES have been written since,
   * starts flushing them to disk in the background (one flush at a time): the fsync at close then
   * has little left to do, and the disk works while the caller prepares the next bytes.
   */
  private async writeOut(bytes: Uint8Array): Promise<void> {
    await writeAll(this.handle, bytes, this.written);
    this.written += bytes.byteLength;
    this.diskFlush.handedOver(bytes.byteLength);
  }

  async close(): Promise<void> {
    if (this.finished) throw new Error(`${this.finalPath} is already closed`);
    this.finished = true;
    await this.writing?.catch(() => undefined);
    if (this.failure !== undefined) {
      await this.discard();
      throw this.failure.error;
    }
    try {
      await this.flush();
      await this.finishDirect();
      await this.diskFlush.settle();
      this.giveBackBuffer();
      await this.handle.sync();
      await this.handle.close();
      await fsp.rename(this.partialPath, this.finalPath);
      await syncDirectory(nodePath.dirname(this.finalPath));
    } catch (error) {
      await this.discard();
      throw error;
    }
  }

  async abort(): Promise<void> {
    if (this.finished) return;
    this.finished = true;
    await this.writing?.catch(() => undefined);
    await this.discard();
  }

  /** Stops the writes under way, gives the blocks back and removes the partial file. */
  private async discard(): Promise<void> {
    await this.direct?.abort();
    this.direct?.release();
    this.direct = undefined;
    await this.diskFlush.quiesce();
    this.giveBackBuffer(); // no write of it is under way: the caller waited for the last
    await this.handle.close().catch(() => undefined);
    await fsp.rm(this.partialPath, { force: true });
  }

  /** Ends the direct writes; the bytes past their last 4 KiB edge go through the page cache (O_DIRECT takes whole blocks). */
  private async finishDirect(): Promise<void> {
    const direct = this.direct;
    if (direct === undefined) return;
    const { tail, position } = await direct.finish();
    await writeAll(this.handle, tail, position);
    this.direct = undefined;
    direct.release();
  }

  private async flush(): Promise<void> {
    if (this.buffered === 0) return;
    await this.writeOut(this.buffer!.subarray(0, this.buffered));
    this.buffered = 0;
  }

  private takeBuffer(): Buffer {
    return (this.buffer ??= spareBuffers.pop() ?? Buffer.allocUnsafeSlow(WRITE_BUFFER_SIZE));
  }

  private giveBackBuffer(): void {
    if (this.buffer !== undefined && spareBuffers.length < SPARE_BUFFERS) spareBuffers.push(this.buffer);
    this.buffer = undefined;
    this.buffered = 0;
  }
}

async function writeAll(handle: FileHandle, bytes: Uint8Array, position: number): Promise<void> {
  let done = 0;
  while (done < bytes.byteLength) {
    const { bytesWritten } = await handle.write(bytes, done, Math.min(bytes.byteLength - done, MAX_IO_BYTES), position + done);
    done += bytesWritten;
  }
}

/** fsync of a directory: what makes a rename or a new entry in it survive a power cut. */
export async function syncDirectory(path: string): Promise<void> {
  const handle = await fsp.open(path, constants.O_RDONLY | constants.O_DIRECTORY);
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}
