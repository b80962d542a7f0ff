/**
 * The damage class 4 does to files: a byte flipped, the file cut short or extended, removed, or
 * swapped with another. Each is described well enough to replay.
 */
import { readFile, rename, rm, writeFile } from "node:fs/promises";
import { MemoryReader } from "../../src/formats/byte-io.js";
import { ZipReader } from "../../src/formats/zip/zip-reader.js";
import type { Random } from "./random.js";

export type MutationKind = "byte flip" | "truncation" | "extension" | "deletion" | "swap";
export const MUTATION_KINDS: MutationKind[] = ["byte flip", "truncation", "extension", "deletion", "swap"];

export interface Mutation {
  kind: MutationKind;
  /** What was done, e.g. "flipped byte 1234 of step_2/rank_0.pt with 0x40". */
  what: string;
  /** For a flip: the byte's offset. */
  offset?: number;
}

/** Applies `kind` to `path` (and, for a swap, `other`); returns what was done. */
export async function mutate(random: Random, kind: MutationKind, path: string, shown: string, other?: { path: string; shown: string }): Promise<Mutation> {
  if (kind === "deletion") {
    await rm(path);
    return { kind, what: `removed ${shown}` };
  }
  if (kind === "swap") {
    if (other === undefined) throw new Error("a swap needs two files");
    await rename(path, `${path}.swap`);
    await rename(other.path, path);
    await rename(`${path}.swap`, other.path);
    return { kind, what: `swapped ${shown} and ${other.shown}` };
  }
  const bytes = await readFile(path);
  if (kind === "byte flip") {
    if (bytes.length === 0) return { kind, what: `${shown} is empty: nothing to flip` };
    const offset = random.int(bytes.length);
    const mask = random.between(1, 255);
    bytes[offset]! ^= mask;
    await writeFile(path, bytes);
    return { kind, what: `flipped byte ${offset} of ${shown} (${bytes.length} bytes) with 0x${mask.toString(16)}`, offset };
  }
  if (kind === "truncation") {
    const length = random.int(bytes.length);
    await writeFile(path, bytes.subarray(0, length));
    return { kind, what: `cut ${shown} from ${bytes.length} to ${length} bytes` };
  }
  const extra = new Uint8Array(random.between(1, 200)).map(() => random.int(256));
  if (random.chance(0.3)) extra.fill(0);
  await writeFile(path, Buffer.concat([bytes, extra]));
  return { kind, what: `appended ${extra.length} bytes to ${shown}` };
}

/** Which part of a `.pt` zip a byte is in: a tensor's data, the pickle, another entry, or the zip's own structure. */
export async function zipRegion(bytes: Uint8Array, offset: number): Promise<string> {
  try {
    const zip = await ZipReader.open(new MemoryReader(bytes));
    for (const entry of zip.entries.values()) {
      const start = await zip.dataOffset(entry);
      if (offset >= start && offset < start + entry.size) {
        if (/\/data\/[^/]+$/.test(entry.name)) return "tensor bytes";
        if (entry.name.endsWith("data.pkl")) return "pickle";
        return "other entry";
      }
    }
    return "zip headers and padding";
  } catch {
    return "not a zip";
  }
}
