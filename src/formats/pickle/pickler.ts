import { FormatError } from "../../errors.js";
import {
  PyFloat,
  getOrderedDictAttributes,
  isFloatSlot,
  isOrderedDict,
  tupleKind,
} from "../../values/py-values.js";
import { MAX_NESTING, type ObjectKeys } from "../../values/state-check.js";
import { Op } from "./opcodes.js";
import { PickleOutput } from "./pickle-output.js";
import { keepShape } from "../../keep-shapes.js";

/**
 * Writes objects the pickler does not know (tensors, dtypes): return true once written, false to
 * let the pickler report the value as unsupported.
 */
export type EncodeObject = (pickler: Pickler, value: object) => boolean;

/**
 * Like EncodeObject, but asked first for every object, before the pickler's own memo: for the one
 * class of object a state holds by the ten thousand (tensors), which memoizes itself cheaper
 * (`putMemo`, `getMemoEntry`) than with a Map lookup per object.
 */
export type EncodeFirst = (pickler: Pickler, value: object) => boolean;

const NO_LISTED_KEYS: ObjectKeys = new Map();

/** Python's pickler batches APPENDS/SETITEMS in groups of this size; we do the same. */
const BATCH_SIZE = 1000;
/**
 * The string keys of a dict of this many keys or more are not memoized (PickleOutput.uniqueKey):
 * a model's parameter names, each written once. Small dicts' keys ("step", "exp_avg" in every
 * parameter's optimizer state) repeat, and a memo reference is shorter than the string.
 */
const UNIQUE_KEYS_FROM = 64;

/**
 * A protocol-2 pickler for state values, writing what `torch.save` writes: memoized containers
 * (so shared objects stay shared), BINUNICODE strings, BINFLOAT floats, LONG1 big ints, and bytes
 * as `_codecs.encode(text, "latin1")` because protocol 2 has no bytes opcode.
 */
export class Pickler extends PickleOutput {
  private readonly memo = new Map<unknown, number>();
  private readonly globalMemo = new Map<string, Map<string, number>>();
  private readonly tuplesInProgress = new Set<unknown[]>();
  private depth = 0;
  /** Items of lists and dicts per step (see dumpInSteps; Infinity: one step), and left in this one. */
  private stepItems = Infinity;
  private itemsLeft = Infinity;

  constructor(
    private readonly encodeObject: EncodeObject = () => false,
    private readonly encodeFirst: EncodeFirst = () => false,
    /** The keys of large objects as a check of this state just listed them (see ObjectKeys). */
    private readonly listedKeys: ObjectKeys = NO_LISTED_KEYS,
  ) {
    super();
  }

  /** Pickles `value` and returns the bytes (PROTO 2 … STOP). */
  static dump(value: unknown, encodeObject?: EncodeObject, encodeFirst?: EncodeFirst, listedKeys?: ObjectKeys): Uint8Array {
    return runToEnd(Pickler.dumpInSteps(value, Infinity, encodeObject, encodeFirst, listedKeys));
  }

  /**
   * Pickles `value` in steps, as `dump` does: each `next()` writes about `stepItems` more items of
   * the lists and dicts, and the last returns the bytes. A caller can do other work between steps
   * (an archive writer sends storages to the disk while the pickle is made: torch-writer.ts). Lists
   * and dicts are generators only for this; tuples, tensors and other leaves are written at once.
   * `expectedBytes`: about how long the pickle will be, if the caller knows (see PickleOutput.expect).
   */
  static *dumpInSteps(value: unknown, stepItems: number, encodeObject?: EncodeObject, encodeFirst?: EncodeFirst, listedKeys?: ObjectKeys, expectedBytes = 0): Generator<void, Uint8Array> {
    const pickler = new Pickler(encodeObject, encodeFirst, listedKeys);
    pickler.expect(expectedBytes);
    pickler.stepItems = pickler.itemsLeft = stepItems;
    pickler.byte(Op.PROTO);
    pickler.byte(2);
    const steps = pickler.begin(value);
    if (steps !== undefined) yield* steps;
    pickler.byte(Op.STOP);
    return pickler.written();
  }

  /** Writes any state value. `container`/`key` say where it sits, to honour whole-float marks. */
  value(value: unknown, container?: object, key?: unknown): void {
    const steps = this.begin(value, container, key);
    if (steps !== undefined) runToEnd(steps);
  }

  /**
   * Writes `value`, or for a list or dict (written in steps, see dumpInSteps) returns the steps
   * that write it. `container`/`key` say where it sits, to honour whole-float marks.
   */
  private begin(value: unknown, container?: object, key?: unknown): Generator<void, void> | undefined {
    switch (typeof value) {
      case "number":
        // Only safe integers are ints: 1e300 or 2 ** 53 is a float a program computed, and written as
        // an int it would load back as a bigint, which arithmetic with numbers refuses.
        if (container !== undefined && isFloatSlot(container, key)) this.float(value);
        else if (Number.isSafeInteger(value) && !Object.is(value, -0)) this.int(value);
        else this.float(value);
        return undefined;
      case "bigint":
        this.int(value);
        return undefined;
      case "string":
        this.string(value);
        return undefined;
      case "boolean":
        this.byte(value ? Op.NEWTRUE : Op.NEWFALSE);
        return undefined;
      case "object":
        if (value === null) {
          this.byte(Op.NONE);
          return undefined;
        }
        break;
      default:
        throw new FormatError("PICKLE_UNSUPPORTED", `a ${typeof value} cannot be saved in a state`);
    }
    if (this.encodeFirst(this, value)) return undefined;
    if (value instanceof PyFloat) {
      this.float(value.value);
      return undefined;
    }
    if (this.getMemo(value)) return undefined;
    if (Array.isArray(value)) {
      const kind = tupleKind(value);
      if (kind === undefined) return this.listSteps(value);
      // Containers are written recursively: their depth is limited as checkStateValue limits it.
      this.enter();
      try {
        if (kind === "tuple") this.tuple(value);
        else {
          // torch.Size((2, 3)): the items are one tuple argument, as Python's __reduce__ writes them.
          this.reduce("torch", "Size", () => {
            this.tuple(value.slice());
            this.byte(Op.TUPLE1);
          }, value);
        }
      } finally {
        this.depth--;
      }
      return undefined;
    }
    if (value instanceof Map) return this.dictSteps(value, [...value.keys()], (key) => value.get(key));
    if (isPlainObject(value)) {
      const record = value as Record<string, unknown>;
      return this.dictSteps(value, this.listedKeys.get(value) ?? Object.keys(record), (key) => record[key as string]);
    }
    if (value instanceof Uint8Array) {
      this.reduce("_codecs", "encode", () => {
        this.string(Buffer.from(value.buffer, value.byteOffset, value.byteLength).toString("latin1"), false);
        this.string("latin1");
        this.byte(Op.TUPLE2);
      }, value);
    } else if (!this.encodeObject(this, value)) {
      throw new FormatError("PICKLE_UNSUPPORTED", `a ${value.constructor?.name ?? "value"} cannot be saved in a state`);
    }
    return undefined;
  }

  /** One level deeper into containers; the caller decrements `depth` when it leaves. */
  private enter(): void {
    if (++this.depth > MAX_NESTING) {
      this.depth--;
      throw new FormatError("PICKLE_LIMIT", `the state is nested deeper than ${MAX_NESTING} levels`);
    }
  }

  /** Counts an item of a list or dict written; true when a step is done (see dumpInSteps). */
  private stepDone(): boolean {
    if (--this.itemsLeft > 0) return false;
    this.itemsLeft = this.stepItems;
    return true;
  }

  /** Writes a list as Python's pickler does (APPENDS in batches), pausing every `stepItems` items. */
  private *listSteps(list: unknown[]): Generator<void, void> {
    this.enter();
    try {
      this.byte(Op.EMPTY_LIST);
      this.memoize(list);
      for (let start = 0; start < list.length; start += BATCH_SIZE) {
        this.byte(Op.MARK);
        const end = Math.min(list.length, start + BATCH_SIZE);
        for (let i = start; i < end; i++) {
          const steps = this.begin(list[i], list, i);
          if (steps !== undefined) yield* steps;
          if (this.stepDone()) yield;
        }
        this.byte(Op.APPENDS);
      }
    } finally {
      this.depth--;
    }
  }

  /** Writes a tuple of already-known items; memoized afterwards, like Python. */
  tuple(items: readonly unknown[], container: object = items): void {
    if (this.tuplesInProgress.has(items as unknown[])) {
      throw new FormatError("PICKLE_UNSUPPORTED", "a tuple that contains itself cannot be saved");
    }
    this.tuplesInProgress.add(items as unknown[]);
    try {
      if (items.length === 0) {
        this.byte(Op.EMPTY_TUPLE);
      } else if (items.length <= 3) {
        items.forEach((item, i) => this.value(item, container, i));
        this.byte(Op.TUPLE1 + items.length - 1);
      } else {
        this.byte(Op.MARK);
        items.forEach((item, i) => this.value(item, container, i));
        this.byte(Op.TUPLE);
      }
    } finally {
      this.tuplesInProgress.delete(items as unknown[]);
    }
    if (container === items) this.memoize(items);
  }

  /** Writes a dict or OrderedDict (SETITEMS in batches, attributes last), pausing every `stepItems` items. */
  private *dictSteps(dict: object, keys: readonly unknown[], valueOf: (key: unknown) => unknown): Generator<void, void> {
    this.enter();
    try {
      const ordered = isOrderedDict(dict);
      if (ordered) {
        this.global("collections", "OrderedDict");
        this.byte(Op.EMPTY_TUPLE);
        this.byte(Op.REDUCE);
      } else {
        this.byte(Op.EMPTY_DICT);
      }
      this.memoize(dict);
      const uniqueKeys = keys.length >= UNIQUE_KEYS_FROM;
      for (let start = 0; start < keys.length; start += BATCH_SIZE) {
        this.byte(Op.MARK);
        const end = Math.min(keys.length, start + BATCH_SIZE);
        for (let i = start; i < end; i++) {
          const key = keys[i];
          if (uniqueKeys && typeof key === "string") this.uniqueKey(key);
          else this.value(key);
          const steps = this.begin(valueOf(key), dict, key);
          if (steps !== undefined) yield* steps;
          if (this.stepDone()) yield;
        }
        this.byte(Op.SETITEMS);
      }
      const attributes = ordered ? getOrderedDictAttributes(dict) : undefined;
      if (attributes !== undefined) {
        this.value(attributes);
        this.byte(Op.BUILD);
      }
    } finally {
      this.depth--;
    }
  }

  /** Writes `module.name(*args)`: the global, the argument tuple from `writeArgs`, REDUCE. */
  reduce(module: string, name: string, writeArgs: () => void, memoKey?: object): void {
    this.global(module, name);
    writeArgs();
    this.byte(Op.REDUCE);
    if (memoKey !== undefined) this.memoize(memoKey);
  }

  /** Writes a global reference (memoized: PyTorch files name the same few globals thousands of times). */
  global(module: string, name: string): void {
    // Looked up by module, then name: no string built per reference.
    let names = this.globalMemo.get(module);
    if (names === undefined) this.globalMemo.set(module, (names = new Map()));
    const index = names.get(name);
    if (index !== undefined) {
      this.memoGet(index);
      return;
    }
    this.byte(Op.GLOBAL);
    this.ascii(`${module}\n${name}\n`);
    names.set(name, this.newMemoIndex());
  }

  /** The memo index of global `module.name` if it was written, else -1. */
  globalMemoIndex(module: string, name: string): number {
    return this.globalMemo.get(module)?.get(name) ?? -1;
  }

  /** Writes `pid` (a tuple of items) as a persistent id. */
  persistentId(items: readonly unknown[]): void {
    this.tuple(items, []);
    this.byte(Op.BINPERSID);
  }

  private getMemo(value: object): boolean {
    const index = this.memo.get(value);
    if (index === undefined) return false;
    this.memoGet(index);
    return true;
  }

  /** Records `value` as the object on top of the pickle stack, so later references reuse it. */
  memoize(value: object): void {
    this.memo.set(value, this.newMemoIndex());
  }

  static {
    const kept = new Pickler();
    kept.readyForKeeping();
    keepShape(kept);
  }
}


/** Runs steps (see Pickler.dumpInSteps) to their end and returns what the last one returns. */
export function runToEnd<T>(steps: Generator<void, T>): T {
  for (;;) {
    const step = steps.next();
    if (step.done === true) return step.value;
  }
}

function isPlainObject(value: object): boolean {
  const prototype = Object.getPrototypeOf(value);
  return prototype === Object.prototype || prototype === null;
}
