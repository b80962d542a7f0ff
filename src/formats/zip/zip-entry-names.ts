import { FormatError } from "../../errors.js";
import { keepShape } from "../../keep-shapes.js";

/**
 * The names of a zip's entries as it is written: each claimed once, checked to be safe. Most
 * entries of a PyTorch archive are numbered (`archive/data/0`, `1`, …): those are never built as
 * strings, checked or kept in a set, only counted, and written as the prefix's bytes and digits
 * (see docs/design.md, "Per-tensor cost"). An entry's name is a string, or the number of a
 * numbered entry.
 */
export class EntryNames {
  private readonly names = new Set<string>();
  private prefix: string | undefined;
  private prefixBytes: Uint8Array = new Uint8Array(0);
  private count = 0;
  /** Names in `names` that start with the prefix (usually none, so numbered names need no lookup). */
  private namesUnderPrefix = 0;

  /** Claims a name given as a string: safe, and not written before (numbered entries included). */
  claim(name: string): void {
    checkEntryName(name);
    if (this.names.has(name) || this.isNumberedName(name)) throw new FormatError("ZIP_NAME", `zip entry "${name}" written twice`);
    this.names.add(name);
    if (this.prefix !== undefined && name.startsWith(this.prefix)) this.namesUnderPrefix++;
  }

  /** Claims `prefix` + `index`: one prefix per archive, indices in order from 0. */
  claimNumbered(prefix: string, index: number): void {
    if (prefix !== this.prefix) {
      if (this.prefix !== undefined) {
        throw new FormatError("ZIP_NAME", `a zip writer numbers entries under one prefix ("${this.prefix}"), not also under "${prefix}"`);
      }
      // A digit is never a "." or ".." segment: the prefix is safe if its first name is.
      checkEntryName(`${prefix}0`);
      this.prefix = prefix;
      this.prefixBytes = Buffer.from(prefix, "utf8");
      for (const name of this.names) if (name.startsWith(prefix)) this.namesUnderPrefix++;
    }
    if (index !== this.count) {
      throw new FormatError("ZIP_NAME", `numbered zip entries come in order: expected "${prefix}${this.count}", got "${prefix}${index}"`);
    }
    if (this.namesUnderPrefix > 0 && this.names.has(prefix + index)) throw new FormatError("ZIP_NAME", `zip entry "${prefix}${index}" written twice`);
    this.count++;
  }

  /** Whether `name` is one of the numbered entries written so far. */
  private isNumberedName(name: string): boolean {
    const prefix = this.prefix;
    if (prefix === undefined || !name.startsWith(prefix)) return false;
    const digits = name.slice(prefix.length);
    return /^(0|[1-9][0-9]{0,15})$/.test(digits) && Number(digits) < this.count;
  }

  /** The UTF-8 length of an entry's name. */
  byteLength(name: string | number): number {
    return typeof name === "number" ? this.prefixBytes.length + decimalLength(name) : Buffer.byteLength(name, "utf8");
  }

  /** Writes an entry's name (`nameLength` bytes, from byteLength) at `at`. */
  write(b: Buffer, at: number, name: string | number, nameLength: number): void {
    if (typeof name === "string") {
      b.write(name, at, nameLength, "utf8");
      return;
    }
    // Byte by byte: a native copy call costs more than these dozen bytes.
    const prefix = this.prefixBytes;
    const n = prefix.length;
    for (let i = 0; i < n; i++) b[at + i] = prefix[i]!;
    let rest = name;
    for (let i = at + nameLength - 1; i >= at + n; i--) {
      b[i] = 48 + (rest % 10);
      rest = Math.floor(rest / 10);
    }
  }

  static {
    keepShape(new EntryNames());
  }
}

/** Digits of a non-negative integer in decimal. */
function decimalLength(n: number): number {
  let digits = 1;
  for (let rest = n; rest >= 10; rest = Math.floor(rest / 10)) digits++;
  return digits;
}

/** Entry names are relative paths without `..`: a reader that extracts them must stay inside. */
export function checkEntryName(name: string): void {
  if (UNSAFE_NAME.test(name)) throw new FormatError("ZIP_NAME", `unsafe zip entry name ${JSON.stringify(name)}`);
}

/** Empty, absolute, with a backslash or NUL, or with a "." or ".." segment. */
const UNSAFE_NAME = /^$|^\/|[\\\0]|(^|\/)\.{1,2}(\/|$)/;
