import { FormatError } from "../../errors.js";
import { isLatestVisit, newStorageVisit, type Storage } from "../../tensor/storage.js";
import { ShardedTensor } from "../../tensor/sharded-tensor.js";
import { Tensor } from "../../tensor/tensor.js";
import { shardedRecord } from "./sharded-record.js";
import { PyDType, type StateValue } from "../../values/py-values.js";
import { checkStateForArchive, type ObjectKeys, type StorageTotals, type UnsaveableKind } from "../../values/state-check.js";
import type { ByteSink } from "../byte-io.js";
import { Op } from "../pickle/opcodes.js";
import { Pickler, runToEnd } from "../pickle/pickler.js";
import { ZipWriter, type ZipWriterOptions } from "../zip/zip-writer.js";
import { RebuildWriter, writeEmptyOrderedDict } from "./rebuild-writer.js";

/** How `pickleState` is to treat the state's check. */
export interface PickleCheck {
  /** `state` was checked by the caller (see TensorDumpOptions.stateChecked): no second walk. */
  stateChecked?: boolean;
  /** The keys that check listed (see TensorDumpOptions.checkedKeys). */
  checkedKeys?: ObjectKeys;
  /** The storage totals that check counted (see TensorDumpOptions.checkedTotals). */
  checkedTotals?: StorageTotals;
}

export interface TorchWriteOptions extends ZipWriterOptions, PickleCheck {
  /** The archive's root folder (PyTorch 2.x writes "archive"). */
  root?: string;
  /** Called as bytes reach the sink, with bytes done and (about) bytes in all. */
  onProgress?: (bytesDone: number, bytesTotal: number) => void;
}

const utf8 = new TextEncoder();

/** A state's pickle (`data.pkl`) and the storages it names, keyed by their index. */
export interface PickledState {
  pickle: Uint8Array;
  storages: Storage[];
  /** The storages' bytes in all. */
  storageBytes: number;
}

/** The storages a pickle has met so far, keyed by their index, and their bytes. */
interface MetStorages {
  storages: Storage[];
  bytes: number;
}

const toFormatError = (message: string, kind: UnsaveableKind): Error => new FormatError(kind === "limit" ? "PICKLE_LIMIT" : "PICKLE_UNSUPPORTED", message);

/**
 * Checks `state` unless the caller has (`stateChecked`), refusing, naming the key path, what could
 * not be written or would not load back (a Map key that is an object, undefined, a function…).
 * Returns the keys of its large objects and its storage totals (undefined when the caller checked
 * and counted none).
 */
function checkForArchive(state: StateValue, check: PickleCheck): { objectKeys: ObjectKeys | undefined; totals: StorageTotals | undefined } {
  if (check.stateChecked === true) return { objectKeys: check.checkedKeys, totals: check.checkedTotals };
  return checkStateForArchive(state, "state", toFormatError);
}

/**
 * Pickles `state` as `torch.save` does: tensors as `_rebuild_tensor_v2` calls whose persistent ids
 * name storages "0", "1", … in the order first met. Refuses what could not be written or would not
 * load back (see checkForArchive), unless the caller has checked the state. `rawRebuilds`: false
 * writes every rebuild call op by op (see RebuildWriter; the tests compare both).
 */
export function pickleState(state: StateValue, check: PickleCheck = {}, rawRebuilds = true): PickledState {
  const { objectKeys } = checkForArchive(state, check);
  const met: MetStorages = { storages: [], bytes: 0 };
  const pickle = runToEnd(pickleInSteps(state, objectKeys, Infinity, met, rawRebuilds));
  return { pickle, storages: met.storages, storageBytes: met.bytes };
}

/**
 * Pickles `state` in steps of about `stepItems` container items (see Pickler.dumpInSteps),
 * appending each storage to `met` as it is first met (its key is its index there), and returns
 * the pickle. Between steps the caller may await (the archive writer sends the storages met so
 * far to the disk); another walk may then have marked the same storages or tensors, so after each
 * step they are marked again under a new stamp if one began.
 */
function* pickleInSteps(state: StateValue, listedKeys: ObjectKeys | undefined, stepItems: number, met: MetStorages, rawRebuilds = true, storageCount = 0): Generator<void, Uint8Array> {
  const { storages } = met;
  let stamp = newStorageVisit();
  const rebuilds = new RebuildWriter(rawRebuilds);
  // The tensors written so far and their memo entries: kept only for marking them again.
  const tensors: Tensor[] = [];
  const tensorMemos: number[] = [];

  // Tensors are written first and memoized by a field on each (a tensor met again is a memo get).
  const encodeTensor = (pickler: Pickler, value: object): boolean => {
    if (!(value instanceof Tensor)) return false;
    const memoIndex = value.memoInArchive(stamp);
    if (memoIndex >= 0) {
      pickler.getMemoEntry(memoIndex);
      return true;
    }
    // Each storage once, however many tensors view it; a field, not a Map lookup, per tensor.
    const { storage } = value;
    let key = storage.indexInVisit(stamp);
    if (key < 0) {
      key = storages.length;
      storage.markVisited(stamp, key);
      storages.push(storage);
      met.bytes += storage.bytes.byteLength;
    }
    writeTensor(pickler, value, key, rebuilds);
    const memo = pickler.putMemo();
    value.markArchived(stamp, memo);
    if (stepItems !== Infinity) {
      tensors.push(value);
      tensorMemos.push(memo);
    }
    return true;
  };
  const encodeOther = (pickler: Pickler, value: object): boolean => {
    if (value instanceof ShardedTensor) {
      pickler.value(shardedRecord(value));
      return true;
    }
    if (value instanceof PyDType) {
      pickler.global("torch", value.name);
      return true;
    }
    if (ArrayBuffer.isView(value)) {
      throw new FormatError("PICKLE_UNSUPPORTED", `a ${value.constructor.name} cannot be saved as it is; wrap it with Tensor.from(array, { shape })`);
    }
    return false;
  };
  const steps = Pickler.dumpInSteps(state, stepItems, encodeOther, encodeTensor, listedKeys, storageCount * PICKLE_BYTES_PER_STORAGE);
  for (;;) {
    const step = steps.next();
    if (step.done === true) return step.value;
    yield;
    if (isLatestVisit(stamp)) continue;
    stamp = newStorageVisit();
    for (let key = 0; key < storages.length; key++) storages[key]!.markVisited(stamp, key);
    for (let i = 0; i < tensors.length; i++) tensors[i]!.markArchived(stamp, tensorMemos[i]!);
  }
}

/** The next step of a pickle made in steps: its bytes once done, else undefined. */
function nextStep(steps: Generator<void, Uint8Array>): Uint8Array | undefined {
  const step = steps.next();
  return step.done === true ? step.value : undefined;
}

/**
 * Whether the storages go before the pickle: for many small tensors (counted by the state's
 * check). `torch.save` writes the pickle first, and a save that does so makes the whole pickle
 * before its first byte goes out: for 20,000 small tensors the disk idles for about a third of a
 * process's first save. Readers (PyTorch's among them) find entries by the central directory, so
 * the order is free: here the pickle is made in steps, and each storage it meets is sent to the
 * disk while the next steps are made. Large tensors keep `torch.save`'s order: their pickle is
 * short, and written before the pickle their direct writes were slower, for a reason not found
 * (docs/design.md, "The pickle last, made in steps").
 */
function picklesLast(totals: StorageTotals | undefined): boolean {
  return totals !== undefined && totals.count >= PICKLE_LAST_MIN_STORAGES && totals.bytes <= totals.count * PICKLE_LAST_MAX_MEAN_BYTES;
}
const PICKLE_LAST_MIN_STORAGES = 1024;
const PICKLE_LAST_MAX_MEAN_BYTES = 64 << 10;
/**
 * About the most a tensor takes in a pickle with its key: 67 bytes each for 20,000 tensors named
 * `params.<i>`, more for long names and many dimensions. The pickle's buffer starts at this per
 * storage (PickleOutput.expect); a high estimate costs no memory that is not written.
 */
const PICKLE_BYTES_PER_STORAGE = 160;
/** Container items pickled per step while storages are written (see picklesLast). */
const PICKLE_STEP_ITEMS = 32;

/**
 * Writes `state` as PyTorch's zip archive: the pickle, the byte order, one entry per storage (each
 * storage once, however many tensors view it), the version; for many small tensors the storages
 * first and the pickle after them (see picklesLast).
 */
export async function writeTorchArchive(state: StateValue, sink: ByteSink, options: TorchWriteOptions = {}): Promise<{ size: number; crc32: number }> {
  const root = options.root ?? "archive";
  const { objectKeys, totals } = checkForArchive(state, options);
  const last = picklesLast(totals);
  const met: MetStorages = { storages: [], bytes: 0 };
  const steps = pickleInSteps(state, objectKeys, last ? PICKLE_STEP_ITEMS : Infinity, met, true, totals?.count);
  let pickle = last ? undefined : runToEnd(steps);

  const { onProgress } = options;
  let done = 0;
  // The file's size but for its zip headers (and for a pickle not made yet): the sink may size
  // its buffers by it.
  let total = pickle === undefined ? totals!.bytes : met.bytes + pickle.byteLength;
  sink.expectBytes?.(total);
  const counted: ByteSink =
    onProgress === undefined
      ? sink
      : {
          write: async (chunk) => {
            await sink.write(chunk);
            done += chunk.byteLength;
            onProgress(Math.min(done, total), total); // headers make the file a little longer than `total`
          },
        };
  const zip = new ZipWriter(counted, options);
  const pickleEntry = `${root}/data.pkl`;
  const byteorderEntry = `${root}/byteorder`;
  if (pickle !== undefined) {
    await zip.add(pickleEntry, pickle);
    await zip.add(byteorderEntry, utf8.encode("little"));
  }
  // `addNumbered` returns a promise only when the caller must wait: no promise per small storage,
  // and no name string either (see docs/design.md, "Per-tensor cost"). While the pickle is made
  // in steps, a step runs each time the writer must wait, and whenever every storage met is sent.
  const dataPrefix = `${root}/data/`;
  const { storages } = met;
  let key = 0;
  for (;;) {
    while (key < storages.length) {
      const waiting = zip.addNumbered(dataPrefix, key, storages[key]!.bytes);
      key++;
      if (waiting === undefined) continue;
      pickle ??= nextStep(steps);
      await waiting;
    }
    if (pickle !== undefined) break;
    pickle = nextStep(steps);
  }
  if (last) {
    total = met.bytes + pickle.byteLength;
    await zip.add(pickleEntry, pickle);
    await zip.add(byteorderEntry, utf8.encode("little"));
  }
  await zip.add(`${root}/version`, utf8.encode("3\n"));
  await zip.finish();
  return zip.digest;
}

/** Writes the rebuild call of `tensor`, whose storage is entry `key`. */
function writeTensor(pickler: Pickler, tensor: Tensor, key: number, rebuilds: RebuildWriter): void {
  if (!tensor.isParameter) {
    rebuilds.write(pickler, tensor, key);
    return;
  }
  pickler.global("torch._utils", "_rebuild_parameter");
  pickler.mark();
  rebuilds.write(pickler, tensor, key);
  pickler.value(tensor.requiresGrad);
  writeEmptyOrderedDict(pickler);
  pickler.byte(Op.TUPLE);
  pickler.byte(Op.REDUCE);
}
