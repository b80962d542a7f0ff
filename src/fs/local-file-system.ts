import { randomBytes } from "node:crypto";
import { constants, promises as fsp, type Stats } from "node:fs";
import type { FileHandle } from "node:fs/promises";
import * as nodePath from "node:path";
import { MAX_BUFFER_BYTES } from "../formats/byte-io.js";
import type { DirectoryEntry, FileLock, FileReader, FileSystem, FileWriter } from "./file-system.js";
import { DEFAULT_DIRECT_BLOCK_BYTES, DIRECT_ALIGNMENT } from "./direct-writes.js";
import { acquireLocalLock } from "./local-lock.js";
import { STAGE_BYTES, readThroughStages, type ReadAt } from "./staged-reads.js";
import { LocalFileWriter, MAX_IO_BYTES, syncDirectory } from "./local-file-writer.js";

/** `.<name>.<pid>.<random>.partial`: a file being written by `createWriter`. */
const PARTIAL_FILE = /^\..+\.(\d+)\.[0-9a-f]{8}\.partial$/;

export interface LocalFileSystemOptions {
  /**
   * Writes around the page cache (O_DIRECT) for files that reach `blockBytes`, from the first 4 KiB
   * boundary on where they do (a multiple of 4096; default 16 MiB; three blocks per file being
   * written, a quarter of the size for a file announced as under eight blocks; up to six of each of
   * the last two sizes used kept for the next save). On by default; `false` writes every byte through
   * the page cache. A file system that refuses O_DIRECT (ramfs, some network and FUSE file systems)
   * is written through the page cache either way.
   */
  directWrites?: boolean | { blockBytes: number };
}

/**
 * The local disk. Files are written to a hidden sibling, fsynced, renamed into place and the
 * directory fsynced, so a file is either all there or not there, even across a power cut.
 */
export class LocalFileSystem implements FileSystem {
  readonly supportsRename: boolean = true;
  /** The block size of direct writes, or undefined for none. */
  private readonly directBlockBytes: number | undefined;

  constructor(options: LocalFileSystemOptions = {}) {
    this.directBlockBytes = directBlockBytes(options.directWrites ?? true);
  }

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
    return new LocalFileWriter(handle, partial, path, this.directBlockBytes);
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
    writer.expectBytes?.(data.byteLength);
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
    await syncDirectory(path);
  }
}

function directBlockBytes(option: boolean | { blockBytes: number }): number | undefined {
  if (option === false) return undefined;
  if (option === true) return DEFAULT_DIRECT_BLOCK_BYTES;
  const { blockBytes } = option;
  if (!Number.isSafeInteger(blockBytes) || blockBytes <= 0 || blockBytes % DIRECT_ALIGNMENT !== 0 || blockBytes > MAX_IO_BYTES) {
    throw new RangeError(`directWrites.blockBytes must be a multiple of ${DIRECT_ALIGNMENT} up to ${MAX_IO_BYTES}, not ${blockBytes}`);
  }
  return blockBytes;
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
    this.checkInside(position, length);
    if (target === undefined && length > MAX_BUFFER_BYTES) {
      throw new RangeError(`cannot read ${length} bytes of ${this.path} at once: a Node.js buffer holds at most ${MAX_BUFFER_BYTES}`);
    }
    const buffer = target ?? Buffer.allocUnsafeSlow(length);
    let done = 0;
    while (done < length) {
      const { bytesRead } = await this.handle.read(buffer, done, Math.min(length - done, MAX_IO_BYTES), position + done);
      if (bytesRead === 0) throw this.changedError(position + done);
      done += bytesRead;
    }
    return buffer.subarray(0, length);
  }

  async readIntoExisting(position: number, length: number, target: Uint8Array): Promise<Uint8Array> {
    if (length < STAGE_BYTES) return this.read(position, length, target);
    this.checkInside(position, length);
    if (target.byteLength < length) throw new RangeError(`a read of ${length} bytes into a buffer of ${target.byteLength}`);
    const readAt: ReadAt = async (buffer, offset, pieceLength, at) => (await this.handle.read(buffer, offset, pieceLength, at)).bytesRead;
    await readThroughStages(readAt, target, position, length, (at) => this.changedError(at));
    return target.subarray(0, length);
  }

  private checkInside(position: number, length: number): void {
    if (position < 0 || length < 0 || position + length > this.size) {
      throw new RangeError(`read of ${length} bytes at ${position} is outside the ${this.size} bytes of ${this.path}`);
    }
  }

  private changedError(at: number): Error {
    return new Error(`${this.path} ended at ${at} bytes while ${this.size} were expected: it changed while being read`);
  }

  async close(): Promise<void> {
    await this.handle.close();
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
