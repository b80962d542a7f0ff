import { FormatError } from "../../errors.js";
import { DTYPES } from "../../tensor/dtype.js";
import { newStorageVisit, type Storage } from "../../tensor/storage.js";
import { ShardedTensor } from "../../tensor/sharded-tensor.js";
import { Tensor } from "../../tensor/tensor.js";
import { shardedRecord } from "./sharded-record.js";
import { PyDType, type StateValue } from "../../values/py-values.js";
import { planStorages } from "../../values/state-check.js";
import type { ByteSink } from "../byte-io.js";
import { Op } from "../pickle/opcodes.js";
import { Pickler } from "../pickle/pickler.js";
import { ZipWriter, type ZipWriterOptions } from "../zip/zip-writer.js";

export interface TorchWriteOptions extends ZipWriterOptions {
  /** The archive's root folder (PyTorch 2.x writes "archive"). */
  root?: string;
  /** Called as bytes reach the sink, with bytes done and (about) bytes in all. */
  onProgress?: (bytesDone: number, bytesTotal: number) => void;
}

const utf8 = new TextEncoder();

/**
 * Writes `state` as PyTorch's zip archive: one entry per storage (each storage once, however many
 * tensors view it, numbered in the order the pickle meets them, as `torch.save` numbers them),
 * then the pickle, the byte order and the version.
 *
 * `torch.save` writes the pickle first. Readers, PyTorch's among them, find entries through the
 * central directory, so the order is free, and this one lets the disk work while the CPU does:
 * the storages' bytes are written first, then the sink starts syncing them while the pickle is
 * made (docs/design.md, "The pickle last").
 */
export async function writeTorchArchive(state: StateValue, sink: ByteSink, options: TorchWriteOptions = {}): Promise<{ size: number; crc32: number }> {
  const root = options.root ?? "archive";
  // Refuses, naming the key path, what could not be written or would not load back (a Map key
  // that is an object, undefined, a function…), before the first byte reaches the sink. The same
  // walk lists the storages in the order the pickler meets them.
  const { storages, storageBytes } = planStorages(state, "state", (message, kind) => new FormatError(kind === "limit" ? "PICKLE_LIMIT" : "PICKLE_UNSUPPORTED", message));

  const { onProgress } = options;
  let done = 0;
  // The file's size but for its zip headers, and but for the pickle until it is made: the sink
  // may size its buffers by it.
  let total = storageBytes;
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
          ...(sink.syncInBackground === undefined ? {} : { syncInBackground: () => sink.syncInBackground!() }),
        };
  const zip = new ZipWriter(counted, options);
  // `addNumbered` returns a promise only when the caller must wait: no promise per small storage,
  // and no name string either (see docs/design.md, "Per-tensor cost").
  const dataPrefix = `${root}/data/`;
  for (let key = 0; key < storages.length; key++) {
    const waiting = zip.addNumbered(dataPrefix, key, storages[key]!.bytes);
    if (waiting !== undefined) await waiting;
  }
  zip.syncInBackground();
  const pickle = pickleState(state, storages);
  total += pickle.byteLength;
  await zip.add(`${root}/data.pkl`, pickle);
  await zip.add(`${root}/byteorder`, utf8.encode("little"));
  await zip.add(`${root}/version`, utf8.encode("3\n"));
  await zip.finish();
  return zip.digest;
}

/**
 * The pickle of `state`, whose tensors' storages are `planned` in the order it meets them (their
 * keys are their indices). A storage met out of that order means the state changed after it was
 * planned (a tensor replaced while its bytes were being written): refused, so no file can name a
 * storage by the wrong key.
 */
function pickleState(state: StateValue, planned: readonly Storage[]): Uint8Array {
  let met = 0;
  const stamp = newStorageVisit();
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
      key = met++;
      if (planned[key] !== storage) throw new FormatError("STATE_CHANGED", "the state changed while it was being saved (a tensor was replaced or added after the save began): save a state that stays as it is until the save returns, or a snapshot of it");
      storage.markVisited(stamp, key);
    }
    writeTensor(pickler, value, key);
    value.markArchived(stamp, pickler.putMemo());
    return true;
  };
  const pickle = Pickler.dump(state, (pickler, value) => {
    if (value instanceof StorageClass) {
      pickler.global("torch", DTYPES[value.storage.dtype].torchStorage);
      return true;
    }
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
  }, encodeTensor);
  if (met !== planned.length) throw new FormatError("STATE_CHANGED", "the state changed while it was being saved (a tensor was removed after the save began): save a state that stays as it is until the save returns, or a snapshot of it");
  return pickle;
}

/** Writes the rebuild call of `tensor`, whose storage is archive/data/`key`. */
function writeTensor(pickler: Pickler, tensor: Tensor, key: number): void {
  // Written op by op, without closures or generic tuples: this runs once per tensor, and states
  // have tens of thousands (see docs/design.md, "Per-tensor cost"). The bytes are those of
  // _rebuild_tensor_v2(persistent_id, offset, shape, strides, requires_grad, OrderedDict()).
  if (!tensor.isParameter) {
    writeRebuild(pickler, tensor, key);
    return;
  }
  pickler.global("torch._utils", "_rebuild_parameter");
  pickler.mark();
  writeRebuild(pickler, tensor, key);
  pickler.value(tensor.requiresGrad);
  emptyOrderedDict(pickler);
  pickler.byte(Op.TUPLE);
  pickler.byte(Op.REDUCE);
}

function writeRebuild(pickler: Pickler, tensor: Tensor, storageKey: number): void {
  const { storage } = tensor;
  pickler.global("torch._utils", "_rebuild_tensor_v2");
  pickler.mark();
  // The persistent id ("storage", torch.<Type>Storage, key, "cpu", numel), a tuple of 5.
  pickler.mark();
  pickler.string("storage");
  pickler.global("torch", DTYPES[storage.dtype].torchStorage);
  pickler.decimalString(storageKey); // the string "0", "1", … (as torch writes it)
  pickler.string("cpu");
  pickler.int(storage.numel);
  pickler.byte(Op.TUPLE);
  pickler.byte(Op.BINPERSID);
  pickler.int(tensor.offset);
  pickler.intTuple(tensor.shape);
  pickler.intTuple(tensor.strides);
  pickler.byte(tensor.requiresGrad ? Op.NEWTRUE : Op.NEWFALSE);
  emptyOrderedDict(pickler);
  pickler.byte(Op.TUPLE);
  pickler.byte(Op.REDUCE);
}

function emptyOrderedDict(pickler: Pickler): void {
  pickler.global("collections", "OrderedDict");
  pickler.byte(Op.EMPTY_TUPLE);
  pickler.byte(Op.REDUCE);
}

/** Placeholder written as the global `torch.<Type>Storage` inside a persistent id. */
class StorageClass {
  constructor(readonly storage: Storage) {}
}
