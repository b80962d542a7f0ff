import type { ShardedTensor } from "../tensor/sharded-tensor.js";
import type { Tensor } from "../tensor/tensor.js";

/**
 * Python-faithful state values.
 *
 * A state is a tree of plain JavaScript values; the few distinctions JavaScript lacks are kept as
 * follows, so that a PyTorch file loaded here and saved back gives Python what it started with:
 *
 * | Python                      | JavaScript                                                     |
 * |-----------------------------|----------------------------------------------------------------|
 * | int                         | number that is a safe integer; bigint (beyond ±2^53 on load)   |
 * | float                       | any other number (1.5, 1e300, 2 ** 53); a whole-valued float   |
 * |                             | (1.0) read from a file is a number with a hidden mark on its   |
 * |                             | container; `new PyFloat(1)` forces one                          |
 * | str, bool, None             | string, boolean, null                                          |
 * | bytes                       | Uint8Array                                                     |
 * | list / tuple / torch.Size   | Array; tuples carry a hidden mark (`tuple(...)`, `isTuple`)     |
 * | dict with str keys          | plain object, in the file's key order                          |
 * | dict with other keys        | Map (int keys as in optimizer state), also used for str keys   |
 * |                             | whose order a plain object cannot keep ("10" before "2")       |
 * | OrderedDict                 | object or Map with a hidden mark (`orderedDict`, `isOrderedDict`)|
 * | torch.Tensor / Parameter    | Tensor                                                         |
 * | torch.float32 (a dtype)     | PyDType                                                        |
 *
 * Hidden marks live in WeakMaps keyed by the container: they never show up in `Object.keys`,
 * JSON or deep-equality checks, and they follow the container object, not copies of it.
 */
export type StateValue =
  | Tensor
  | ShardedTensor
  | number
  | bigint
  | string
  | boolean
  | null
  | Uint8Array
  | PyFloat
  | PyDType
  | StateValue[]
  | StateDict
  | Map<StateKey, StateValue>;

export type StateKey = string | number | bigint | boolean | null;

export interface StateDict {
  [key: string]: StateValue;
}

/** A Python float whose value is a whole number, when it must not be written as an int. */
export class PyFloat {
  constructor(readonly value: number) {}

  valueOf(): number {
    return this.value;
  }
}

/** A `torch.dtype` object stored as a value (e.g. `torch.float32`). */
export class PyDType {
  constructor(readonly name: string) {}
}

/**
 * The `torch.<name>` dtype objects a state may hold as values: the names the reader accepts and
 * the writer may write (any other name would be a global `torch.load` cannot find).
 */
export const PY_DTYPE_NAMES: ReadonlySet<string> = new Set([
  "float32", "float64", "float16", "bfloat16", "int8", "uint8", "int16", "int32", "int64", "bool",
  "complex64", "complex128", "float", "double", "half", "long", "int", "short",
]);

export type TupleKind = "tuple" | "torch.Size";

const tupleKinds = new WeakMap<unknown[], TupleKind>();
const orderedDictAttributes = new WeakMap<object, StateDict | undefined>();
const floatSlots = new WeakMap<object, Set<unknown>>();

/** An array that is saved as a Python tuple. */
export function tuple<T extends StateValue>(...items: T[]): T[] {
  return markTuple(items);
}

/** Marks `array` as a tuple (or `torch.Size`) and returns it. */
export function markTuple<T extends unknown[]>(array: T, kind: TupleKind = "tuple"): T {
  tupleKinds.set(array, kind);
  return array;
}

export function isTuple(value: unknown): value is StateValue[] {
  return Array.isArray(value) && tupleKinds.has(value);
}

export function tupleKind(value: unknown[]): TupleKind | undefined {
  return tupleKinds.get(value);
}

/** Marks a dict (object or Map) as a `collections.OrderedDict`, with optional instance attributes. */
export function orderedDict<T extends object>(dict: T, attributes?: StateDict): T {
  orderedDictAttributes.set(dict, attributes);
  return dict;
}

export function isOrderedDict(value: unknown): boolean {
  return typeof value === "object" && value !== null && orderedDictAttributes.has(value);
}

/** The attributes an OrderedDict carried in Python (PyTorch puts `_metadata` there). */
export function getOrderedDictAttributes(dict: object): StateDict | undefined {
  return orderedDictAttributes.get(dict);
}

/** Records that `container[key]` holds a Python float even when its value is whole. */
export function markFloatSlot(container: object, key: unknown): void {
  let slots = floatSlots.get(container);
  if (slots === undefined) floatSlots.set(container, (slots = new Set()));
  slots.add(key);
}

export function isFloatSlot(container: object, key: unknown): boolean {
  return floatSlots.get(container)?.has(key) ?? false;
}

/** True when the string is an array index, which plain objects list first, in numeric order. */
export function isArrayIndexKey(key: string): boolean {
  if (key.length === 0 || key.length > 10) return false;
  const n = Number(key);
  return Number.isInteger(n) && n >= 0 && n < 4294967295 && String(n) === key;
}

/** True when a plain object would list `keys` in exactly this order. */
export function objectKeepsOrder(keys: Iterable<string>): boolean {
  let last = -1;
  let sawName = false;
  for (const key of keys) {
    if (isArrayIndexKey(key)) {
      const index = Number(key);
      if (sawName || index <= last) return false;
      last = index;
    } else {
      sawName = true;
    }
  }
  return true;
}

/** Sets an own property, even one named `__proto__`, without touching the prototype. */
export function setOwn(object: StateDict, key: string, value: StateValue): void {
  if (key === "__proto__") {
    Object.defineProperty(object, key, { value, enumerable: true, writable: true, configurable: true });
  } else {
    object[key] = value;
  }
}
