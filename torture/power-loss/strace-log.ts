/**
 * Reads the output of `strace -f -y -xx` into system calls: name, decoded arguments, result. With
 * -xx every byte of a string or path is `\xNN`, so quotes, commas and `<>` never occur inside one.
 */

/** One decoded argument: a string (bytes), an fd with the path strace showed for it, or raw text. */
export type SyscallArg =
  | { kind: "string"; bytes: Buffer }
  | { kind: "fd"; fd: number | "AT_FDCWD"; path: string }
  | { kind: "iovec"; bytes: Buffer }
  | { kind: "raw"; text: string };

export interface Syscall {
  name: string;
  args: SyscallArg[];
  /** The return value; an fd's path when strace showed one. */
  result: number;
  resultPath: string | undefined;
}

/** The strace options the parser expects; the syscall list is what changes a file system's state. */
export const TRACED_SYSCALLS = [
  "openat", "open", "creat", "close", "write", "pwrite64", "writev", "pwritev", "pwritev2",
  "fsync", "fdatasync", "sync_file_range", "rename", "renameat", "renameat2", "mkdir", "mkdirat",
  "unlink", "unlinkat", "rmdir", "link", "linkat", "symlink", "symlinkat", "ftruncate", "truncate",
  "copy_file_range", "sendfile", "fallocate",
];

export function straceArgs(traceFile: string): string[] {
  return ["-f", "-qq", "--seccomp-bpf", "-y", "-xx", "-s", String(1 << 24), "-o", traceFile, "-e", `trace=${TRACED_SYSCALLS.join(",")}`];
}

/** Parses a whole trace, joining calls that strace split across threads (`<unfinished ...>`). */
export function parseStrace(text: string): Syscall[] {
  const calls: Syscall[] = [];
  const unfinished = new Map<string, string>();
  for (const line of text.split("\n")) {
    const match = /^(\d+) +(.*)$/.exec(line);
    if (match === null) continue;
    const [, pid, rest] = match as unknown as [string, string, string];
    if (rest.startsWith("+++") || rest.startsWith("---")) continue; // exits and signals
    if (rest.endsWith("<unfinished ...>")) {
      unfinished.set(pid, rest.slice(0, -"<unfinished ...>".length).trimEnd());
      continue;
    }
    const resumed = /^<\.\.\. (\w+) resumed>(.*)$/.exec(rest);
    let full = rest;
    if (resumed !== null) {
      const start = unfinished.get(pid);
      if (start === undefined) throw new Error(`strace: ${resumed[1]} resumed without its start: ${line.slice(0, 200)}`);
      unfinished.delete(pid);
      full = start + resumed[2]!;
    }
    calls.push(parseCall(full));
  }
  return calls;
}

function parseCall(text: string): Syscall {
  const open = text.indexOf("(");
  const name = text.slice(0, open);
  const equals = text.lastIndexOf(" = ");
  if (open < 0 || equals < 0) throw new Error(`strace: cannot read ${text.slice(0, 200)}`);
  const argsText = text.slice(open + 1, text.lastIndexOf(")", equals)).trim();
  const resultText = text.slice(equals + 3).trim();
  const resultMatch = /^(-?\d+)(?:<([^>]*)>)?/.exec(resultText);
  if (resultMatch === null) throw new Error(`strace: cannot read the result of ${text.slice(0, 200)}`);
  return {
    name,
    args: splitTopLevel(argsText).map(parseArg),
    result: Number(resultMatch[1]),
    resultPath: resultMatch[2] === undefined ? undefined : decodeHex(resultMatch[2]).toString("utf8"),
  };
}

/** Splits on commas outside brackets, braces and `<...>`. */
function splitTopLevel(text: string): string[] {
  const parts: string[] = [];
  let depth = 0;
  let start = 0;
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (c === "[" || c === "{" || c === "<") depth++;
    else if (c === "]" || c === "}" || c === ">") depth--;
    else if (c === "," && depth === 0) {
      parts.push(text.slice(start, i).trim());
      start = i + 1;
    }
  }
  if (text.trim() !== "") parts.push(text.slice(start).trim());
  return parts;
}

function parseArg(text: string): SyscallArg {
  if (text.startsWith('"')) return { kind: "string", bytes: decodeHex(text.slice(1, text.lastIndexOf('"'))) };
  const fd = /^(\d+|AT_FDCWD)<(.*)>$/.exec(text);
  if (fd !== null) return { kind: "fd", fd: fd[1] === "AT_FDCWD" ? "AT_FDCWD" : Number(fd[1]), path: decodeHex(fd[2]!).toString("utf8") };
  if (text.startsWith("[")) {
    // writev's iovec array: the bases in order, each whole (-s is larger than any write here).
    const bases = [...text.matchAll(/iov_base="([^"]*)"/g)].map((m) => decodeHex(m[1]!));
    return { kind: "iovec", bytes: Buffer.concat(bases) };
  }
  return { kind: "raw", text };
}

function decodeHex(text: string): Buffer {
  if (text.endsWith('"...')) throw new Error("strace: a string was cut short; raise -s");
  const bytes: number[] = [];
  for (let i = 0; i < text.length; ) {
    if (text[i] === "\\" && text[i + 1] === "x") {
      bytes.push(Number.parseInt(text.slice(i + 2, i + 4), 16));
      i += 4;
    } else {
      bytes.push(text.charCodeAt(i)); // never with -xx, kept for safety
      i += 1;
    }
  }
  return Buffer.from(bytes);
}
