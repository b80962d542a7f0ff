/**
 * Turns the system calls of a trace into operations on inodes under one root directory, by
 * replaying them on a model of that directory: what a power cut can keep or lose is decided per
 * operation (crash-states.ts), and inodes keep a renamed file or directory the same thing.
 */
import * as nodePath from "node:path";
import type { Syscall, SyscallArg } from "./strace-log.js";

export type FileOperation =
  | { op: "create"; dir: number; name: string; ino: number; kind: "file" | "dir" }
  | { op: "link"; dir: number; name: string; ino: number }
  | { op: "unlink"; dir: number; name: string; ino: number }
  | { op: "rename"; fromDir: number; fromName: string; toDir: number; toName: string; ino: number }
  | { op: "write"; ino: number; offset: number; bytes: Buffer }
  | { op: "truncate"; ino: number; size: number }
  | { op: "fsync"; ino: number }
  /** A marker the workload left (an open of `.mark <text>` that failed). */
  | { op: "mark"; text: string };

export const ROOT_INODE = 0;

const O_CREAT = "O_CREAT";
const O_TRUNC = "O_TRUNC";

interface LiveInode {
  kind: "file" | "dir";
  entries: Map<string, number>;
  size: number;
}

/** Replays `calls` on an empty `root` and returns the operations under it, in order. */
export function fileOperations(calls: Syscall[], root: string): FileOperation[] {
  const inodes = new Map<number, LiveInode>([[ROOT_INODE, { kind: "dir", entries: new Map(), size: 0 }]]);
  let nextInode = 1;
  const fds = new Map<number, { ino: number; position: number }>();
  const ops: FileOperation[] = [];

  const relative = (path: string): string[] | undefined => {
    const rel = nodePath.relative(root, path);
    if (rel === "") return [];
    if (rel.startsWith("..") || nodePath.isAbsolute(rel)) return undefined;
    return rel.split(nodePath.sep);
  };
  const lookup = (parts: string[]): number | undefined => {
    let ino: number | undefined = ROOT_INODE;
    for (const part of parts) {
      ino = ino === undefined ? undefined : inodes.get(ino)?.entries.get(part);
      if (ino === undefined) return undefined;
    }
    return ino;
  };
  /** The parent directory's inode and the name, for a path under the root. */
  const parentOf = (path: string): { dir: number; name: string } | undefined => {
    const parts = relative(path);
    if (parts === undefined || parts.length === 0) return undefined;
    const dir = lookup(parts.slice(0, -1));
    if (dir === undefined) throw new Error(`trace: ${path} is in a directory the model does not have`);
    return { dir, name: parts[parts.length - 1]! };
  };
  const pathArg = (arg: SyscallArg | undefined, dirArg?: SyscallArg): string => {
    if (arg?.kind !== "string") throw new Error("trace: expected a path argument");
    const path = arg.bytes.toString("utf8");
    if (nodePath.isAbsolute(path)) return path;
    if (dirArg?.kind !== "fd") throw new Error(`trace: relative path ${path} without a directory`);
    return nodePath.join(dirArg.path, path);
  };
  const fdArg = (arg: SyscallArg | undefined): { ino: number; position: number } | undefined => {
    if (arg?.kind !== "fd" || arg.fd === "AT_FDCWD") return undefined;
    return fds.get(arg.fd);
  };
  const unsupported = (call: Syscall, path: string): void => {
    if (relative(path) !== undefined) throw new Error(`trace: ${call.name} under ${root} is not modelled`);
  };
  const removeEntry = (path: string): void => {
    const at = parentOf(path);
    if (at === undefined) return;
    const ino = inodes.get(at.dir)!.entries.get(at.name);
    if (ino === undefined) throw new Error(`trace: ${path} removed but not in the model`);
    inodes.get(at.dir)!.entries.delete(at.name);
    ops.push({ op: "unlink", dir: at.dir, name: at.name, ino });
  };
  const open = (call: Syscall, path: string, flags: string): void => {
    const parts = relative(path);
    if (call.result < 0) {
      const base = nodePath.basename(path);
      if (parts !== undefined && base.startsWith(".mark ")) ops.push({ op: "mark", text: base.slice(".mark ".length) });
      return;
    }
    if (parts === undefined) return;
    let ino = lookup(parts);
    if (ino === undefined) {
      if (!flags.includes(O_CREAT)) throw new Error(`trace: ${path} opened but not in the model`);
      const at = parentOf(path)!;
      ino = nextInode++;
      inodes.set(ino, { kind: "file", entries: new Map(), size: 0 });
      inodes.get(at.dir)!.entries.set(at.name, ino);
      ops.push({ op: "create", dir: at.dir, name: at.name, ino, kind: "file" });
    } else if (flags.includes(O_TRUNC) && inodes.get(ino)!.kind === "file") {
      inodes.get(ino)!.size = 0;
      ops.push({ op: "truncate", ino, size: 0 });
    }
    fds.set(call.result, { ino, position: 0 });
  };
  const write = (handle: { ino: number; position: number } | undefined, bytes: Buffer, written: number, offset?: number): void => {
    if (handle === undefined || written <= 0) return;
    const at = offset ?? handle.position;
    ops.push({ op: "write", ino: handle.ino, offset: at, bytes: bytes.subarray(0, written) });
    if (offset === undefined) handle.position += written;
    const inode = inodes.get(handle.ino)!;
    inode.size = Math.max(inode.size, at + written);
  };
  const bytesOf = (arg: SyscallArg | undefined): Buffer => (arg?.kind === "string" || arg?.kind === "iovec" ? arg.bytes : Buffer.alloc(0));
  const rawNumber = (arg: SyscallArg | undefined): number => Number(arg?.kind === "raw" ? arg.text : Number.NaN);

  for (const call of calls) {
    const a = call.args;
    switch (call.name) {
      case "openat":
        open(call, pathArg(a[1], a[0]), a[2]?.kind === "raw" ? a[2].text : "");
        break;
      case "open":
        open(call, pathArg(a[0]), a[1]?.kind === "raw" ? a[1].text : "");
        break;
      case "creat":
        open(call, pathArg(a[0]), `${O_CREAT}|${O_TRUNC}`);
        break;
      case "close":
        if (a[0]?.kind === "fd" && a[0].fd !== "AT_FDCWD") fds.delete(a[0].fd);
        break;
      case "write":
      case "writev":
        write(fdArg(a[0]), bytesOf(a[1]), call.result);
        break;
      case "pwrite64":
        write(fdArg(a[0]), bytesOf(a[1]), call.result, rawNumber(a[3]));
        break;
      case "pwritev":
      case "pwritev2":
        write(fdArg(a[0]), bytesOf(a[1]), call.result, rawNumber(a[3]));
        break;
      case "fsync":
      case "fdatasync": {
        const handle = fdArg(a[0]);
        if (handle !== undefined && call.result === 0) ops.push({ op: "fsync", ino: handle.ino });
        break;
      }
      case "ftruncate": {
        const handle = fdArg(a[0]);
        if (handle !== undefined && call.result === 0) ops.push({ op: "truncate", ino: handle.ino, size: rawNumber(a[1]) });
        break;
      }
      case "mkdir":
      case "mkdirat": {
        if (call.result !== 0) break;
        const path = call.name === "mkdir" ? pathArg(a[0]) : pathArg(a[1], a[0]);
        const at = parentOf(path);
        if (at === undefined) break;
        const ino = nextInode++;
        inodes.set(ino, { kind: "dir", entries: new Map(), size: 0 });
        inodes.get(at.dir)!.entries.set(at.name, ino);
        ops.push({ op: "create", dir: at.dir, name: at.name, ino, kind: "dir" });
        break;
      }
      case "unlink":
      case "rmdir":
        if (call.result === 0) removeEntry(pathArg(a[0]));
        break;
      case "unlinkat":
        if (call.result === 0) removeEntry(pathArg(a[1], a[0]));
        break;
      case "rename":
      case "renameat":
      case "renameat2": {
        if (call.result !== 0) break;
        const [from, to] = call.name === "rename" ? [pathArg(a[0]), pathArg(a[1])] : [pathArg(a[1], a[0]), pathArg(a[3], a[2])];
        const src = parentOf(from);
        const dst = parentOf(to);
        if (src === undefined || dst === undefined) {
          if (src !== dst) throw new Error(`trace: rename across the edge of ${root}: ${from} -> ${to}`);
          break;
        }
        const ino = inodes.get(src.dir)!.entries.get(src.name);
        if (ino === undefined) throw new Error(`trace: ${from} renamed but not in the model`);
        inodes.get(src.dir)!.entries.delete(src.name);
        inodes.get(dst.dir)!.entries.set(dst.name, ino);
        ops.push({ op: "rename", fromDir: src.dir, fromName: src.name, toDir: dst.dir, toName: dst.name, ino });
        break;
      }
      case "link":
      case "linkat": {
        if (call.result !== 0) break;
        const [from, to] = call.name === "link" ? [pathArg(a[0]), pathArg(a[1])] : [pathArg(a[1], a[0]), pathArg(a[3], a[2])];
        const src = relative(from);
        const dst = parentOf(to);
        if (src === undefined || dst === undefined) break;
        const ino = lookup(src);
        if (ino === undefined) throw new Error(`trace: ${from} linked but not in the model`);
        inodes.get(dst.dir)!.entries.set(dst.name, ino);
        ops.push({ op: "link", dir: dst.dir, name: dst.name, ino });
        break;
      }
      case "symlink":
      case "symlinkat":
      case "truncate":
      case "copy_file_range":
      case "sendfile":
      case "fallocate":
      case "sync_file_range":
        if (call.result >= 0) unsupported(call, a.find((arg) => arg.kind === "fd")?.kind === "fd" ? (a.find((arg) => arg.kind === "fd") as { path: string }).path : pathArg(a.find((arg) => arg.kind === "string")));
        break;
      default:
        break;
    }
  }
  return ops;
}
