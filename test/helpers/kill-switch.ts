/**
 * The kill switch of the crash tests and of `npm run torture`: patches node:fs so each call that
 * changes the disk under a directory is a numbered point, prints `point <label>` before it, and
 * SIGKILLs the process just before the k-th. See crash-child.ts for the protocol.
 *
 * A recursive removal is not one point: the tree is removed entry by entry, deepest first, each
 * removal a point, so a kill can land halfway through deleting a directory (as it can for real:
 * node's own recursive rm unlinks one entry at a time too).
 */
import { constants, lstatSync, promises as fsp, readdirSync, writeSync } from "node:fs";
import type { FileHandle } from "node:fs/promises";
import { join, relative, resolve } from "node:path";

export function say(line: string): void {
  writeSync(1, `${line}\n`); // synchronous: the line is out before the kill
}

/** A point's name, the same in every run: a temporary file's random part is left out. */
export function label(root: string, path: unknown): string {
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

export async function installKillSwitch(root: string, killAt: number | undefined): Promise<void> {
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
  // Entries inside the tree are labelled as such; the tree's top keeps the plain `remove <path>`.
  const removeTree = async (path: string, options: Parameters<typeof rm>[1], inside: boolean): Promise<void> => {
    let isDirectory = false;
    try {
      isDirectory = lstatSync(path).isDirectory();
    } catch {
      return rm(path, options); // not there: nothing changes, no point
    }
    if (isDirectory) for (const entry of readdirSync(path).sort()) await removeTree(join(path, entry), options, true);
    point(`remove ${label(root, path)}${inside ? " (inside a recursive delete)" : ""}`);
    return rm(path, options);
  };
  fs.rm = async (path, options) => {
    if (!under(path) || !exists(path)) return rm(path, options);
    if (options?.recursive === true) return removeTree(String(path), options, false);
    point(`remove ${label(root, path)}`);
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

