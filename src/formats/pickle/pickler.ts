import { FormatError } from "../../errors.js";
import {
  PyFloat,
  getOrderedDictAttributes,
  isFloatSlot,
  isOrderedDict,
  tupleKind,
} from "../../values/py-values.js";
import { MAX_NESTING } from "../../values/state-check.js";
import { Op } from "./opcodes.js";

/**
 * Writes objects the pickler does not know (tensors, dtypes): return true once written, false to
 * let the pickler report the value as unsupported.
 */
export type EncodeObject = (pickler: Pickler, value: object) => boolean;

/**
 * Like EncodeObject, but asked first for every object, before the pickler's own memo: for the one
 * class of object a state holds by the ten thousand (tensors), which memoizes itself cheaper
 * (`putMemo`, `getMemo`) than a Map lookup per object.
 */
export type EncodeFirst = (pickler: Pickler, value: object) => boolean;

/** Python's pickler batches APPENDS/SETITEMS in groups of this size; we do the same. */
const BATCH_SIZE = 1000;
/** Strings up to this length are memoized by value, so repeated keys are written once. */
const MEMO_STRING_LENGTH = 64;

const BIG_INT32_MIN = -(2 ** 31);
const BIG_INT32_MAX = 2 ** 31 - 1;

/**
 * A protocol-2 pickler for state values, writing what `torch.save` writes: memoized containers
 * (so shared objects stay shared), BINUNICODE strings, BINFLOAT floats, LONG1 big ints, and bytes
 * as `_codecs.encode(text, "latin1")` because protocol 2 has no bytes opcode.
 */
export class Pickler {
  private buffer = Buffer.alloc(1 << 16);
  private view = new DataView(this.buffer.buffer, this.buffer.byteOffset, this.buffer.byteLength);
  private length = 0;
  private readonly memo = new Map<unknown, number>();
  private readonly stringMemo = new Map<string, number>();
  /**
   * The memo of strings that are decimal numbers ("0" … "999999999"), indexed by their value: the
   * storage keys of a state are these, one per tensor, and writing them needs no string then.
   */
  private readonly decimalMemo: number[] = [];
  private readonly globalMemo = new Map<string, Map<string, number>>();
  /** Memo entries written so far: the next one's index. */
  private memoCount = 0;
  private readonly tuplesInProgress = new Set<unknown[]>();
  private depth = 0;

  constructor(
    private readonly encodeObject: EncodeObject = () => false,
    private readonly encodeFirst: EncodeFirst = () => false,
  ) {}

  /** Pickles `value` and returns the bytes (PROTO 2 … STOP). */
  static dump(value: unknown, encodeObject?: EncodeObject, encodeFirst?: EncodeFirst): Uint8Array {
    const pickler = new Pickler(encodeObject, encodeFirst);
    pickler.byte(Op.PROTO);
    pickler.byte(2);
    pickler.value(value);
    pickler.byte(Op.STOP);
    return pickler.buffer.subarray(0, pickler.length);
  }

  /** Writes any state value. `container`/`key` say where it sits, to honour whole-float marks. */
  value(value: unknown, container?: object, key?: unknown): void {
    switch (typeof value) {
      case "number":
        // Only safe integers are ints: 1e300 or 2 ** 53 is a float a program computed, and written as
        // an int it would load back as a bigint, which arithmetic with numbers refuses.
        if (container !== undefined && isFloatSlot(container, key)) this.float(value);
        else if (Number.isSafeInteger(value) && !Object.is(value, -0)) this.int(value);
        else this.float(value);
        return;
      case "bigint":
        this.int(value);
        return;
      case "string":
        this.string(value);
        return;
      case "boolean":
        this.byte(value ? Op.NEWTRUE : Op.NEWFALSE);
        return;
      case "object":
        if (value === null) {
          this.byte(Op.NONE);
          return;
        }
        break;
      default:
        throw new FormatError("PICKLE_UNSUPPORTED", `a ${typeof value} cannot be saved in a state`);
    }
    if (this.encodeFirst(this, value)) return;
    if (value instanceof PyFloat) {
      this.float(value.value);
      return;
    }
    if (this.getMemo(value)) return;
    // Containers are written recursively: their depth is limited as checkStateValue limits it.
    const nests = Array.isArray(value) || value instanceof Map || isPlainObject(value);
    if (!nests) {
      this.object(value);
      return;
    }
    if (++this.depth > MAX_NESTING) throw new FormatError("PICKLE_LIMIT", `the state is nested deeper than ${MAX_NESTING} levels`);
    try {
      this.object(value);
    } finally {
      this.depth--;
    }
  }

  private object(value: object): void {
    if (Array.isArray(value)) {
      const kind = tupleKind(value);
      if (kind === "tuple") this.tuple(value);
      else if (kind === "torch.Size") {
        // torch.Size((2, 3)): the items are one tuple argument, as Python's __reduce__ writes them.
        this.reduce("torch", "Size", () => {
          this.tuple(value.slice());
          this.byte(Op.TUPLE1);
        }, value);
      } else this.list(value);
    } else if (value instanceof Uint8Array) {
      this.reduce("_codecs", "encode", () => {
        this.string(Buffer.from(value.buffer, value.byteOffset, value.byteLength).toString("latin1"), false);
        this.string("latin1");
        this.byte(Op.TUPLE2);
      }, value);
    } else if (value instanceof Map) {
      this.dict(value, [...value.keys()], (key) => value.get(key));
    } else if (isPlainObject(value)) {
      const record = value as Record<string, unknown>;
      this.dict(value, Object.keys(record), (key) => record[key as string]);
    } else if (!this.encodeObject(this, value)) {
      throw new FormatError("PICKLE_UNSUPPORTED", `a ${value.constructor?.name ?? "value"} cannot be saved in a state`);
    }
  }

  private list(list: unknown[]): void {
    this.byte(Op.EMPTY_LIST);
    this.memoize(list);
    for (let start = 0; start < list.length; start += BATCH_SIZE) {
      this.byte(Op.MARK);
      const end = Math.min(list.length, start + BATCH_SIZE);
      for (let i = start; i < end; i++) this.value(list[i], list, i);
      this.byte(Op.APPENDS);
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

  private dict(dict: object, keys: unknown[], valueOf: (key: unknown) => unknown): void {
    const ordered = isOrderedDict(dict);
    if (ordered) {
      this.global("collections", "OrderedDict");
      this.byte(Op.EMPTY_TUPLE);
      this.byte(Op.REDUCE);
    } else {
      this.byte(Op.EMPTY_DICT);
    }
    this.memoize(dict);
    for (let start = 0; start < keys.length; start += BATCH_SIZE) {
      this.byte(Op.MARK);
      const end = Math.min(keys.length, start + BATCH_SIZE);
      for (let i = start; i < end; i++) {
        const key = keys[i];
        this.value(key);
        this.value(valueOf(key), dict, key);
      }
      this.byte(Op.SETITEMS);
    }
    const attributes = ordered ? getOrderedDictAttributes(dict) : undefined;
    if (attributes !== undefined) {
      this.value(attributes);
      this.byte(Op.BUILD);
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

  /** Writes MARK. */
  mark(): void {
    this.byte(Op.MARK);
  }

  /**
   * Writes a tuple of safe integers (a shape, strides), not memoized: the bytes `tuple(items, [])`
   * writes, without its per-item dispatch.
   */
  intTuple(items: readonly number[]): void {
    const n = items.length;
    if (n === 0) {
      this.byte(Op.EMPTY_TUPLE);
      return;
    }
    if (n > 3) this.byte(Op.MARK);
    for (let i = 0; i < n; i++) {
      const item = items[i]!;
      if (Number.isSafeInteger(item) && !Object.is(item, -0)) this.int(item);
      else this.float(item);
    }
    this.byte(n > 3 ? Op.TUPLE : Op.TUPLE1 + n - 1);
  }

  /** Writes `pid` (a tuple of items) as a persistent id. */
  persistentId(items: readonly unknown[]): void {
    this.tuple(items, []);
    this.byte(Op.BINPERSID);
  }

  int(value: number | bigint): void {
    if (typeof value === "number" && value >= 0 && value < 0x100) {
      this.byte(Op.BININT1);
      this.byte(value);
    } else if (typeof value === "number" && value >= 0 && value < 0x10000) {
      this.byte(Op.BININT2);
      this.ensure(2);
      this.view.setUint16(this.length, value, true);
      this.length += 2;
    } else if (typeof value === "number" && value >= BIG_INT32_MIN && value <= BIG_INT32_MAX) {
      this.byte(Op.BININT);
      this.ensure(4);
      this.view.setInt32(this.length, value, true);
      this.length += 4;
    } else {
      const bytes = encodeLong(BigInt(value));
      this.byte(Op.LONG1);
      this.byte(bytes.length);
      this.bytes(bytes);
    }
  }

  float(value: number): void {
    this.byte(Op.BINFLOAT);
    this.ensure(8);
    this.view.setFloat64(this.length, value, false);
    this.length += 8;
  }

  string(value: string, memoize = true): void {
    const memoized = memoize && value.length <= MEMO_STRING_LENGTH;
    if (memoized && isDecimalKey(value)) {
      this.decimalString(Number(value));
      return;
    }
    if (memoized) {
      const index = this.stringMemo.get(value);
      if (index !== undefined) {
        this.memoGet(index);
        return;
      }
    }
    // Encoded straight into the pickle: no intermediate buffer per string (states have thousands of keys).
    if (value.length <= MEMO_STRING_LENGTH && this.shortAscii(value)) {
      // written
    } else {
      const length = Buffer.byteLength(value, "utf8");
      this.byte(Op.BINUNICODE);
      this.ensure(4 + length);
      this.view.setUint32(this.length, length, true);
      this.length += 4;
      this.length += this.buffer.write(value, this.length, length, "utf8");
    }
    if (memoized) this.stringMemo.set(value, this.newMemoIndex());
  }

  /**
   * Writes the string of `n`, a non-negative integer (what `string(String(n))` writes, memo
   * included), without making the string.
   */
  decimalString(n: number): void {
    if (!(Number.isInteger(n) && n >= 0 && n <= MAX_DECIMAL_KEY)) {
      this.string(String(n));
      return;
    }
    const index = this.decimalMemo[n];
    if (index !== undefined) {
      this.memoGet(index);
      return;
    }
    let digits = 1;
    for (let rest = n; rest >= 10; rest = Math.floor(rest / 10)) digits++;
    this.ensure(5 + digits);
    const buffer = this.buffer;
    buffer[this.length] = Op.BINUNICODE;
    this.view.setUint32(this.length + 1, digits, true);
    let rest = n;
    for (let i = this.length + 4 + digits; i > this.length + 4; i--) {
      buffer[i] = 48 + (rest % 10);
      rest = Math.floor(rest / 10);
    }
    this.length += 5 + digits;
    this.decimalMemo[n] = this.newMemoIndex();
  }

  /**
   * Writes BINUNICODE of a short ASCII string byte by byte (a native UTF-8 encoder call costs more
   * than the copy for keys like "layers.3.weight"); false, with nothing written, if it is not ASCII.
   */
  private shortAscii(value: string): boolean {
    const n = value.length;
    this.ensure(5 + n);
    const buffer = this.buffer;
    const at = this.length + 5;
    for (let i = 0; i < n; i++) {
      const code = value.charCodeAt(i);
      if (code > 0x7f) return false;
      buffer[at + i] = code;
    }
    buffer[this.length] = Op.BINUNICODE;
    this.view.setUint32(this.length + 1, n, true);
    this.length = at + n;
    return true;
  }

  private getMemo(value: object): boolean {
    const index = this.memo.get(value);
    if (index === undefined) return false;
    this.memoGet(index);
    return true;
  }

  /** Memoizes the object on top of the pickle stack without a key (see EncodeFirst); returns its index. */
  putMemo(): number {
    return this.newMemoIndex();
  }

  /** Writes a reference to memo entry `index` (from putMemo). */
  getMemoEntry(index: number): void {
    this.memoGet(index);
  }

  /** Records `value` as the object on top of the pickle stack, so later references reuse it. */
  memoize(value: object): void {
    this.memo.set(value, this.newMemoIndex());
  }

  private newMemoIndex(): number {
    const index = this.memoCount++;
    if (index < 0x100) {
      this.byte(Op.BINPUT);
      this.byte(index);
    } else {
      this.byte(Op.LONG_BINPUT);
      this.ensure(4);
      this.view.setUint32(this.length, index, true);
      this.length += 4;
    }
    return index;
  }

  private memoGet(index: number): void {
    if (index < 0x100) {
      this.byte(Op.BINGET);
      this.byte(index);
    } else {
      this.byte(Op.LONG_BINGET);
      this.ensure(4);
      this.view.setUint32(this.length, index, true);
      this.length += 4;
    }
  }

  byte(value: number): void {
    this.ensure(1);
    this.buffer[this.length++] = value;
  }

  private bytes(bytes: Uint8Array): void {
    this.ensure(bytes.length);
    this.buffer.set(bytes, this.length);
    this.length += bytes.length;
  }

  private ascii(text: string): void {
    this.ensure(text.length);
    this.length += this.buffer.write(text, this.length, "latin1");
  }

  private ensure(extra: number): void {
    if (this.length + extra <= this.buffer.length) return;
    let size = this.buffer.length * 2;
    while (size < this.length + extra) size *= 2;
    const grown = Buffer.alloc(size);
    grown.set(this.buffer.subarray(0, this.length));
    this.buffer = grown;
    this.view = new DataView(grown.buffer, grown.byteOffset, grown.byteLength);
  }
}

/** Two's complement, little-endian, shortest form (Python's `encode_long`). */
function encodeLong(value: bigint): Uint8Array {
  if (value === 0n) return new Uint8Array(0);
  const bytes: number[] = [];
  let rest = value;
  for (;;) {
    bytes.push(Number(rest & 0xffn));
    rest >>= 8n;
    const signBitSet = (bytes[bytes.length - 1]! & 0x80) !== 0;
    if ((rest === 0n && !signBitSet) || (rest === -1n && signBitSet)) break;
  }
  if (bytes.length > 255) throw new FormatError("PICKLE_LIMIT", "an int longer than 255 bytes cannot be saved");
  return Uint8Array.from(bytes);
}

/** Decimal strings up to this value are memoized in `decimalMemo`. */
const MAX_DECIMAL_KEY = 999_999_999;

/** "0", "7", "12345": digits without a leading zero, at most 9 of them (what decimalString memoizes). */
function isDecimalKey(value: string): boolean {
  const n = value.length;
  if (n === 0 || n > 9) return false;
  const first = value.charCodeAt(0);
  if (first < 48 || first > 57 || (first === 48 && n > 1)) return false;
  for (let i = 1; i < n; i++) {
    const code = value.charCodeAt(i);
    if (code < 48 || code > 57) return false;
  }
  return true;
}

function isPlainObject(value: object): boolean {
  const prototype = Object.getPrototypeOf(value);
  return prototype === Object.prototype || prototype === null;
}
