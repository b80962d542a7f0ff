import { randomBytes } from "node:crypto";
import { constants, promises as fsp, type Stats } from "node:fs";
import type { FileHandle } from "node:fs/promises";
import * as nodePath from "node:path";
import { MAX_BUFFER_BYTES } from "../formats/byte-io.js";
import type { DirectoryEntry, FileLock, FileReader, FileSystem, FileWriter } from "./file-system.js";
import { acquireLocalLock } from "./local-lock.js";

/** `.<name>.<pid>.<random>.partial`: a file being written by `createWriter`. */
const PARTIAL_FILE = /^\..+\.(\d+)\.[0-9a-f]{8}\.partial$/;

/** Writes smaller than this are gathered into one buffer: thousands of tiny writes cost syscalls. */
const WRITE_BUFFER_SIZE = 4 << 20;
/**
 * Writes at least this large go to the file as they are, without a copy into the buffer. Below the
 * zip writer's staged batches (up to 1 MiB, but a batch ends where the next header or entry would
 * not fit, so it is a little less): at 1 MiB, every small tensor was copied a second time here.
 */
const PASS_THROUGH_BYTES = 256 << 10;
/**
 * Written bytes past which a background flush to disk (fdatasync) starts while writing goes on:
 * a file's fsync at close otherwise waits for all its bytes at once.
 */
const EARLY_SYNC_BYTES = 16 << 20;

/**
 * The most bytes one read or write call is given. Node takes at most 2^31 − 1 per call (beyond
 * that `write` throws and `read` aborts the process) and Linux moves at most 0x7ffff000; 1 GiB
 * pieces stay below both and are as fast as any.
 */
export const MAX_IO_BYTES = 1 << 30;

/**
 * The local disk. Files are written to a hidden sibling, fsynced, renamed into place and the
 * directory fsynced, so a file is either all there or not there, even across a power cut.
 */
export class LocalFileSystem implements FileSystem {
  readonly supportsRename: boolean = true;

  resolvePath(path: string): string {
    return nodePath.resolve(path);
  }

  /** Opens regular files only, without blocking: a FIFO, device or directory is an error naming it. */
  async openReader(path: string): Promise<FileReader> {
    // O_NONBLOCK: opening a FIFO would otherwise wait forever for a writer (on a regular file it
    // changes nothing); fstat then refuses whatever was opened that is not a regular file.
    const handle = await fsp.open(path, constants.O_RDONLY | constants.O_NONBLOCK);
    try {
      const stat = await handle.stat();
      if (!stat.isFile()) throw notRegularFile(path, stat);
      return new LocalFileReader(handle, path, stat.size);
    } catch (error) {
      await handle.close();
      throw error;
    }
  }

  async createWriter(path: string): Promise<FileWriter> {
    const partial = nodePath.join(nodePath.dirname(path), `.${nodePath.basename(path)}.${process.pid}.${randomBytes(4).toString("hex")}.partial`);
    const handle = await fsp.open(partial, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL, 0o644);
    return new LocalFileWriter(handle, partial, path);
  }

  /** Reads a regular file whole (up to MAX_BUFFER_BYTES), never blocking on a FIFO (see openReader). */
  async readFile(path: string): Promise<Uint8Array> {
    const reader = await this.openReader(path);
    try {
      return await reader.read(0, reader.size);
    } finally {
      await reader.close();
    }
  }

  async writeFile(path: string, data: Uint8Array): Promise<void> {
    const writer = await this.createWriter(path);
    try {
      await writer.write(data);
      await writer.close();
    } catch (error) {
      await writer.abort();
      throw error;
    }
  }

  async exists(path: string): Promise<boolean> {
    try {
      await fsp.lstat(path);
      return true;
    } catch (error) {
      if (isNotFound(error)) return false;
      throw error;
    }
  }

  async modifiedTime(path: string): Promise<number | undefined> {
    try {
      return (await fsp.lstat(path)).mtimeMs;
    } catch (error) {
      if (isNotFound(error)) return undefined;
      throw error;
    }
  }

  async listDirectory(path: string): Promise<DirectoryEntry[]> {
    try {
      const entries = await fsp.readdir(path, { withFileTypes: true });
      return entries.map((entry) => ({ name: entry.name, isDirectory: entry.isDirectory(), isSymbolicLink: entry.isSymbolicLink() }));
    } catch (error) {
      if (isNotFound(error)) return [];
      throw error;
    }
  }

  async makeDirectory(path: string): Promise<void> {
    await fsp.mkdir(path, { recursive: true });
  }

  async freeSpace(path: string): Promise<number | undefined> {
    const stats = await fsp.statfs(path);
    return stats.bavail * stats.bsize;
  }

  async remove(path: string): Promise<void> {
    await fsp.rm(path, { recursive: true, force: true });
  }

  async renameDirectory(from: string, to: string): Promise<void> {
    // rename(2) replaces an empty target directory silently; refuse instead.
    if (await this.exists(to)) throw Object.assign(new Error(`cannot rename ${from}: ${to} exists`), { code: "EEXIST" });
    await fsp.rename(from, to);
  }

  async removeAbandonedWrites(dir: string): Promise<void> {
    for (const entry of await this.listDirectory(dir)) {
      const match = PARTIAL_FILE.exec(entry.name);
      if (match === null || entry.isDirectory || isRunning(Number(match[1]))) continue;
      await fsp.rm(nodePath.join(dir, entry.name), { force: true });
    }
  }

  async lock(path: string): Promise<FileLock> {
    return acquireLocalLock(path);
  }

  async syncDirectory(path: string): Promise<void> {
    const handle = await fsp.open(path, constants.O_RDONLY | constants.O_DIRECTORY);
    try {
      await handle.sync();
    } finally {
      await handle.close();
    }
  }
}

/** The error for a path that is not a regular file; a directory keeps the code EISDIR. */
function notRegularFile(path: string, stat: Stats): Error {
  return Object.assign(new Error(`${path} is not a regular file (${fileKind(stat)})`), { code: stat.isDirectory() ? "EISDIR" : "EFTYPE" });
}

function fileKind(stat: Stats): string {
  if (stat.isDirectory()) return "a directory";
  if (stat.isFIFO()) return "a FIFO";
  if (stat.isSocket()) return "a socket";
  if (stat.isCharacterDevice()) return "a character device";
  if (stat.isBlockDevice()) return "a block device";
  return "not a file";
}

class LocalFileReader implements FileReader {
  constructor(
    private readonly handle: FileHandle,
    private readonly path: string,
    readonly size: number,
  ) {}

  async read(position: number, length: number, target?: Uint8Array): Promise<Uint8Array> {
    if (position < 0 || length < 0 || position + length > this.size) {
      throw new RangeError(`read of ${length} bytes at ${position} is outside the ${this.size} bytes of ${this.path}`);
    }
    if (target === undefined && length > MAX_BUFFER_BYTES) {
      throw new RangeError(`cannot read ${length} bytes of ${this.path} at once: a Node.js buffer holds at most ${MAX_BUFFER_BYTES}`);
    }
    const buffer = target ?? Buffer.allocUnsafeSlow(length);
    let done = 0;
    while (done < length) {
      const { bytesRead } = await this.handle.read(buffer, done, Math.min(length - done, MAX_IO_BYTES), position + done);
      if (bytesRead === 0) throw new Error(`${this.path} ended at ${position + done} bytes while ${this.size} were expected: it changed while being read`);
      done += bytesRead;
    }
    return buffer.subarray(0, length);
  }

  async close(): Promise<void> {
    await this.handle.close();
  }
}

class LocalFileWriter implements FileWriter {
  private readonly buffer = Buffer.allocUnsafeSlow(WRITE_BUFFER_SIZE);
  private buffered = 0;
  private finished = false;
  /** Bytes written since the last early flush to disk was started. */
  private unsynced = 0;
  /** The early flush to disk in flight, if any (see EARLY_SYNC_BYTES). */
  private syncing: Promise<void> | undefined;

  constructor(
    private readonly handle: FileHandle,
    private readonly partialPath: string,
    private readonly finalPath: string,
  ) {}

  async write(chunk: Uint8Array): Promise<void> {
    if (this.finished) throw new Error(`${this.finalPath} is already closed`);
    if (chunk.byteLength >= PASS_THROUGH_BYTES) {
      // Already a large write (the zip writer stages small pieces itself): no copy.
      await this.flush();
      await this.writeOut(chunk);
      return;
    }
    if (this.buffered + chunk.byteLength <= this.buffer.length) {
      this.buffer.set(chunk, this.buffered);
      this.buffered += chunk.byteLength;
      return;
    }
    await this.flush();
    if (chunk.byteLength < this.buffer.length / 2) {
      this.buffer.set(chunk, 0);
      this.buffered = chunk.byteLength;
    } else {
      await this.writeOut(chunk);
    }
  }

  /**
   * Writes `bytes`, and once EARLY_SYNC_BYTES have been written since, starts flushing them to
   * disk in the background (one flush at a time): the fsync at close then has little left to do,
   * and the disk works while the caller prepares the next bytes.
   */
  private async writeOut(bytes: Uint8Array): Promise<void> {
    await writeAll(this.handle, bytes);
    this.unsynced += bytes.byteLength;
    if (this.unsynced >= EARLY_SYNC_BYTES && this.syncing === undefined) {
      this.unsynced = 0;
      const syncing = this.handle.datasync().finally(() => {
        if (this.syncing === syncing) this.syncing = undefined;
      });
      syncing.catch(() => undefined); // close() awaits it and reports its failure
      this.syncing = syncing;
    }
  }

  async close(): Promise<void> {
    if (this.finished) throw new Error(`${this.finalPath} is already closed`);
    this.finished = true;
    try {
      await this.flush();
      await this.syncing;
      await this.handle.sync();
      await this.handle.close();
      await fsp.rename(this.partialPath, this.finalPath);
      await syncDirectoryOf(this.finalPath);
    } catch (error) {
      await this.handle.close().catch(() => undefined);
      await fsp.rm(this.partialPath, { force: true });
      throw error;
    }
  }

  async abort(): Promise<void> {
    if (this.finished) return;
    this.finished = true;
    await this.syncing?.catch(() => undefined);
    await this.handle.close().catch(() => undefined);
    await fsp.rm(this.partialPath, { force: true });
  }

  private async flush(): Promise<void> {
    if (this.buffered === 0) return;
    await this.writeOut(this.buffer.subarray(0, this.buffered));
    this.buffered = 0;
  }
}

async function writeAll(handle: FileHandle, bytes: Uint8Array): Promise<void> {
  let done = 0;
  while (done < bytes.byteLength) {
    const { bytesWritten } = await handle.write(bytes, done, Math.min(bytes.byteLength - done, MAX_IO_BYTES));
    done += bytesWritten;
  }
}

async function syncDirectoryOf(path: string): Promise<void> {
  const handle = await fsp.open(nodePath.dirname(path), constants.O_RDONLY | constants.O_DIRECTORY);
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

function isRunning(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code !== "ESRCH";
  }
}

function isNotFound(error: unknown): boolean {
  return (error as NodeJS.ErrnoException)?.code === "ENOENT";
}
