import { Op } from "./opcodes.js";
import { MISSING, type DeferredValue, type PickleMemo } from "./pickle-memo.js";
import { decodeUtf8Range } from "./pickle-reader.js";
import type { PickleCallable, UnpickleContext, UnpickleOptions } from "./unpickler.js";
import { keepShape } from "../../keep-shapes.js";

/**
 * The callables of the tensor rebuild the fast path knows: the ~25 opcodes every tensor of a `.pt`
 * pickle takes (PyTorch's and ours alike),
 *
 *   <rebuild> MARK MARK <5 pid items> TUPLE BINPERSID <offset> <size tuple> <stride tuple>
 *   NEWTRUE|NEWFALSE <OrderedDict> EMPTY_TUPLE REDUCE TUPLE REDUCE
 *
 * with a BINPUT/LONG_BINPUT after any value, as both writers put them.
 */
export interface FastRebuild {
  /** The callable the sequence ends with (`torch._utils._rebuild_tensor_v2`); must not keep its arguments. */
  readonly rebuild: PickleCallable;
  /** The callable that makes the backward-hooks dict (`collections.OrderedDict`). */
  readonly orderedDict: PickleCallable;
}

/** What the fast path needs of the unpickler it runs in. */
export interface FastRebuildMachine {
  readonly bytes: Uint8Array;
  readonly context: UnpickleContext;
  readonly memo: PickleMemo;
  /**
   * The unpickle's own options, called as the general path calls them (methods of one object, not
   * closures made per load: see keep-shapes.ts). `findGlobal` must have no side effects (the
   * general path may look the same name up again); `persistentLoad` must give the same result when
   * called again with an equal id (the general path may redo it), and must not keep the id array
   * (the fast path reuses it).
   */
  readonly options: UnpickleOptions;
}

/** Not a value: the fast path leaves the sequence to the general path. */
const NO = Symbol("no");

/** What a memo write inside the sequence stores. */
const enum Slot {
  Value = 0, // a string, int or global read in the sequence: stored as it is
  Pid = 1,
  Size = 2,
  Stride = 3,
  Hooks = 4,
  Args = 5,
  Result = 6,
}

/**
 * Reads tensor rebuilds without the general interpreter's stack, and without building what
 * nothing reads again. The general interpreter spent most of a small tensor's load on this
 * sequence: a stack push and pop per opcode, the argument tuple, an OrderedDict nobody keeps, and
 * (in PyTorch's files, which memoize every tuple) four tuples and a dict per tensor kept alive to
 * the end of the load. Here the memoized ones are deferred (`RebuildRecord`): built, exactly as
 * the general path builds them, only if the pickle reads them back.
 *
 * Anything outside the sequence, down to a memo index read back inside it, is left to the general
 * path: `run` never throws and changes nothing until it has read the whole sequence, then does
 * what the general path would (the same persistent-id call, the same memo entries in the same
 * order, the same call of the rebuild). One instance per unpickle; no closure per tensor.
 */
export class RebuildFastPath {
  private at = 0;
  // Memo writes seen in the current sequence, in order: index, slot, and a Slot.Value's value
  // (reused from one sequence to the next: only the first `putCount` are this sequence's).
  private putCount = 0;
  private readonly putIndices: number[] = [];
  private readonly putSlots: Slot[] = [];
  private readonly putValues: unknown[] = [];
  /** The ints of the tuple being read (reused). */
  private readonly ints: number[] = [];
  // The persistent id and the arguments handed to persistentLoad and the rebuild, which do not
  // keep them (reused: no two arrays per tensor; a memoized id or tuple is built on its own).
  private readonly pid: unknown[] = [undefined, undefined, undefined, undefined, undefined];
  private readonly args: unknown[] = [undefined, undefined, undefined, undefined, undefined, undefined];
  // The last size and strides (frozen, shared by the tensors that have them: most of a state's).
  private lastSize: readonly number[] = Object.freeze([]);
  private lastStride: readonly number[] = Object.freeze([]);

  constructor(
    private readonly fast: FastRebuild,
    private readonly machine: FastRebuildMachine,
  ) {}

  /**
   * Runs the sequence that starts at `start` (just after the MARK that follows the rebuild
   * callable, which is on top of `stack`). On success replaces the callable with the tensor and
   * returns the offset after the sequence; otherwise returns -1 having changed nothing that the
   * general path does not redo identically.
   */
  run(start: number, stack: unknown[]): number {
    this.at = start;
    this.putCount = 0;
    try {
      return this.read(stack);
    } catch {
      return -1; // the general path meets the same failure and reports it where it happens
    }
  }

  private read(stack: unknown[]): number {
    const bytes = this.machine.bytes;
    // The persistent id: MARK, five items (each maybe memoized), TUPLE, BINPERSID.
    if (bytes[this.at++] !== Op.MARK) return -1;
    const p0 = this.readItem();
    if (p0 === NO) return -1;
    this.readPut(Slot.Value, p0);
    const p1 = this.readItem();
    if (p1 === NO) return -1;
    this.readPut(Slot.Value, p1);
    const p2 = this.readItem();
    if (p2 === NO) return -1;
    this.readPut(Slot.Value, p2);
    const p3 = this.readItem();
    if (p3 === NO) return -1;
    this.readPut(Slot.Value, p3);
    const p4 = this.readItem();
    if (p4 === NO) return -1;
    this.readPut(Slot.Value, p4);
    if (bytes[this.at++] !== Op.TUPLE) return -1;
    this.readPut(Slot.Pid, undefined);
    if (bytes[this.at++] !== Op.BINPERSID) return -1;
    const offset = this.readInt();
    if (offset === undefined) return -1;
    const size = this.readIntTuple(this.lastSize);
    if (size === undefined) return -1;
    this.readPut(Slot.Size, undefined);
    const stride = this.readIntTuple(this.lastStride);
    if (stride === undefined) return -1;
    this.readPut(Slot.Stride, undefined);
    const flag = bytes[this.at++];
    if (flag !== Op.NEWTRUE && flag !== Op.NEWFALSE) return -1;
    // The backward hooks: OrderedDict() (the class read from the memo or named).
    const hooksType = this.readItem();
    if (hooksType !== this.fast.orderedDict) return -1;
    this.readPut(Slot.Value, hooksType);
    if (bytes[this.at++] !== Op.EMPTY_TUPLE || bytes[this.at++] !== Op.REDUCE) return -1;
    this.readPut(Slot.Hooks, undefined);
    if (bytes[this.at++] !== Op.TUPLE) return -1;
    this.readPut(Slot.Args, undefined);
    if (bytes[this.at++] !== Op.REDUCE) return -1;
    this.readPut(Slot.Result, undefined);

    // Everything read: do what the general path does, in its order.
    const { machine } = this;
    const pid = this.pid;
    pid[0] = p0;
    pid[1] = p1;
    pid[2] = p2;
    pid[3] = p3;
    pid[4] = p4;
    if (machine.options.persistentLoad === undefined) return -1; // the general path refuses it
    const storage = machine.options.persistentLoad(pid);
    const requiresGrad = flag === Op.NEWTRUE;
    const args = this.args;
    args[0] = storage;
    args[1] = offset;
    args[2] = size;
    args[3] = stride;
    args[4] = requiresGrad;
    const result = this.fast.rebuild.call(args, machine.context);
    this.lastSize = size;
    this.lastStride = stride;
    let record: RebuildRecord | undefined;
    for (let i = 0; i < this.putCount; i++) {
      const slot = this.putSlots[i]!;
      if (slot === Slot.Value) machine.memo.put(this.putIndices[i]!, this.putValues[i]);
      else if (slot === Slot.Result) machine.memo.put(this.putIndices[i]!, result);
      else {
        record ??= new RebuildRecord(p0, p1, p2, p3, p4, storage, offset, size, stride, requiresGrad, this.fast.orderedDict, machine.context);
        machine.memo.putDeferred(this.putIndices[i]!, record, slot);
      }
    }
    stack[stack.length - 1] = result; // in place of the rebuild callable
    return this.at;
  }

  private readPut(slot: Slot, value: unknown): void {
    const bytes = this.machine.bytes;
    const at = this.at;
    let index: number;
    if (bytes[at] === Op.BINPUT && at + 1 < bytes.length) {
      index = bytes[at + 1]!;
      this.at += 2;
    } else if (bytes[at] === Op.LONG_BINPUT && at + 4 < bytes.length) {
      index = u32(bytes, at + 1);
      this.at += 5;
    } else {
      return;
    }
    const n = this.putCount++;
    this.putIndices[n] = index;
    this.putSlots[n] = slot;
    this.putValues[n] = value;
  }

  private isPutHere(index: number): boolean {
    for (let i = 0; i < this.putCount; i++) if (this.putIndices[i] === index) return true;
    return false;
  }

  /** One int (BININT1, BININT2, BININT), or undefined. */
  private readInt(): number | undefined {
    const bytes = this.machine.bytes;
    const at = this.at;
    const op = bytes[at];
    if (op === Op.BININT1 && at + 1 < bytes.length) {
      this.at += 2;
      return bytes[at + 1]!;
    }
    if (op === Op.BININT2 && at + 2 < bytes.length) {
      this.at += 3;
      return bytes[at + 1]! | (bytes[at + 2]! << 8);
    }
    if (op === Op.BININT && at + 4 < bytes.length) {
      this.at += 5;
      return bytes[at + 1]! | (bytes[at + 2]! << 8) | (bytes[at + 3]! << 16) | (bytes[at + 4]! << 24); // signed, as BININT
    }
    return undefined;
  }

  /** A string, a memo read, a global or an int; NO for anything else. */
  private readItem(): unknown {
    const bytes = this.machine.bytes;
    const at = this.at;
    const op = bytes[at];
    if (op === Op.BINGET || op === Op.LONG_BINGET) {
      const long = op === Op.LONG_BINGET;
      if (at + (long ? 4 : 1) >= bytes.length) return NO;
      const index = long ? u32(bytes, at + 1) : bytes[at + 1]!;
      // A value written inside this sequence is not stored yet: the general path reads it.
      if (this.isPutHere(index)) return NO;
      this.at += long ? 5 : 2;
      const value = this.machine.memo.get(index);
      return value === MISSING ? NO : value;
    }
    if (op === Op.BINUNICODE || op === Op.SHORT_BINUNICODE) {
      const long = op === Op.BINUNICODE;
      if (at + (long ? 4 : 1) >= bytes.length) return NO;
      const length = long ? u32(bytes, at + 1) : bytes[at + 1]!;
      const from = at + (long ? 5 : 2);
      if (length > bytes.length - from) return NO;
      this.at = from + length;
      return decodeUtf8Range(bytes, from, from + length);
    }
    if (op === Op.GLOBAL) {
      const moduleEnd = bytes.indexOf(0x0a, at + 1);
      const nameEnd = moduleEnd < 0 ? -1 : bytes.indexOf(0x0a, moduleEnd + 1);
      if (nameEnd < 0) return NO;
      const module = decodeUtf8Range(bytes, at + 1, moduleEnd);
      const name = decodeUtf8Range(bytes, moduleEnd + 1, nameEnd);
      this.at = nameEnd + 1;
      return this.machine.options.findGlobal(module, name); // a refusal throws: the general path refuses it again
    }
    return this.readInt() ?? NO;
  }

  /**
   * A tuple of ints (EMPTY_TUPLE, TUPLE1–3, or MARK … TUPLE) as a frozen array: `last` when equal
   * to it, so the tensors of one shape share their shape and strides. Undefined for anything else.
   */
  private readIntTuple(last: readonly number[]): readonly number[] | undefined {
    const bytes = this.machine.bytes;
    const marked = bytes[this.at] === Op.MARK;
    if (bytes[this.at] === Op.EMPTY_TUPLE) {
      this.at++;
      return last.length === 0 ? last : Object.freeze([]);
    }
    if (marked) this.at++;
    const ints = this.ints;
    let count = 0;
    for (;;) {
      const item = this.readInt();
      if (item === undefined) break;
      ints[count++] = item;
    }
    const close = bytes[this.at++];
    if (marked ? close !== Op.TUPLE : count === 0 || count > 3 || close !== Op.TUPLE1 + count - 1) return undefined;
    let same = count === last.length;
    for (let d = 0; same && d < count; d++) same = ints[d] === last[d];
    return same ? last : Object.freeze(ints.slice(0, count));
  }

  static {
    keepShape(new RebuildFastPath(undefined as never, undefined as never));
  }
}

/**
 * What one fast-path rebuild memoized, built on its first read exactly as the general path built
 * it (the same tuples, the argument tuple holding the same size and stride tuples and dict).
 */
class RebuildRecord implements DeferredValue {
  private pid: unknown[] | undefined;
  private sizeTuple: number[] | undefined;
  private strideTuple: number[] | undefined;
  private hooks: unknown;
  private args: unknown[] | undefined;

  constructor(
    private readonly p0: unknown,
    private readonly p1: unknown,
    private readonly p2: unknown,
    private readonly p3: unknown,
    private readonly p4: unknown,
    private readonly storage: unknown,
    private readonly offset: number,
    private readonly size: readonly number[],
    private readonly stride: readonly number[],
    private readonly requiresGrad: boolean,
    private readonly orderedDict: PickleCallable,
    private readonly context: UnpickleContext,
  ) {}

  materialize(kind: number): unknown {
    switch (kind as Slot) {
      case Slot.Pid:
        return (this.pid ??= [this.p0, this.p1, this.p2, this.p3, this.p4]);
      case Slot.Size:
        return (this.sizeTuple ??= [...this.size]);
      case Slot.Stride:
        return (this.strideTuple ??= [...this.stride]);
      case Slot.Hooks:
        return (this.hooks ??= this.orderedDict.call([], this.context));
      default:
        return (this.args ??= [this.storage, this.offset, this.materialize(Slot.Size), this.materialize(Slot.Stride), this.requiresGrad, this.materialize(Slot.Hooks)]);
    }
  }

  static {
    const none = undefined as never;
    keepShape(new RebuildRecord(none, none, none, none, none, none, 0, none, none, false, none, none)); // offsets are BININTs: small integers
  }
}

function u32(bytes: Uint8Array, at: number): number {
  return (bytes[at]! | (bytes[at + 1]! << 8) | (bytes[at + 2]! << 16) | (bytes[at + 3]! << 24)) >>> 0;
}
