import type { StateValue } from "../values/py-values.js";
import type { ObjectKeys, StorageTotals } from "../values/state-check.js";

/** The size and CRC-32 of a file as written; the checkpoint manifest records them. */
export interface FileDigest {
  size: number;
  /** CRC-32 (IEEE, as in zip and gzip) of the whole file. */
  crc32: number;
}

export interface TensorLoadOptions {
  /**
   * The file's size and CRC-32 as recorded when it was written (a checkpoint's manifest): checked
   * while the file is read, and a mismatch is an error. Loaders that can do this say so with
   * `verifiesDigest`; for others the caller checks the file itself.
   */
  expectedDigest?: FileDigest;
  /**
   * Existing tensors to load into, in place: a file tensor at the same path (keys and indices
   * from the root) as a contiguous tensor of the same dtype and shape here is read straight into
   * it, and that tensor is returned in its place. Others are loaded as usual.
   */
  into?: StateValue;
  /** Called as bytes are read, with bytes done and bytes in all. */
  onProgress?: (bytesDone: number, bytesTotal: number) => void;
}

/** Reads a state from a tensor file (fairseq2's TensorLoader). */
export interface TensorLoader {
  /** True when `load` checks `expectedDigest` itself. */
  readonly verifiesDigest?: boolean;
  load(path: string, options?: TensorLoadOptions): Promise<StateValue>;
}

/**
 * Writes a state to a tensor file; the file appears whole or not at all (fairseq2's
 * TensorDumper). Returning the file's digest spares the manager reading the file back.
 */
export interface TensorDumpOptions {
  /** Called as bytes are written, with bytes done and (about) bytes in all. */
  onProgress?: (bytesDone: number, bytesTotal: number) => void;
  /**
   * The caller has checked `state` with `checkStateValue` (or `findUnsaveable`) and not changed it
   * since: a dumper may skip its own check, a walk over the whole state (the manager checks each
   * state before its save and would otherwise pay for the walk twice per tensor).
   */
  stateChecked?: boolean;
  /**
   * With `stateChecked`: the keys of the state's large plain objects as that check listed them
   * (the manager's `inspectState`), for the dumper to reuse instead of listing them again.
   */
  checkedKeys?: ObjectKeys;
  /**
   * With `stateChecked`: how many storages `state` holds and their bytes, as that check counted
   * them (about is enough: a dumper chooses its file's layout and buffers by them).
   */
  checkedTotals?: StorageTotals;
}

export interface TensorDumper {
  dump(state: StateValue, path: string, options?: TensorDumpOptions): Promise<FileDigest | void>;
}
