import { FormatError } from "../../errors.js";
import { newStorageVisit, type Storage } from "../../tensor/storage.js";
import { ShardedTensor } from "../../tensor/sharded-tensor.js";
import { Tensor } from "../../tensor/tensor.js";
import { shardedRecord } from "./sharded-record.js";
import { PyDType, type StateValue } from "../../values/py-values.js";
import { checkStateListingKeys, type ObjectKeys } from "../../values/state-check.js";
import type { ByteSink } from "../byte-io.js";
import { Op } from "../pickle/opcodes.js";
import { Pickler } from "../pickle/pickler.js";
import { ZipWriter, type ZipWriterOptions } from "../zip/zip-writer.js";
import { RebuildWriter, writeEmptyOrderedDict } from "./rebuild-writer.js";

/** How `pickleState` is to treat the state's check. */
export interface PickleCheck {
  /** `state` was checked by the caller (see TensorDumpOptions.stateChecked): no second walk. */
  stateChecked?: boolean;
  /** The keys that check listed (see TensorDumpOptions.checkedKeys). */
  checkedKeys?: ObjectKeys;
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

/**
 * Pickles `state` as `torch.save` does: tensors as `_rebuild_tensor_v2` calls whose persistent ids
 * name storages "0", "1", … in the order first met. Refuses, naming the key path, what could not be
 * written or would not load back (a Map key that is an object, undefined, a function…), unless the
 * caller has checked the state (`stateChecked`, with the keys it listed: `checkedKeys`). The check
 * and the pickle list each large object's keys once between them. `rawRebuilds`: false writes every
 * rebuild call op by op (see RebuildWriter; the tests compare both).
 */
export function pickleState(state: StateValue, check: PickleCheck = {}, rawRebuilds = true): PickledState {
  // Storage keys are the numbers 0, 1, …: the index in `storages`, in the order first met.
  const storages: Storage[] = [];
  // Their bytes, summed as each is first met (its object is in cache then; a loop afterwards would
  // miss the cache once per tensor).
  let storageBytes = 0;
  const stamp = newStorageVisit();
  const rebuilds = new RebuildWriter(rawRebuilds);

  const listedKeys = check.stateChecked === true ? check.checkedKeys : checkStateListingKeys(state, "state", (message, kind) => new FormatError(kind === "limit" ? "PICKLE_LIMIT" : "PICKLE_UNSUPPORTED", message));
  // Tensors are written first and memoized by a field on each (a tensor met again is a memo get).
  const encodeTensor = (pickler: Pickler, value: object): boolean => {
    if (!(value instanceof Tensor)) return false;
    const memoIndex = value.memoInArchive(stamp);
    if (memoIndex >= 0) {
      pickler.getMemoEntry(memoIndex);
      return true;
    }
    storageBytes += writeTensor(pickler, value, storages, stamp, rebuilds);
    value.markArchived(stamp, pickler.putMemo());
    return true;
  };
  const pickle = Pickler.dump(state, (pickler, value) => {
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
  }, encodeTensor, listedKeys);
  return { pickle, storages, storageBytes };
}

/**
 * Writes `state` as PyTorch's zip archive, in the order `torch.save` uses: the pickle, the byte
 * order, one entry per storage (each storage once, however many tensors view it), the version.
 */
export async function writeTorchArchive(state: StateValue, sink: ByteSink, options: TorchWriteOptions = {}): Promise<{ size: number; crc32: number }> {
  const root = options.root ?? "archive";
  const { pickle, storages, storageBytes } = pickleState(state, options);

  const { onProgress } = options;
  let done = 0;
  // The file's size but for its zip headers: the sink may size its buffers by it.
  const total = storageBytes + pickle.byteLength;
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
  await zip.add(`${root}/data.pkl`, pickle);
  await zip.add(`${root}/byteorder`, utf8.encode("little"));
  // `addNumbered` returns a promise only when the caller must wait: no promise per small storage,
  // and no name string either (see docs/design.md, "Per-tensor cost").
  const dataPrefix = `${root}/data/`;
  for (let key = 0; key < storages.length; key++) {
    const waiting = zip.addNumbered(dataPrefix, key, storages[key]!.bytes);
    if (waiting !== undefined) await waiting;
  }
  await zip.add(`${root}/version`, utf8.encode("3\n"));
  await zip.finish();
  return zip.digest;
}

/** Writes the rebuild call of `tensor`; returns the bytes of its storage if it is the first to view it, else 0. */
function writeTensor(pickler: Pickler, tensor: Tensor, storages: Storage[], stamp: number, rebuilds: RebuildWriter): number {
  const { storage } = tensor;
  // Each storage once, however many tensors view it; a field, not a Map lookup, per tensor.
  let key = storage.indexInVisit(stamp);
  let newBytes = 0;
  if (key < 0) {
    key = storages.length;
    storage.markVisited(stamp, key);
    storages.push(storage);
    newBytes = storage.bytes.byteLength;
  }
  if (!tensor.isParameter) {
    rebuilds.write(pickler, tensor, key);
    return newBytes;
  }
  pickler.global("torch._utils", "_rebuild_parameter");
  pickler.mark();
  rebuilds.write(pickler, tensor, key);
  pickler.value(tensor.requiresGrad);
  writeEmptyOrderedDict(pickler);
  pickler.byte(Op.TUPLE);
  pickler.byte(Op.REDUCE);
  return newBytes;
}
