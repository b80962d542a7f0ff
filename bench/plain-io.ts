// The limits the benchmark compares saves and loads with: plain writes and reads of the tensors'
// bytes (one stream, several at once, O_DIRECT around the page cache), with and without a CRC-32
// pass, and a memory copy. Each is what the file system and memory allow here, without a format.
import { constants, promises as fsp } from "node:fs";
import type { FileHandle } from "node:fs/promises";
import { join } from "node:path";
import { crc32 } from "node:zlib";
import { pageAlignedBuffer } from "../src/fs/page-aligned.js";

/** Buffers per writev call: IOV_MAX on Linux. */
const IOV_MAX = 1024;

/** Bytes per writev call: Linux writes at most 0x7ffff000 per call, and Node reports more wrongly (an int32). */
const MAX_WRITEV_BYTES = 1 << 30;

/** `buffers` in batches of at most IOV_MAX buffers and (but for a single larger buffer) MAX_WRITEV_BYTES. */
function writevBatches(buffers: Uint8Array[]): Uint8Array[][] {
  const batches: Uint8Array[][] = [];
  let batch: Uint8Array[] = [];
  let bytes = 0;
  for (const buffer of buffers) {
    if (batch.length > 0 && (batch.length >= IOV_MAX || bytes + buffer.byteLength > MAX_WRITEV_BYTES)) {
      batches.push(batch);
      batch = [];
      bytes = 0;
    }
    batch.push(buffer);
    bytes += buffer.byteLength;
  }
  if (batch.length > 0) batches.push(batch);
  return batches;
}

async function writeAll(handle: FileHandle, buffers: Uint8Array[]): Promise<void> {
  for (const batch of writevBatches(buffers)) {
    const expected = batch.reduce((sum, b) => sum + b.byteLength, 0);
    const { bytesWritten } = await handle.writev(batch);
    if (bytesWritten === expected) continue;
    // A short writev: finish this batch buffer by buffer.
    let skip = bytesWritten;
    for (const buffer of batch) {
      if (skip >= buffer.byteLength) {
        skip -= buffer.byteLength;
        continue;
      }
      let done = skip;
      skip = 0;
      while (done < buffer.byteLength) done += (await handle.write(buffer, done, buffer.byteLength - done)).bytesWritten;
    }
  }
}

/** The limit for saving: the tensors' bytes in order to a new file, fsynced, nothing else. */
export async function plainWrite(buffers: Uint8Array[], path: string): Promise<void> {
  const handle = await fsp.open(path, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL, 0o644);
  try {
    await writeAll(handle, buffers);
    await handle.sync();
  } finally {
    await handle.close();
  }
}

/** Concurrent writers (libuv runs each in its own thread) of the disk's best write. */
const BEST_WRITERS = 4;

/** Splits `buffers` into `parts` runs of about equal bytes, each with the file position it starts at. */
function splitRuns(buffers: Uint8Array[], parts: number): { position: number; buffers: Uint8Array[] }[] {
  const total = buffers.reduce((sum, b) => sum + b.byteLength, 0);
  const runs: { position: number; buffers: Uint8Array[] }[] = [];
  let position = 0;
  let current: { position: number; buffers: Uint8Array[]; bytes: number } = { position: 0, buffers: [], bytes: 0 };
  for (const buffer of buffers) {
    current.buffers.push(buffer);
    current.bytes += buffer.byteLength;
    position += buffer.byteLength;
    if (current.bytes >= total / parts && runs.length < parts - 1) {
      runs.push(current);
      current = { position, buffers: [], bytes: 0 };
    }
  }
  if (current.buffers.length > 0) runs.push(current);
  return runs;
}

/**
 * The disk's best write here: the same bytes as the plain write, as BEST_WRITERS runs written at
 * once with positioned writev calls (libuv's threads: several writes in flight), then one fsync.
 * Where one writev stream is not the fastest way to this disk, this is the honest limit.
 */
export async function bestWrite(buffers: Uint8Array[], path: string): Promise<void> {
  const handle = await fsp.open(path, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL, 0o644);
  try {
    await Promise.all(
      splitRuns(buffers, BEST_WRITERS).map(async (run) => {
        let position = run.position;
        for (const batch of writevBatches(run.buffers)) {
          const expected = batch.reduce((sum, b) => sum + b.byteLength, 0);
          const { bytesWritten } = await handle.writev(batch, position);
          if (bytesWritten !== expected) {
            // A short write (rare): the rest of the batch buffer by buffer, at explicit positions.
            let at = position;
            for (const buffer of batch) {
              const start = Math.max(0, position + bytesWritten - at);
              for (let done = start; done < buffer.byteLength; ) done += (await handle.write(buffer, done, buffer.byteLength - done, at + done)).bytesWritten;
              at += buffer.byteLength;
            }
          }
          position += expected;
        }
      }),
    );
    await handle.sync();
  } finally {
    await handle.close();
  }
}

/** O_DIRECT's alignment of memory, file offsets and lengths (4 KiB: enough for 512-byte and 4K-sector disks). */
const DIRECT_ALIGNMENT = 4096;
/** The blocks an O_DIRECT write copies the tensors into and writes. */
const DIRECT_BLOCK = 16 << 20;
/** Blocks in use: two written at once while the third is filled (one at a time is 0.88× as fast here). */
const DIRECT_BLOCKS = 3;

/**
 * The tensors' bytes written around the page cache (O_DIRECT) and fsynced: copied into aligned
 * blocks (`directBlocks`, made beforehand as a writer would keep them), two written while the
 * next is filled, the last one padded and the file then cut to its size.
 */
export async function directWrite(buffers: Uint8Array[], path: string, blocks: Buffer[]): Promise<void> {
  const handle = await fsp.open(path, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_DIRECT, 0o644);
  const writing: Promise<unknown>[] = [];
  try {
    let block = 0;
    let filled = 0;
    let position = 0;
    const flush = async (length: number): Promise<void> => {
      const bytes = blocks[block]!.subarray(0, length);
      const write = handle.write(bytes, 0, length, position).then(({ bytesWritten }) => {
        if (bytesWritten !== length) throw new Error(`an O_DIRECT write of ${length} bytes wrote ${bytesWritten}`);
      });
      write.catch(() => undefined); // awaited below; a failure meanwhile must not crash the process
      writing.push(write);
      position += length;
      block = (block + 1) % blocks.length;
      filled = 0;
      if (writing.length === blocks.length) await writing.shift(); // the next block's last write
    };
    for (const buffer of buffers) {
      for (let done = 0; done < buffer.byteLength; ) {
        const take = Math.min(DIRECT_BLOCK - filled, buffer.byteLength - done);
        blocks[block]!.set(buffer.subarray(done, done + take), filled);
        filled += take;
        done += take;
        if (filled === DIRECT_BLOCK) await flush(DIRECT_BLOCK);
      }
    }
    const size = position + filled;
    if (filled > 0) await flush(Math.ceil(filled / DIRECT_ALIGNMENT) * DIRECT_ALIGNMENT);
    await Promise.all(writing);
    await handle.truncate(size);
    await handle.sync();
  } finally {
    await Promise.allSettled(writing); // none may still use the descriptor when it closes
    await handle.close();
  }
}

/**
 * DIRECT_BLOCKS views of DIRECT_BLOCK bytes of touched memory that start at a DIRECT_ALIGNMENT boundary. Node.js
 * cannot say where a buffer's memory starts, so the aligned start is found by trying O_DIRECT
 * writes of 4 KiB from offsets 0, 8, 16, … (to a scratch file in `dir`) until one is accepted.
 */
export async function directBlocks(dir: string): Promise<Buffer[]> {
  const scratch = join(dir, "direct-probe.bin");
  const handle = await fsp.open(scratch, constants.O_WRONLY | constants.O_CREAT | constants.O_TRUNC | constants.O_DIRECT, 0o644);
  try {
    const aligned = async (): Promise<Buffer> => {
      // As the library's writer does: page-aligned memory where it can be had (src/fs/page-aligned.ts).
      const memory = pageAlignedBuffer(DIRECT_BLOCK + DIRECT_ALIGNMENT).fill(0);
      for (let offset = 0; offset < DIRECT_ALIGNMENT; offset += 8) {
        try {
          await handle.write(memory, offset, DIRECT_ALIGNMENT, 0);
          return memory.subarray(offset, offset + DIRECT_BLOCK);
        } catch (error) {
          if ((error as NodeJS.ErrnoException).code !== "EINVAL") throw error;
        }
      }
      throw new Error("no offset of a buffer is aligned for O_DIRECT here (the file system may not support it)");
    };
    const blocks: Buffer[] = [];
    while (blocks.length < DIRECT_BLOCKS) blocks.push(await aligned());
    return blocks;
  } finally {
    await handle.close();
    await fsp.rm(scratch, { force: true });
  }
}

/** The file holds exactly the buffers' bytes, in order (its size, and the first and last 16 tensors compared). */
export async function checkExactCopy(buffers: Uint8Array[], path: string): Promise<void> {
  const size = buffers.reduce((sum, b) => sum + b.byteLength, 0);
  const file = await fsp.readFile(path);
  if (file.byteLength !== size) throw new Error(`${path} has ${file.byteLength} bytes, not ${size}`);
  const head = Buffer.concat(buffers.slice(0, 16));
  const tail = Buffer.concat(buffers.slice(-16));
  if (!file.subarray(0, head.byteLength).equals(head)) throw new Error(`${path} does not start with the tensors' bytes`);
  if (!file.subarray(size - tail.byteLength).equals(tail)) throw new Error(`${path} does not end with the tensors' bytes`);
}

/** The disk's (here: the page cache's) best read: the file in BEST_WRITERS pieces read at once into fresh memory. */
export async function bestRead(path: string): Promise<Uint8Array> {
  const handle = await fsp.open(path, constants.O_RDONLY);
  try {
    const { size } = await handle.stat();
    const buffer = Buffer.allocUnsafeSlow(size);
    const piece = Math.ceil(size / BEST_WRITERS / 4096) * 4096;
    await Promise.all(
      Array.from({ length: BEST_WRITERS }, async (_, i) => {
        const end = Math.min(size, (i + 1) * piece);
        for (let done = i * piece; done < end; ) {
          const { bytesRead } = await handle.read(buffer, done, Math.min(end - done, 1 << 30), done);
          if (bytesRead === 0) throw new Error(`${path} ended at ${done} of ${size} bytes`);
          done += bytesRead;
        }
      }),
    );
    return buffer;
  } finally {
    await handle.close();
  }
}

/** The limit for loading: the whole file into fresh memory, which pays first touch as a load does. */
export async function plainRead(path: string): Promise<Uint8Array> {
  const handle = await fsp.open(path, constants.O_RDONLY);
  try {
    const { size } = await handle.stat();
    const buffer = Buffer.allocUnsafeSlow(size);
    let done = 0;
    while (done < size) {
      const { bytesRead } = await handle.read(buffer, done, size - done, done);
      if (bytesRead === 0) throw new Error(`${path} ended at ${done} of ${size} bytes`);
      done += bytesRead;
    }
    return buffer;
  } finally {
    await handle.close();
  }
}

export function copyInto(targets: Uint8Array[], sources: Uint8Array[]): void {
  sources.forEach((source, i) => targets[i]!.set(source));
}

/** A diagnostic: zlib's CRC-32 (what our files carry) of the state's bytes in one pass, in memory. */
export function crcAll(buffers: Uint8Array[]): number {
  let crc = 0;
  for (const buffer of buffers) crc = crc32(buffer, crc);
  return crc;
}

/** Batches for the checksummed plain write: up to IOV_MAX buffers or CRC_BATCH_BYTES each. */
const CRC_BATCH_BYTES = 8 << 20;

/**
 * A diagnostic: the plain write, with one CRC-32 pass over every byte on the main thread while the
 * previous batch is being written (as our writer does): the most a save that checksums its data
 * once can reach here, with the checksum and the kernel's copy into the page cache sharing the cores.
 */
export async function plainWriteWithCrc(buffers: Uint8Array[], path: string): Promise<number> {
  const handle = await fsp.open(path, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL, 0o644);
  try {
    let crc = 0;
    let writing: Promise<void> = Promise.resolve();
    let batch: Uint8Array[] = [];
    let batchBytes = 0;
    const send = async (): Promise<void> => {
      const ready = batch;
      batch = [];
      batchBytes = 0;
      const previous = writing;
      writing = previous.then(() => writeAll(handle, ready));
      writing.catch(() => undefined);
      // Let the finished write start the next one while the next batch is checksummed.
      await new Promise((resolve) => setImmediate(resolve));
    };
    for (const buffer of buffers) {
      crc = crc32(buffer, crc);
      batch.push(buffer);
      batchBytes += buffer.byteLength;
      if (batch.length >= IOV_MAX || batchBytes >= CRC_BATCH_BYTES) await send();
    }
    if (batch.length > 0) await send();
    await writing;
    await handle.sync();
    return crc;
  } finally {
    await handle.close();
  }
}

/** Pieces of the checksummed plain read, as the loader's whole-file read uses. */
const READ_PIECE_BYTES = 16 << 20;

/**
 * A diagnostic: the plain read into fresh memory in pieces, the CRC-32 of each piece computed on
 * the main thread while the next one is read (as the loader's whole-file read does): the most a
 * load that checks the CRC of every byte once can reach here.
 */
export async function plainReadWithCrc(path: string): Promise<{ bytes: Uint8Array; crc: number }> {
  const handle = await fsp.open(path, constants.O_RDONLY);
  try {
    const { size } = await handle.stat();
    const bytes = Buffer.allocUnsafeSlow(size);
    const readPiece = async (position: number): Promise<Uint8Array> => {
      const length = Math.min(READ_PIECE_BYTES, size - position);
      let done = 0;
      while (done < length) {
        const { bytesRead } = await handle.read(bytes, position + done, length - done, position + done);
        if (bytesRead === 0) throw new Error(`${path} ended at ${position + done} of ${size} bytes`);
        done += bytesRead;
      }
      return bytes.subarray(position, position + length);
    };
    let crc = 0;
    let next = size > 0 ? readPiece(0) : undefined;
    for (let position = 0; next !== undefined; ) {
      const piece = await next;
      position += piece.byteLength;
      next = position < size ? readPiece(position) : undefined;
      crc = crc32(piece, crc);
    }
    return { bytes, crc };
  } finally {
    await handle.close();
  }
}
