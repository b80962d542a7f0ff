import { DTYPES, type DType } from "../../tensor/dtype.js";
import type { Tensor } from "../../tensor/tensor.js";
import { Op } from "../pickle/opcodes.js";
import { isSmallInt, putMemoOp, putSmallInt, putSmallIntTuple } from "../pickle/pickle-encoding.js";
import type { Pickler } from "../pickle/pickler.js";
import { keepShape } from "../../keep-shapes.js";

const REBUILD_MODULE = "torch._utils";
const REBUILD_TENSOR = "_rebuild_tensor_v2";
const ORDERED_DICT_MODULE = "collections";
const ORDERED_DICT = "OrderedDict";

/**
 * Writes each tensor's `_rebuild_tensor_v2(("storage", torch.<Type>Storage, key, "cpu", numel),
 * offset, shape, strides, requires_grad, OrderedDict())` call. The first call of a dtype is written
 * op by op through the pickler, which memoizes its globals and strings; every later one repeats
 * them as memo references, so it is written as raw bytes with the memo indexes learned: a few
 * stores instead of some twenty opcode calls per tensor.
 *
 * Why it matters: a process's first save runs this code before V8 has optimized it, and the
 * optimizing compiler's time grows with every small call it inlines. States hold tens of
 * thousands of tensors (docs/design.md, "A process's first save").
 */
export class RebuildWriter {
  /** Memo indexes of what every call repeats; -1 until the first call has written them. */
  private rebuild = -1;
  private storageString = -1;
  private cpuString = -1;
  private orderedDict = -1;
  private readonly storageTypes = new Map<DType, number>();

  /** `raw`: false writes every call op by op (the tests compare both ways' bytes). */
  constructor(private readonly raw = true) {}

  write(pickler: Pickler, tensor: Tensor, storageKey: number): void {
    const storageType = this.storageTypes.get(tensor.storage.dtype);
    if (storageType === undefined || !this.raw || !fitsRawInts(tensor)) {
      writeRebuildOps(pickler, tensor, storageKey);
      this.learn(pickler, tensor.storage.dtype);
      return;
    }
    const { shape, strides } = tensor;
    // The callable, MARK (its arguments), MARK (the persistent id), "storage", torch.<Type>Storage.
    let at = pickler.room(17);
    let bytes = pickler.roomBuffer; // after room, which may grow it
    at = putMemoGet(bytes, at, this.rebuild);
    bytes[at++] = Op.MARK;
    bytes[at++] = Op.MARK;
    at = putMemoGet(bytes, at, this.storageString);
    at = putMemoGet(bytes, at, storageType);
    pickler.advanceTo(at);
    // The key as a string "0", "1", …, memoized as the pickler does every string.
    pickler.decimalString(storageKey);
    // "cpu", numel, the persistent id; offset, shape, strides, requires_grad, OrderedDict(); the call.
    at = pickler.room(40 + 10 * shape.length);
    bytes = pickler.roomBuffer;
    at = putMemoGet(bytes, at, this.cpuString);
    at = putSmallInt(bytes, at, tensor.storage.numel);
    bytes[at++] = Op.TUPLE;
    bytes[at++] = Op.BINPERSID;
    at = putSmallInt(bytes, at, tensor.offset);
    at = putSmallIntTuple(bytes, at, shape);
    at = putSmallIntTuple(bytes, at, strides);
    bytes[at++] = tensor.requiresGrad ? Op.NEWTRUE : Op.NEWFALSE;
    at = putMemoGet(bytes, at, this.orderedDict);
    bytes[at++] = Op.EMPTY_TUPLE;
    bytes[at++] = Op.REDUCE;
    bytes[at++] = Op.TUPLE;
    bytes[at++] = Op.REDUCE;
    pickler.advanceTo(at);
  }

  static {
    keepShape(new RebuildWriter());
  }

  /** Takes the memo indexes a call op by op has just given its globals and strings. */
  private learn(pickler: Pickler, dtype: DType): void {
    if (this.storageTypes.has(dtype)) return;
    this.rebuild = pickler.globalMemoIndex(REBUILD_MODULE, REBUILD_TENSOR);
    this.orderedDict = pickler.globalMemoIndex(ORDERED_DICT_MODULE, ORDERED_DICT);
    this.storageString = pickler.stringMemoIndex("storage");
    this.cpuString = pickler.stringMemoIndex("cpu");
    const storageType = pickler.globalMemoIndex("torch", DTYPES[dtype].torchStorage);
    // All were just written, so all are memoized; should one not be, every call stays op by op.
    if (Math.min(this.rebuild, this.orderedDict, this.storageString, this.cpuString, storageType) >= 0) this.storageTypes.set(dtype, storageType);
  }
}

/** Writes the rebuild call op by op (the first of each dtype, and tensors of very large sizes). */
function writeRebuildOps(pickler: Pickler, tensor: Tensor, storageKey: number): void {
  const { storage } = tensor;
  pickler.global(REBUILD_MODULE, REBUILD_TENSOR);
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
  writeEmptyOrderedDict(pickler);
  pickler.byte(Op.TUPLE);
  pickler.byte(Op.REDUCE);
}

/** `OrderedDict()`: the global, no arguments, the call. */
export function writeEmptyOrderedDict(pickler: Pickler): void {
  pickler.global(ORDERED_DICT_MODULE, ORDERED_DICT);
  pickler.byte(Op.EMPTY_TUPLE);
  pickler.byte(Op.REDUCE);
}

/** Whether every integer of the call is one the raw path writes (isSmallInt). */
function fitsRawInts(tensor: Tensor): boolean {
  if (!isSmallInt(tensor.storage.numel) || !isSmallInt(tensor.offset)) return false;
  const { shape, strides } = tensor;
  for (let i = 0; i < shape.length; i++) if (!isSmallInt(shape[i]!) || !isSmallInt(strides[i]!)) return false;
  return true;
}

function putMemoGet(bytes: Uint8Array, at: number, index: number): number {
  return putMemoOp(bytes, at, Op.BINGET, Op.LONG_BINGET, index);
}
