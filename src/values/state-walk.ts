// The walk over a state that checks it can be saved and counts its storages (state-check.ts has
// the functions that run it).
import { ShardedTensor } from "../tensor/sharded-tensor.js";
import { DTYPES } from "../tensor/dtype.js";
import { newStorageVisit, type Storage } from "../tensor/storage.js";
import { Tensor } from "../tensor/tensor.js";
import { ATTRIBUTES, describeValue, formatKey, formatKeyPath, type KeySegment } from "./key-path.js";
import { PY_DTYPE_NAMES, PyDType, PyFloat, getOrderedDictAttributes, isTuple, tupleKind } from "./py-values.js";
import { keepShape } from "../keep-shapes.js";

/**
 * Containers (arrays, tuples, objects, Maps) nested deeper than this are refused. The pickler
 * recurses and has the same limit, so whatever passes here can be written.
 */
export const MAX_NESTING = 1000;
/** Python ints are written as LONG1, whose length is one byte: at most 255 bytes of two's complement. */
const MAX_INT_BYTES = 255;
const INT_LIMIT = 1n << BigInt(MAX_INT_BYTES * 8 - 1);
/** Bytes are pickled as a latin-1 string (protocol 2 has no bytes opcode): V8's longest string. */
const MAX_BYTES_LENGTH = 2 ** 29 - 24;

const WHAT_A_STATE_HOLDS = "a state holds tensors, numbers, bigints, strings, booleans, null, bytes (Uint8Array), arrays, tuples, plain objects and Maps";
const WHAT_A_KEY_CAN_BE = "Map keys must load back as hashable Python keys: strings, numbers, bigints, booleans, null, or tuples of these";

/**
 * The keys of the large plain objects a walk met (LISTED_KEYS_FROM keys or more), by object, in
 * Object.keys order, for a pickler that writes the same state next. V8 sorts the keys of an object
 * that many keys made a dictionary on every Object.keys call (about 4 ms for a dict of 20,000
 * here, once for the check and once for the pickle); a small object's come from a cache.
 */
export type ObjectKeys = ReadonlyMap<object, readonly string[]>;
const LISTED_KEYS_FROM = 64;

/** How many storages a state's tensors view (each once: views share one) and their bytes. */
export interface StorageTotals {
  count: number;
  bytes: number;
}

/** What is wrong: a value or key no file can hold, or one beyond a limit (nesting, int length). */
export type UnsaveableKind = "unsupported" | "limit";

/** Makes the error thrown for a refused value; the message names its key path. */
export type UnsaveableError = (message: string, kind: UnsaveableKind) => Error;

type Frame =
  | { kind: "array"; container: unknown[]; segment: KeySegment; index: number; tuple: boolean }
  | { kind: "object"; container: Record<string, unknown>; segment: KeySegment; keys: string[]; index: number; attributesDone: boolean }
  | { kind: "map"; container: Map<unknown, unknown>; segment: KeySegment; entries: Iterator<[unknown, unknown]>; attributesDone: boolean };

/** The root has no segment: `fail` then names the root itself. */
const NO_SEGMENT = Symbol("root");

/** @internal The walk itself; checkStateValue, findUnsaveable and inspectState (state-check.ts) are the API. */
export class StateWalk {
  private readonly frames: Frame[] = [];
  private readonly seen = new Set<object>();
  private readonly tuplesOnPath = new Set<unknown[]>();
  /**
   * Marks the storages counted in storageBytes (see Storage.markVisited; the walk is synchronous),
   * or undefined for a walk that only checks (the dumper's): no work per tensor beyond the check.
   */
  private readonly storageVisit: number | undefined;
  /** The bytes of the storages of the tensors met so far, each storage once. */
  storageBytes = 0;
  /** How many storages those are. */
  storageCount = 0;
  /** The keys of the large plain objects met so far (see ObjectKeys). */
  readonly objectKeys = new Map<object, string[]>();
  /** With `totalsByTopKey`: the storage totals under each key of the root object (see StateInspection). */
  readonly totalsByKey = new Map<string, StorageTotals>();
  /** The root object's frame, and the totals of the key of it being walked. */
  private rootFrame: Frame | undefined;
  private keyTotals: StorageTotals | undefined;

  constructor(
    private readonly root: string,
    private readonly toError: UnsaveableError,
    countStorageBytes = false,
    private readonly totalsByTopKey = false,
  ) {
    this.storageVisit = countStorageBytes ? newStorageVisit() : undefined;
  }

  run(value: unknown): void {
    this.visit(value, NO_SEGMENT);
    const { frames } = this;
    if (this.totalsByTopKey && frames.length === 1) this.rootFrame = frames[0];
    while (frames.length > 0) {
      const frame = frames[frames.length - 1]!;
      const next = this.nextChild(frame);
      if (next === undefined) {
        frames.pop();
        if (frame.kind === "array" && frame.tuple) this.tuplesOnPath.delete(frame.container);
        continue;
      }
      this.visit(next[1], next[0]);
    }
  }

  /** The next [segment, value] of a container, in the order the pickler writes them; undefined when done. */
  private nextChild(frame: Frame): [KeySegment, unknown] | undefined {
    switch (frame.kind) {
      // Tensors, the most common leaves, need no check: skipped here, with no pair made for them.
      case "array": {
        const { container } = frame;
        while (frame.index < container.length) {
          const i = frame.index++;
          const child = container[i];
          if (!(child instanceof Tensor)) return [i, child];
          this.count(child.storage);
        }
        return undefined;
      }
      case "object": {
        const { container, keys } = frame;
        while (frame.index < keys.length) {
          const key = keys[frame.index++]!;
          if (frame === this.rootFrame) this.enterTopKey(key);
          const child = container[key];
          if (!(child instanceof Tensor)) return [key, child];
          this.count(child.storage);
        }
        return this.attributesOf(frame);
      }
      case "map": {
        const entry = frame.entries.next();
        return entry.done === true ? this.attributesOf(frame) : entry.value;
      }
    }
  }

  private attributesOf(frame: Extract<Frame, { attributesDone: boolean }>): [KeySegment, unknown] | undefined {
    if (frame.attributesDone) return undefined;
    frame.attributesDone = true;
    const attributes = getOrderedDictAttributes(frame.container);
    return attributes === undefined ? undefined : [ATTRIBUTES, attributes];
  }

  private visit(value: unknown, segment: KeySegment): void {
    switch (typeof value) {
      case "number":
      case "boolean":
        return;
      case "string":
        if (!isWellFormed(value)) this.fail(segment, "a string with an unpaired surrogate (not valid Unicode) cannot be written as UTF-8");
        return;
      case "bigint":
        if (!intFits(value)) this.fail(segment, `an int longer than ${MAX_INT_BYTES} bytes cannot be saved`, "limit");
        return;
      case "undefined":
        return this.fail(segment, "undefined cannot be saved in a state (use null for Python's None, or leave the key out)");
      case "object":
        if (value === null) return;
        break;
      default:
        return this.fail(segment, `${describeValue(value)} cannot be saved in a state (${WHAT_A_STATE_HOLDS})`);
    }
    if (value instanceof Tensor) return this.count(value.storage);
    if (value instanceof ShardedTensor) {
      this.count(value.shard.storage);
      // Pickled as a dict holding two tuples (see sharded-record.ts): two levels below this one.
      if (this.frames.length + 2 > MAX_NESTING) this.fail(segment, `the state is nested deeper than ${MAX_NESTING} levels (a ShardedTensor is saved as a dict of tuples)`, "limit");
      return;
    }
    if (value instanceof PyFloat) {
      if (typeof value.value !== "number") this.fail(segment, `a PyFloat must hold a number, not ${describeValue(value.value)}`);
      return;
    }
    if (value instanceof PyDType) {
      if (!PY_DTYPE_NAMES.has(value.name)) this.fail(segment, `PyDType(${JSON.stringify(value.name)}) is not a torch dtype (${[...PY_DTYPE_NAMES].join(", ")})`);
      return;
    }
    if (value instanceof Uint8Array) {
      if (value.byteLength > MAX_BYTES_LENGTH) this.fail(segment, `bytes longer than ${MAX_BYTES_LENGTH} cannot be saved as a bytes value (these are ${value.byteLength}): save them as a uint8 Tensor`, "limit");
      return;
    }
    if (ArrayBuffer.isView(value) || value instanceof ArrayBuffer) {
      return this.fail(segment, `${describeValue(value)} cannot be saved as it is; wrap it with Tensor.from(array, { shape })`);
    }
    const isArray = Array.isArray(value);
    const isMap = value instanceof Map;
    if (!isArray && !isMap && !isPlainObject(value)) return this.fail(segment, `${describeValue(value)} cannot be saved in a state (${WHAT_A_STATE_HOLDS})`);

    if (this.seen.has(value)) {
      // Shared and cyclic lists and dicts are fine (the pickler memoizes them first); a tuple is
      // memoized only once complete, so one met again inside itself cannot be written.
      if (isArray && this.tuplesOnPath.has(value)) this.fail(segment, "a tuple that contains itself cannot be saved (Python could not build it)");
      return;
    }
    if (this.frames.length >= MAX_NESTING) this.fail(segment, `the state is nested deeper than ${MAX_NESTING} levels`, "limit");
    this.seen.add(value);
    if (isArray) {
      if (tupleKind(value) === "torch.Size") this.checkSize(value, segment);
      const tuple = isTuple(value);
      if (tuple) this.tuplesOnPath.add(value);
      this.frames.push({ kind: "array", container: value, segment, index: 0, tuple });
    } else if (isMap) {
      this.checkKeys(value, segment);
      this.frames.push({ kind: "map", container: value, segment, entries: value.entries(), attributesDone: false });
    } else {
      const container = value as Record<string, unknown>;
      const keys = Object.keys(container);
      if (keys.length >= LISTED_KEYS_FROM) this.objectKeys.set(container, keys);
      this.frames.push({ kind: "object", container, segment, keys, index: 0, attributesDone: false });
    }
  }

  private count(storage: Storage): void {
    if (this.storageVisit === undefined || storage.indexInVisit(this.storageVisit) >= 0) return;
    storage.markVisited(this.storageVisit, 0);
    const bytes = storage.numel * DTYPES[storage.dtype].itemSize; // without reading bytes a reader left pending
    this.storageBytes += bytes;
    this.storageCount++;
    if (this.keyTotals !== undefined) {
      this.keyTotals.count++;
      this.keyTotals.bytes += bytes;
    }
  }

  private enterTopKey(key: string): void {
    this.keyTotals = { count: 0, bytes: 0 };
    this.totalsByKey.set(key, this.keyTotals);
  }

  /** torch.Size holds ints (the reader, like PyTorch, refuses anything else). */
  private checkSize(size: unknown[], segment: KeySegment): void {
    size.forEach((item, i) => {
      if (typeof item !== "number" || !Number.isSafeInteger(item)) {
        this.frames.push({ kind: "array", container: size, segment, index: i, tuple: true }); // so the path names the item
        this.fail(i, `a torch.Size holds ints, not ${typeof item === "number" ? item : describeValue(item)}`);
      }
    });
  }

  /** Checks the keys of `map` (at `segment`, one level below the frames on the stack). */
  private checkKeys(map: Map<unknown, unknown>, segment: KeySegment): void {
    const depth = this.frames.length + 1;
    let kind: "string" | "number" | undefined;
    let mixed = false;
    for (const key of map.keys()) {
      if (typeof key === "string" || typeof key === "number") {
        if (typeof key === "string" && !isWellFormed(key)) this.fail(segment, `the Map key ${formatKey(key)} is a string with an unpaired surrogate (not valid Unicode), which cannot be written as UTF-8`);
        if (kind !== undefined && kind !== typeof key) mixed = true;
        kind = typeof key as "string" | "number";
      } else {
        mixed = true;
        this.checkKey(key, depth, segment);
      }
    }
    // Distinct JavaScript keys can be one Python key (1, 1n, true, 1.0; equal tuples): only possible
    // when the keys are not all strings or all numbers.
    if (!mixed) return;
    const canonical = new Map<string, unknown>();
    const nan = { count: 0 };
    for (const key of map.keys()) {
      const id = canonicalKey(key, nan);
      if (canonical.has(id)) {
        this.fail(segment, `the Map keys ${formatKey(canonical.get(id))} and ${formatKey(key)} are one key in Python, so the loaded dict would keep only one of them`);
      }
      canonical.set(id, key);
    }
  }

  /** A key other than a string or number: a hashable scalar, or a tuple of them within the depth limit. */
  private checkKey(key: unknown, depth: number, segment: KeySegment): void {
    const pending: [unknown, number][] = [[key, depth + 1]];
    while (pending.length > 0) {
      const [item, level] = pending.pop()!;
      switch (typeof item) {
        case "number":
        case "boolean":
          continue;
        case "string":
          if (!isWellFormed(item)) this.fail(segment, `the Map key ${formatKey(key)} holds a string with an unpaired surrogate (not valid Unicode), which cannot be written as UTF-8`);
          continue;
        case "bigint":
          if (!intFits(item)) this.fail(segment, `a Map key that is an int longer than ${MAX_INT_BYTES} bytes cannot be saved`, "limit");
          continue;
        default:
          break;
      }
      if (item === null || item instanceof PyFloat) continue;
      if (isTuple(item)) {
        if (level > MAX_NESTING) this.fail(segment, `a Map key is a tuple nested deeper than ${MAX_NESTING} levels`, "limit");
        for (const inner of item) pending.push([inner, level + 1]);
        continue;
      }
      const problem = item === key ? `a Map key cannot be ${describeValue(item)}` : `the Map key ${formatKey(key)} holds ${describeValue(item)}, which a tuple key cannot hold`;
      this.fail(segment, `${problem} (${WHAT_A_KEY_CAN_BE})${keyHint(item)}`);
    }
  }

  private fail(segment: KeySegment, problem: string, kind: UnsaveableKind = "unsupported"): never {
    // Each frame holds the segment that reached it; the root's is NO_SEGMENT.
    const path = this.frames.map((frame) => frame.segment).filter((s) => s !== NO_SEGMENT);
    if (segment !== NO_SEGMENT) path.push(segment);
    throw this.toError(`${formatKeyPath(this.root, path)}: ${problem}`, kind);
  }

  static {
    // storageBytes passes 2^31 for a state over 2 GiB: a double from the start (keep-shapes.ts).
    const kept = new StateWalk("", undefined as never);
    kept.storageBytes = kept.storageCount = 0.5;
    keepShape(kept);
  }
}

function keyHint(key: unknown): string {
  if (Array.isArray(key)) return " (mark it as a tuple with tuple(...) or markTuple(array))";
  if (key instanceof Tensor) return " (a tensor key would load as a new tensor, which no lookup could match)";
  if (key instanceof Uint8Array) return " (bytes keys would load as new Uint8Arrays, which no lookup could match: use a string)";
  return "";
}

/** One string per Python key: keys that compare equal in Python get the same string. */
function canonicalKey(key: unknown, nan: { count: number }): string {
  switch (typeof key) {
    case "string":
      return JSON.stringify(key);
    case "bigint":
      return key.toString();
    case "boolean":
      return key ? "1" : "0";
    case "number":
      return numberKey(key, nan);
    default:
      break;
  }
  if (key instanceof PyFloat) return numberKey(key.value, nan);
  if (Array.isArray(key)) return `(${key.map((item) => canonicalKey(item, nan)).join(",")})`;
  return "None";
}

/** Whole numbers equal the Python int of the same value (hash(2.0) == hash(2)); NaNs equal nothing. */
function numberKey(value: number, nan: { count: number }): string {
  if (Number.isInteger(value)) return BigInt(value).toString();
  if (Number.isNaN(value)) return `nan#${nan.count++}`;
  return `f${value}`;
}

function intFits(value: bigint): boolean {
  return value >= -INT_LIMIT && value < INT_LIMIT;
}

function isWellFormed(text: string): boolean {
  return (text as string & { isWellFormed(): boolean }).isWellFormed();
}

function isPlainObject(value: object): boolean {
  const prototype = Object.getPrototypeOf(value) as object | null;
  return prototype === Object.prototype || prototype === null;
}
