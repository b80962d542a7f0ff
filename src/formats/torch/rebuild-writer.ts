import { DTYPES, type DType } from "../../tensor/dtype.js";
import type { Tensor } from "../../tensor/tensor.js";
import { Op } from "../pickle/opcodes.js";
import type { Pickler } from "../pickle/pickler.js";
import { keepShape } from "../../keep-shapes.js";

const REBUILD_MODULE = "torch._utils";
const REBUILD_TENSOR = "_rebuild_tensor_v2";
const ORDERED_DICT_MODULE = "collections";
const ORDERED_DICT = "OrderedDict";

/** Integers the raw path writes itself: BININT1, BININT2 or BININT. Larger ones take the ops path. */
const RAW_INT_LIMIT = 2 ** 31;

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
    at = putInt(bytes, at, tensor.storage.numel);
    bytes[at++] = Op.TUPLE;
    bytes[at++] = Op.BINPERSID;
    at = putInt(bytes, at, tensor.offset);
    at = putIntTuple(bytes, at, shape);
    at = putIntTuple(bytes, at, strides);
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

/** Whether every integer of the call is one the raw path writes. */
function fitsRawInts(tensor: Tensor): boolean {
  if (!isRawInt(tensor.storage.numel) || !isRawInt(tensor.offset)) return false;
  const { shape, strides } = tensor;
  for (let i = 0; i < shape.length; i++) if (!isRawInt(shape[i]!) || !isRawInt(strides[i]!)) return false;
  return true;
}

/** 0 ≤ value < 2^31, and not -0 (which PickleOutput writes as a float). */
function isRawInt(value: number): boolean {
  return value >= 0 && value < RAW_INT_LIMIT && Number.isInteger(value) && (value !== 0 || 1 / value > 0);
}

/** BINGET or LONG_BINGET of memo entry `index`, as PickleOutput writes them. */
function putMemoGet(bytes: Uint8Array, at: number, index: number): number {
  if (index < 0x100) {
    bytes[at] = Op.BINGET;
    bytes[at + 1] = index;
    return at + 2;
  }
  bytes[at] = Op.LONG_BINGET;
  putUint32(bytes, at + 1, index);
  return at + 5;
}

/** A non-negative integer below 2^31 in its shortest form, as PickleOutput.int writes it. */
function putInt(bytes: Uint8Array, at: number, value: number): number {
  if (value < 0x100) {
    bytes[at] = Op.BININT1;
    bytes[at + 1] = value;
    return at + 2;
  }
  if (value < 0x10000) {
    bytes[at] = Op.BININT2;
    bytes[at + 1] = value & 0xff;
    bytes[at + 2] = value >>> 8;
    return at + 3;
  }
  bytes[at] = Op.BININT;
  putUint32(bytes, at + 1, value);
  return at + 5;
}

/** A tuple of such integers, as PickleOutput.intTuple writes it. */
function putIntTuple(bytes: Uint8Array, at: number, items: readonly number[]): number {
  const n = items.length;
  if (n === 0) {
    bytes[at] = Op.EMPTY_TUPLE;
    return at + 1;
  }
  if (n > 3) bytes[at++] = Op.MARK;
  for (let i = 0; i < n; i++) at = putInt(bytes, at, items[i]!);
  bytes[at] = n > 3 ? Op.TUPLE : Op.TUPLE1 + n - 1;
  return at + 1;
}

function putUint32(bytes: Uint8Array, at: number, value: number): void {
  bytes[at] = value & 0xff;
  bytes[at + 1] = (value >>> 8) & 0xff;
  bytes[at + 2] = (value >>> 16) & 0xff;
  bytes[at + 3] = value >>> 24;
}
