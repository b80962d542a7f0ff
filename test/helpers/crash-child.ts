/**
 * A checkpoint writer that is killed. Run as
 * `node --import tsx crash-child.ts <checkpointDir> <scenario>` with CRASH_AT=<k> in the
 * environment: it does the scenario's work (crash-scenarios.ts) on the directory and SIGKILLs
 * itself just before the k-th call that changes the disk under it. Without CRASH_AT it finishes.
 *
 * The kill points are the file-system calls themselves, below LocalFileSystem: node:fs is patched
 * so each file creation, write, fsync (of a file or a directory), rename, link, mkdir and removal
 * under the directory is a point. That reaches the windows inside one LocalFileSystem call too
 * (a file written and fsynced but not yet renamed into place, a lock file created but still empty).
 * Calls that would change nothing (removing what is not there) are not points.
 *
 * Protocol on stdout, one line each: `ready` before the work starts, `point <label>` before each
 * point's call, `kill <label>` just before the kill, `done` when the work is over.
 */
import { constants, lstatSync, promises as fsp, writeSync } from "node:fs";
import type { FileHandle } from "node:fs/promises";
import { relative, resolve } from "node:path";
import { FileCheckpointManager } from "../../src/index.js";
import { CRASH_SCENARIOS, type CrashScenarioName } from "./crash-scenarios.js";

function say(line: string): void {
  writeSync(1, `${line}\n`); // synchronous: the line is out before the kill
}

/** A point's name, the same in every run: a temporary file's random part is left out. */
function label(root: string, path: unknown): string {
  return (relative(root, resolve(String(path))) || ".")
    .replace(/\.\d+\.[0-9a-f]{8}\.partial$/, ".partial")
    .replace(/\.stale-[0-9a-f]{8}$/, ".stale")
    .replace(/\.new-[0-9a-f]{16}$/, ".new");
}

function exists(path: unknown): boolean {
  try {
    lstatSync(String(path));
    return true;
  } catch {
    return false;
  }
}

async function installKillSwitch(root: string, killAt: number | undefined): Promise<void> {
  let count = 0;
  const under = (path: unknown): boolean => !relative(root, resolve(String(path))).startsWith("..");
  const point = (name: string): void => {
    count++;
    if (count === killAt) {
      say(`kill ${name}`);
      process.kill(process.pid, "SIGKILL");
    }
    say(`point ${name}`);
  };

  const paths = new WeakMap<FileHandle, { name: string; directory: boolean }>();
  const fs = fsp as { -readonly [K in keyof typeof fsp]: (typeof fsp)[K] };
  const { open, rename, rm, mkdir, link } = fsp;

  fs.open = async (path, flags, mode) => {
    const numeric = typeof flags === "number" ? flags : 0;
    if (under(path) && (numeric & constants.O_CREAT) !== 0) point(`create ${label(root, path)}`);
    const handle = await open(path, flags, mode);
    if (under(path)) paths.set(handle, { name: label(root, path), directory: (numeric & constants.O_DIRECTORY) !== 0 });
    return handle;
  };
  fs.rename = async (from, to) => {
    if (under(from)) point(`rename ${label(root, from)} → ${label(root, to)}`);
    return rename(from, to);
  };
  fs.link = async (from, to) => {
    if (under(from)) point(`link ${label(root, from)} → ${label(root, to)}`);
    return link(from, to);
  };
  fs.rm = async (path, options) => {
    if (under(path) && exists(path)) point(`remove ${label(root, path)}`);
    return rm(path, options);
  };
  fs.mkdir = (async (path: Parameters<typeof mkdir>[0], options: Parameters<typeof mkdir>[1]) => {
    if (under(path) && !exists(path)) point(`mkdir ${label(root, path)}`);
    return mkdir(path, options);
  }) as typeof mkdir;

  // FileHandle is not exported: patch its prototype, found from a handle.
  const probe = await open(process.execPath, "r");
  const prototype = Object.getPrototypeOf(probe) as FileHandle;
  await probe.close();
  const { write, writeFile, sync } = prototype;
  const handleName = (handle: FileHandle): { name: string; directory: boolean } | undefined => paths.get(handle);
  prototype.write = function (this: FileHandle, ...args: unknown[]) {
    const file = handleName(this);
    if (file !== undefined) point(`write ${file.name}`);
    return (write as (...a: unknown[]) => ReturnType<FileHandle["write"]>).apply(this, args);
  } as FileHandle["write"];
  prototype.writeFile = function (this: FileHandle, ...args: Parameters<FileHandle["writeFile"]>) {
    const file = handleName(this);
    if (file !== undefined) point(`write ${file.name}`);
    return writeFile.apply(this, args);
  };
  prototype.sync = function (this: FileHandle) {
    const file = handleName(this);
    if (file !== undefined) point(`fsync ${file.directory ? "directory " : ""}${file.name}`);
    return sync.apply(this);
  };
}

const [dir, scenarioName] = process.argv.slice(2);
if (dir === undefined || scenarioName === undefined || !(scenarioName in CRASH_SCENARIOS)) {
  throw new Error(`usage: crash-child.ts <checkpointDir> <${Object.keys(CRASH_SCENARIOS).join(" | ")}>`);
}
const killAt = process.env.CRASH_AT === undefined ? undefined : Number(process.env.CRASH_AT);
await installKillSwitch(resolve(dir), killAt);
const manager = new FileCheckpointManager({ checkpointDir: dir });
say("ready");
await CRASH_SCENARIOS[scenarioName as CrashScenarioName].run(manager);
await manager.close();
say("done");
