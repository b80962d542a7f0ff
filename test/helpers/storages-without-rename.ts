import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after } from "node:test";

import { LocalFileSystem, type FileSystem } from "../../src/index.js";
import { joinPath } from "../../src/fs/paths.js";

/**
 * A local disk that refuses to rename, as object storage cannot: the manager must then commit by
 * writing the manifest last. Everything else is the real disk.
 */
export class LocalDiskWithoutRename extends LocalFileSystem {
  override readonly supportsRename = false;

  override async renameDirectory(from: string, to: string): Promise<void> {
    throw new Error(`renameDirectory(${from}, ${to}) called on storage that has no rename`);
  }
}

/** A place to keep checkpoints on storage without rename: a file system and fresh directories on it. */
export interface StorageWithoutRename {
  name: string;
  fileSystem: FileSystem;
  /** A fresh, empty checkpoint directory (a path the file system understands). */
  newDir(): Promise<string>;
}

/** The no-rename local disk, with its temp directories removed after the tests. */
export function localDiskWithoutRename(): StorageWithoutRename {
  const dirs: string[] = [];
  after(async () => {
    await Promise.all(dirs.map((dir) => rm(dir, { recursive: true, force: true })));
  });
  return {
    name: "a local disk without rename",
    fileSystem: new LocalDiskWithoutRename(),
    newDir: async () => {
      const dir = await mkdtemp(join(tmpdir(), "ckpt-norename-"));
      dirs.push(dir);
      return dir;
    },
  };
}

/** Every file under `dir` on any file system, relative and sorted. */
export async function filesUnder(fileSystem: FileSystem, dir: string, prefix = ""): Promise<string[]> {
  const names: string[] = [];
  for (const entry of await fileSystem.listDirectory(dir)) {
    const name = prefix === "" ? entry.name : `${prefix}/${entry.name}`;
    if (entry.isDirectory) names.push(...(await filesUnder(fileSystem, joinPath(dir, entry.name), name)));
    else names.push(name);
  }
  return names.sort();
}
