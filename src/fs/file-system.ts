import type { ByteSink, RandomAccessReader } from "../formats/byte-io.js";

/** A file opened for positioned reads. */
export interface FileReader extends RandomAccessReader {
  close(): Promise<void>;
}

/**
 * A file being written. Nothing is visible at its path until `close()` resolves, and then all of
 * it is, durably (flushed and fsynced on a disk, a completed upload on object storage). `abort()`,
 * an error or a crash leaves whatever was at the path before untouched.
 */
export interface FileWriter extends ByteSink {
  close(): Promise<void>;
  abort(): Promise<void>;
}

/** An exclusive lock held on a path; `release()` gives it up. */
export interface FileLock {
  release(): Promise<void>;
}

export interface DirectoryEntry {
  name: string;
  isDirectory: boolean;
  /** True for a symbolic link (a local disk); a checkpoint holding one is refused as damaged. */
  isSymbolicLink?: boolean;
}

/**
 * What the library needs from storage. Paths are strings joined with "/". The contract fits a
 * local disk and object storage alike: reads are positioned, writes are whole files that appear
 * atomically, and `rename` is optional (`supportsRename`), since object stores have none.
 */
export interface FileSystem {
  /** Whether `renameDirectory` is atomic here (a local disk: yes; object storage: no). */
  readonly supportsRename: boolean;
  /** The absolute form of `path` (a local disk resolves it against the working directory). */
  resolvePath?(path: string): string;
  openReader(path: string): Promise<FileReader>;
  createWriter(path: string): Promise<FileWriter>;
  readFile(path: string): Promise<Uint8Array>;
  /** Writes a whole file durably and atomically (see FileWriter). */
  writeFile(path: string, data: Uint8Array): Promise<void>;
  /** True if a file or directory exists at `path`. */
  exists(path: string): Promise<boolean>;
  /** The entries of a directory; an empty list when it does not exist. */
  listDirectory(path: string): Promise<DirectoryEntry[]>;
  makeDirectory(path: string): Promise<void>;
  /**
   * When the file or directory at `path` was last modified, in milliseconds since the epoch, or
   * undefined when nothing is there. Optional: retention's `keepOnePer` uses it to date checkpoints
   * that have no manifest (fairseq2's), and keeps such a checkpoint when a file system lacks it.
   */
  modifiedTime?(path: string): Promise<number | undefined>;
  /**
   * The bytes free for this process on the storage holding `path` (statfs on a disk), or
   * undefined when unknown. Optional: object stores have no such figure. A save whose tensors
   * alone exceed it is refused before anything is written.
   */
  freeSpace?(path: string): Promise<number | undefined>;
  /** Removes a file or a directory tree; succeeds when nothing is there. */
  remove(path: string): Promise<void>;
  /** Atomically renames a directory, replacing nothing: fails if `to` exists. */
  renameDirectory(from: string, to: string): Promise<void>;
  /** Makes the entries of a directory durable (fsync of the directory on a disk). */
  syncDirectory(path: string): Promise<void>;
  /**
   * Takes an exclusive lock at `path` for this process, or throws an error whose message names
   * the holder. A lock whose holder has died is taken over, so a crash never blocks the next run.
   */
  lock(path: string): Promise<FileLock>;
  /**
   * Removes what writers that died left in `dir` (a local disk: half-written hidden files of
   * processes that no longer run). Called by the owner of a directory when it takes it.
   */
  removeAbandonedWrites(dir: string): Promise<void>;
}
