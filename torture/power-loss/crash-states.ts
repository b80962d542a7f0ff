/**
 * The states a power cut could leave, built from a trace's file operations in the spirit of ALICE
 * and LazyFS: an operation is durable once a later fsync covers it (a file's data by an fsync of
 * that file, a directory entry by an fsync of its directory); anything not durable at the cut may
 * be lost, in any combination, in any order. At each cut point the states tried are: everything
 * kept (what a process crash leaves), only the durable part kept, entries kept but unsynced data
 * lost or torn in half, the durable part plus any one undurable operation, and everything but any
 * one undurable operation. States that look alike are tried once.
 */
import { createHash } from "node:crypto";
import { ROOT_INODE, type FileOperation } from "./file-operations.js";

/** What a directory looks like: each path (relative, "/"-joined) and its content, or "dir". */
export type DirectoryState = Map<string, Buffer | "dir">;

export interface CrashState {
  /** The number of operations the cut came after (markers included). */
  cutAfter: number;
  /** How the state was made, to replay it. */
  variant: string;
  tree: DirectoryState;
}

interface ModelInode {
  kind: "file" | "dir";
  entries: Map<string, number>;
  data: Buffer;
}

/** Which inodes and directories each operation touches, for deciding durability. */
function entryDirs(op: FileOperation): number[] {
  switch (op.op) {
    case "create":
    case "link":
    case "unlink":
      return [op.dir];
    case "rename":
      return op.fromDir === op.toDir ? [op.toDir] : [op.fromDir, op.toDir];
    default:
      return [];
  }
}

/** Whether operation `i` of `ops` is made durable by an fsync before `cut`. */
export function durability(ops: FileOperation[], cut: number): boolean[] {
  const durable = new Array<boolean>(cut).fill(false);
  const syncedLater = new Set<number>();
  for (let i = cut - 1; i >= 0; i--) {
    const op = ops[i]!;
    if (op.op === "fsync") {
      syncedLater.add(op.ino);
      durable[i] = true;
    } else if (op.op === "mark") {
      durable[i] = true;
    } else if (op.op === "write" || op.op === "truncate") {
      durable[i] = syncedLater.has(op.ino);
    } else {
      // A rename across directories is durable when either side is synced (a journal commits it whole).
      durable[i] = entryDirs(op).some((dir) => syncedLater.has(dir));
    }
  }
  return durable;
}

/** Applies the chosen operations to an empty root; `tear` halves the chosen undurable writes. */
function replay(ops: FileOperation[], cut: number, keep: (i: number) => boolean, tear?: (i: number) => boolean): DirectoryState {
  const inodes = new Map<number, ModelInode>([[ROOT_INODE, { kind: "dir", entries: new Map(), data: Buffer.alloc(0) }]]);
  const inode = (ino: number, kind: "file" | "dir" = "file"): ModelInode => {
    let found = inodes.get(ino);
    if (found === undefined) {
      found = { kind, entries: new Map(), data: Buffer.alloc(0) };
      inodes.set(ino, found);
    }
    return found;
  };
  for (let i = 0; i < cut; i++) {
    if (!keep(i)) continue;
    const op = ops[i]!;
    switch (op.op) {
      case "create":
        inode(op.ino, op.kind);
        inode(op.dir, "dir").entries.set(op.name, op.ino);
        break;
      case "link":
        inode(op.dir, "dir").entries.set(op.name, op.ino);
        break;
      case "unlink": {
        const dir = inode(op.dir, "dir");
        if (dir.entries.get(op.name) === op.ino) dir.entries.delete(op.name);
        break;
      }
      case "rename": {
        const from = inode(op.fromDir, "dir");
        if (from.entries.get(op.fromName) === op.ino) from.entries.delete(op.fromName);
        inode(op.toDir, "dir").entries.set(op.toName, op.ino);
        break;
      }
      case "write": {
        const file = inode(op.ino);
        const bytes = tear?.(i) === true ? op.bytes.subarray(0, op.bytes.length >> 1) : op.bytes;
        const end = op.offset + bytes.length;
        if (file.data.length < end) file.data = Buffer.concat([file.data, Buffer.alloc(end - file.data.length)]);
        bytes.copy(file.data, op.offset);
        break;
      }
      case "truncate": {
        const file = inode(op.ino);
        file.data = op.size <= file.data.length ? file.data.subarray(0, op.size) : Buffer.concat([file.data, Buffer.alloc(op.size - file.data.length)]);
        break;
      }
      default:
        break;
    }
  }
  const tree: DirectoryState = new Map();
  const walk = (ino: number, prefix: string, depth: number): void => {
    if (depth > 32) return; // a directory renamed into itself cannot happen; guard the walk anyway
    for (const [name, child] of [...inode(ino, "dir").entries].sort(([a], [b]) => (a < b ? -1 : 1))) {
      const path = prefix === "" ? name : `${prefix}/${name}`;
      const node = inodes.get(child)!;
      if (node.kind === "dir") {
        tree.set(path, "dir");
        walk(child, path, depth + 1);
      } else {
        tree.set(path, Buffer.from(node.data));
      }
    }
  };
  walk(ROOT_INODE, "", 0);
  return tree;
}

export function fingerprint(tree: DirectoryState): string {
  const hash = createHash("sha1");
  for (const [path, content] of tree) {
    hash.update(path).update("\0");
    hash.update(content === "dir" ? "dir" : createHash("sha1").update(content).digest("hex")).update("\0");
  }
  return hash.digest("hex");
}

/** Every distinct crash state of the trace (the first cut that produced each). */
export function crashStates(ops: FileOperation[]): CrashState[] {
  const seen = new Set<string>();
  const states: CrashState[] = [];
  const add = (cutAfter: number, variant: string, tree: DirectoryState): void => {
    const key = fingerprint(tree);
    if (seen.has(key)) return;
    seen.add(key);
    states.push({ cutAfter, variant, tree });
  };
  for (let cut = 0; cut <= ops.length; cut++) {
    const durable = durability(ops, cut);
    const undurable = durable.flatMap((d, i) => (d ? [] : [i]));
    const isData = (i: number): boolean => ops[i]!.op === "write" || ops[i]!.op === "truncate";
    add(cut, "all kept", replay(ops, cut, () => true));
    if (undurable.length === 0) continue;
    add(cut, "only durable kept", replay(ops, cut, (i) => durable[i]!));
    add(cut, "entries kept, unsynced data lost", replay(ops, cut, (i) => durable[i]! || !isData(i)));
    add(cut, "entries kept, unsynced data torn", replay(ops, cut, () => true, (i) => !durable[i]!));
    for (const extra of undurable) add(cut, `durable plus op ${extra}`, replay(ops, cut, (i) => durable[i]! || i === extra));
    for (const lost of undurable) add(cut, `all but op ${lost}`, replay(ops, cut, (i) => i !== lost));
  }
  return states;
}

/** A line describing an operation, for failure reports. */
export function describeOperation(op: FileOperation): string {
  switch (op.op) {
    case "write":
      return `write ino ${op.ino} @${op.offset} ${op.bytes.length} B`;
    case "rename":
      return `rename ${op.fromName} -> ${op.toName}`;
    case "create":
    case "link":
    case "unlink":
      return `${op.op} ${op.name}`;
    case "mark":
      return `mark ${op.text}`;
    default:
      return `${op.op} ino ${op.ino}`;
  }
}
