/**
 * A small disk for the disk-full class: a real tmpfs mounted for the run when this process may
 * mount (root), else a directory whose file system refuses writes past a byte quota with ENOSPC
 * (an injected fault, reported as such).
 */
import { execFile } from "node:child_process";
import { mkdir, readdir, rm, stat } from "node:fs/promises";
import { join } from "node:path";
import { promisify } from "node:util";
import { LocalFileSystem, type FileSystem, type FileWriter, type LocalFileSystemOptions } from "../../src/index.js";

const run = promisify(execFile);

export interface SmallDisk {
  dir: string;
  /** What the disk is, for the report: a tmpfs, or the injected fault and why. */
  kind: string;
  fileSystem: FileSystem;
  /** Takes space until `free` bytes are left (roughly: tmpfs counts whole pages). */
  fillUntil(free: number): Promise<void>;
  /** Gives back what fillUntil took. */
  release(): Promise<void>;
  freeBytes(): Promise<number>;
  unmount(): Promise<void>;
}

/** `options` are the disk's LocalFileSystem's (direct writes or not). */
export async function smallDisk(dir: string, sizeBytes: number, options: LocalFileSystemOptions = {}): Promise<SmallDisk> {
  await mkdir(dir, { recursive: true });
  // CKPT_TORTURE_NO_MOUNT=1 tries the fallback where mounting would work.
  if (process.env.CKPT_TORTURE_NO_MOUNT === "1") return quotaDisk(dir, sizeBytes, "injected ENOSPC past a quota (CKPT_TORTURE_NO_MOUNT=1)", options);
  try {
    await run("mount", ["-t", "tmpfs", "-o", `size=${sizeBytes}`, "tmpfs", dir]);
  } catch (error) {
    return quotaDisk(dir, sizeBytes, `injected ENOSPC past a quota (mounting a tmpfs failed: ${(error as Error).message.split("\n")[0]})`, options);
  }
  const fileSystem = new LocalFileSystem(options);
  const filler = `${dir}/filler`;
  const disk: SmallDisk = {
    dir: `${dir}/checkpoints`,
    kind: `tmpfs of ${sizeBytes} bytes`,
    fileSystem,
    freeBytes: async () => (await fileSystem.freeSpace(dir)) ?? 0,
    async fillUntil(free) {
      await rm(filler, { force: true });
      const take = (await disk.freeBytes()) - free;
      if (take > 0) await import("node:fs/promises").then((fs) => fs.writeFile(filler, Buffer.alloc(take, 1)));
    },
    release: () => rm(filler, { force: true }),
    async unmount() {
      await run("umount", [dir]);
      await rm(dir, { recursive: true, force: true });
    },
  };
  return disk;
}

/** The fallback: the bytes of the files under `dir` count against a quota. */
function quotaDisk(dir: string, sizeBytes: number, kind: string, options: LocalFileSystemOptions): SmallDisk {
  let filled = 0;
  const free = async (): Promise<number> => Math.max(0, sizeBytes - filled - (await bytesUnder(dir)));
  const fileSystem = new (class QuotaFileSystem extends LocalFileSystem {
    constructor() {
      super(options);
    }
    override freeSpace(): Promise<number> {
      return free();
    }
    override async createWriter(path: string): Promise<FileWriter> {
      const writer = await super.createWriter(path);
      let pending = 0;
      return {
        async write(chunk) {
          // Bytes in the writer's buffer are not on disk yet: count all it was given (once flushed,
          // twice: the quota errs towards refusing, never past the size).
          pending += chunk.byteLength;
          if (pending > (await free())) throw Object.assign(new Error(`ENOSPC: no space left on device, write (injected), ${path}`), { code: "ENOSPC" });
          await writer.write(chunk);
        },
        close: () => writer.close(),
        abort: () => writer.abort(),
      };
    }
  })();
  return {
    dir: `${dir}/checkpoints`,
    kind,
    fileSystem,
    freeBytes: free,
    async fillUntil(target) {
      filled = 0;
      filled = Math.max(0, (await free()) - target);
    },
    async release() {
      filled = 0;
    },
    unmount: () => rm(dir, { recursive: true, force: true }),
  };
}

async function bytesUnder(dir: string): Promise<number> {
  let total = 0;
  for (const entry of await readdir(dir, { withFileTypes: true, recursive: true })) {
    if (entry.isFile()) total += (await stat(join(entry.parentPath ?? entry.path, entry.name)).catch(() => ({ size: 0 }))).size;
  }
  return total;
}
