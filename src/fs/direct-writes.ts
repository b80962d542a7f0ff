import { constants, promises as fsp, writeSync } from "node:fs";
import type { FileHandle } from "node:fs/promises";
import { BackgroundFlush } from "./background-flush.js";
import { pageAlignedMemory } from "./page-aligned.js";

/**
 * O_DIRECT's alignment of file offsets, lengths and memory. Disks ask for their logical block size
 * (512 bytes or 4 KiB); 4 KiB satisfies both.
 */
export const DIRECT_ALIGNMENT = 4096;

/** The size of the blocks a large file is copied into and written from around the page cache. */
export const DEFAULT_DIRECT_BLOCK_BYTES = 16 << 20;

/**
 * Blocks per file being written: one is filled while the others are on their way to the disk. Two
 * writes at once took 0.88× the time of one at a time for 1 GiB here (6 runs each); three, no less.
 */
const BLOCKS_PER_FILE = 3;

/**
 * Blocks kept of each size for the next save once a file is written: a block of fresh memory costs
 * far more to fill the first time than to reuse (page faults), and saves come back again and again.
 * Six blocks are two files written at once.
 */
const KEPT_BLOCKS = 2 * BLOCKS_PER_FILE;
/** Block sizes kept at once: a file system's full blocks and its small files' quarter blocks. */
const KEPT_SIZES = 2;

/**
 * Direct-written bytes past which a flush to disk (fdatasync) starts in the background (see
 * BackgroundFlush). A direct write returns once the disk has the bytes in its volatile cache, and
 * the file's fsync at close otherwise waits for all of them at once (about 0.8 ms a MiB here:
 * 54–79 ms at the end of an 80 MiB save, the CPU idle meanwhile). Saves of small tensors fill blocks slower than
 * the disk takes them, so the flushes run in time the disk had free; 1 GiB saves were no slower.
 */
const EARLY_FLUSH_BYTES = 8 << 20;

/** Writes of a position and bytes through the ordinary (page-cached) descriptor of the file. */
export type BufferedWrite = (bytes: Uint8Array, position: number) => Promise<void>;

/**
 * The rest of a file written around the page cache (O_DIRECT) in aligned blocks of `blockBytes`,
 * starting at an aligned `position`: every byte is copied into one of BLOCKS_PER_FILE reused blocks,
 * and full blocks are written while the caller fills the next. The last block is written up to its
 * last 4 KiB edge; the bytes past it are handed back by `finish` for an ordinary write, since
 * O_DIRECT takes whole aligned blocks only.
 *
 * A file system that refuses a direct write (EINVAL) gets that block, and all that follow, through
 * `bufferedWrite` instead: nothing is lost, only the speed.
 */
export class DirectBlockWriter {
  private current = 0;
  private filled = 0;
  /** The blocks' writes under way, oldest first; the oldest is of the block filled next. */
  private readonly inFlight: Promise<void>[] = [];
  private refused = false;
  /** Flushes what the blocks sent while the next are filled (see EARLY_FLUSH_BYTES). */
  private readonly diskFlush: BackgroundFlush;

  private constructor(
    private readonly handle: FileHandle,
    private readonly blocks: Buffer[],
    /** The disk the blocks' alignment was found on (see takeBlock). */
    private readonly device: number,
    private position: number,
    private readonly bufferedWrite: BufferedWrite,
  ) {
    this.diskFlush = new BackgroundFlush(handle, EARLY_FLUSH_BYTES);
  }

  /**
   * Opens `path` a second time for direct writes from `position` (a multiple of DIRECT_ALIGNMENT,
   * at or past the end of what was written so far). Undefined when the file system refuses O_DIRECT
   * (or refused a direct write before), or no memory alignment it accepts can be found: the caller
   * goes on writing as before.
   */
  static async open(path: string, position: number, blockBytes: number, bufferedWrite: BufferedWrite): Promise<DirectBlockWriter | undefined> {
    if (position % DIRECT_ALIGNMENT !== 0) throw new RangeError(`direct writes must start at a multiple of ${DIRECT_ALIGNMENT}, not ${position}`);
    let handle: FileHandle;
    try {
      handle = await fsp.open(path, constants.O_WRONLY | constants.O_DIRECT);
    } catch (error) {
      if (isRefusal(error)) return undefined;
      throw error;
    }
    const blocks: Buffer[] = [];
    let device = -1;
    try {
      device = (await handle.stat()).dev;
      while (blocks.length < BLOCKS_PER_FILE && !refusingDevices.has(device)) {
        const block = await takeBlock(blockBytes, handle, position, device);
        if (block === undefined) break;
        blocks.push(block);
      }
    } catch (error) {
      for (const block of blocks) giveBlock(block, device);
      await handle.close().catch(() => undefined);
      throw error;
    }
    if (blocks.length < BLOCKS_PER_FILE) {
      for (const block of blocks) giveBlock(block, device);
      await handle.close();
      return undefined;
    }
    return new DirectBlockWriter(handle, blocks, device, position, bufferedWrite);
  }

  async write(chunk: Uint8Array): Promise<void> {
    const blockBytes = this.blocks[0]!.byteLength;
    for (let done = 0; done < chunk.byteLength; ) {
      const take = Math.min(blockBytes - this.filled, chunk.byteLength - done);
      this.blocks[this.current]!.set(chunk.subarray(done, done + take), this.filled);
      this.filled += take;
      done += take;
      if (this.filled === blockBytes) await this.submit();
    }
  }

  /**
   * Writes the last, partly filled block up to its last 4 KiB edge, waits for the writes in flight
   * and closes the direct descriptor. Returns the bytes past that edge (less than 4 KiB) and where
   * they go; they stay valid until `release`.
   */
  async finish(): Promise<{ tail: Uint8Array; position: number }> {
    const block = this.blocks[this.current]!;
    const aligned = this.filled - (this.filled % DIRECT_ALIGNMENT);
    try {
      if (aligned > 0) this.inFlight.push(this.writeBlock(block.subarray(0, aligned), this.position));
      await this.settle();
      await this.diskFlush.settle();
    } finally {
      await this.handle.close();
    }
    return { tail: block.subarray(aligned, this.filled), position: this.position + aligned };
  }

  /**
   * Gives the blocks back for the next file; call once, after `finish` or `abort`. Blocks a direct
   * write refused are dropped: their alignment is wrong for this disk.
   */
  release(): void {
    if (this.refused) return;
    for (const block of this.blocks) giveBlock(block, this.device);
  }

  /** Waits out a write in flight (its error is not wanted any more) and closes the descriptor. */
  async abort(): Promise<void> {
    await this.settle().catch(() => undefined);
    await this.diskFlush.quiesce();
    await this.handle.close().catch(() => undefined);
  }

  /** Waits for every write under way, then reports the first that failed. */
  private async settle(): Promise<void> {
    const outcomes = await Promise.allSettled(this.inFlight.splice(0));
    const failed = outcomes.find((outcome) => outcome.status === "rejected");
    if (failed !== undefined) throw failed.reason;
  }

  /** Sends the full current block to the disk and moves on to the next, once its last write is over. */
  private async submit(): Promise<void> {
    const block = this.blocks[this.current]!;
    const writing = this.writeBlock(block, this.position);
    writing.catch(() => undefined); // a later submit, finish or abort awaits it and reports its failure
    this.inFlight.push(writing);
    this.diskFlush.handedOver(block.byteLength);
    this.position += block.byteLength;
    this.current = (this.current + 1) % this.blocks.length;
    this.filled = 0;
    // The next block's last write is the oldest under way: its memory is filled next.
    if (this.inFlight.length === this.blocks.length) await this.inFlight.shift();
  }

  private async writeBlock(block: Buffer, position: number): Promise<void> {
    if (this.refused) return this.bufferedWrite(block, position);
    let written = 0;
    try {
      ({ bytesWritten: written } = await this.handle.write(block, 0, block.byteLength, position));
    } catch (error) {
      if (!isRefusal(error)) throw error;
      this.refused = true; // the file system takes no direct writes after all
      refusingDevices.add(this.device); // nor will it for the next file
    }
    // A short direct write (a disk filling up) leaves an unaligned rest: an ordinary write of it
    // finishes the block or reports why it cannot.
    if (written < block.byteLength) await this.bufferedWrite(block.subarray(written), position + written);
  }
}

/** Disks that refused a direct write from a block taken without a probe: their files are not opened for them again. */
const refusingDevices = new Set<number>();

/**
 * Blocks free for the next writer, oldest first, each a view that starts where direct writes to
 * `device` accepted it. Disks differ in the alignment they need (tmpfs and NVMe take any, others
 * 512 bytes or 4 KiB), so a block is reused on the disk it was probed on only.
 */
const freeBlocks: { block: Buffer; device: number }[] = [];

/**
 * A block of `blockBytes` whose memory starts where direct writes through `handle` (to `device`)
 * accept it, or undefined if no such start is found. Memory that starts on a page suits every
 * disk (none asks for more than DIRECT_ALIGNMENT) and is taken as it is. Where it cannot be had,
 * Node.js cannot say or choose where a buffer's memory starts, so a new block's start is found by
 * trying direct writes of DIRECT_ALIGNMENT bytes at `position` from successive offsets in it until
 * one is accepted; the file is cut back to `position` after.
 */
async function takeBlock(blockBytes: number, handle: FileHandle, position: number, device: number): Promise<Buffer | undefined> {
  for (let index = freeBlocks.length - 1; index >= 0; index--) {
    const free = freeBlocks[index]!;
    if (free.device === device && free.block.byteLength === blockBytes) return freeBlocks.splice(index, 1)[0]!.block;
  }
  // No probe (a synchronous direct write and a truncation per block, 3.5 ms of a process's first
  // save here): should the disk refuse it after all, the writer goes on through the page cache.
  const pageAligned = pageAlignedMemory(blockBytes);
  if (pageAligned !== undefined) return touchEveryPage(pageAligned);
  const memory = touchEveryPage(Buffer.allocUnsafeSlow(blockBytes + DIRECT_ALIGNMENT)); // zeros: what the probe writes, cut off again
  try {
    for (let offset = 0; offset < DIRECT_ALIGNMENT; offset += 8) {
      try {
        writeSync(handle.fd, memory, offset, DIRECT_ALIGNMENT, position);
        return memory.subarray(offset, offset + blockBytes);
      } catch (error) {
        if (!isRefusal(error)) throw error;
      }
    }
    return undefined;
  } finally {
    await handle.truncate(position);
  }
}

/**
 * Gives every page of a new block its memory now, in one pass (zeros; the block's bytes are
 * overwritten before they are written). Touched bit by bit as a save fills it, between the awaits
 * of its writes, a block often got pages of memory scattered one by one (the kernel's per-CPU
 * free lists), and a direct write from such a block takes about five times the disk requests: on
 * the VM this was built on, the 1 GiB steady save of a process whose blocks were scattered took
 * 1.4-1.9 s against 0.75 s (docs/design.md, "Write requests and the pages they come from").
 */
function touchEveryPage(block: Buffer): Buffer {
  return block.fill(0);
}

/** @internal The blocks kept for the next writer (test/direct-writes.test.ts checks where they start). */
export function keptDirectBlocks(): readonly Buffer[] {
  return freeBlocks.map((free) => free.block);
}

/**
 * Keeps the blocks given back last: KEPT_BLOCKS of each of the KEPT_SIZES sizes given back last (a
 * save writes small files in quarter-size blocks, see LocalFileWriter.expectBytes). A process that
 * moves to another disk or block size keeps the new ones, and its kept memory stays bounded.
 */
function giveBlock(block: Buffer, device: number): void {
  freeBlocks.push({ block, device });
  // Newest first: the first KEPT_SIZES sizes met stay, KEPT_BLOCKS of each; the rest go.
  const keptOfSize = new Map<number, number>();
  for (let index = freeBlocks.length - 1; index >= 0; index--) {
    const size = freeBlocks[index]!.block.byteLength;
    const count = keptOfSize.get(size) ?? (keptOfSize.size < KEPT_SIZES ? 0 : KEPT_BLOCKS);
    if (count < KEPT_BLOCKS) keptOfSize.set(size, count + 1);
    else freeBlocks.splice(index, 1);
  }
}

/** EINVAL is how Linux refuses O_DIRECT: at open on a file system without it, at a write it cannot align. */
function isRefusal(error: unknown): boolean {
  return (error as NodeJS.ErrnoException)?.code === "EINVAL";
}
