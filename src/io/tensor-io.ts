import type { StateValue } from "../values/py-values.js";

/** The size and CRC-32 of a file as written; the checkpoint manifest records them. */
export interface FileDigest {
  size: number;
  /** CRC-32 (IEEE, as in zip and gzip) of the whole file. */
  crc32: number;
}

/** Reads a state from a tensor file (fairseq2's TensorLoader). */
export interface TensorLoader {
  load(path: string): Promise<StateValue>;
}

/**
 * Writes a state to a tensor file; the file appears whole or not at all (fairseq2's
 * TensorDumper). Returning the file's digest spares the manager reading the file back.
 */
export interface TensorDumper {
  dump(state: StateValue, path: string): Promise<FileDigest | void>;
}
