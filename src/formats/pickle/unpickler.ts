import { FormatError } from "../../errors.js";
import { PyFloat, tupleKind } from "../../values/py-values.js";
import { finalize, isMarkedOrdered, markOrdered } from "./finalize-state.js";
import { HIGHEST_PROTOCOL, Op } from "./opcodes.js";
import { PickleReader, decodeLong, decodeUtf8, latin1 } from "./pickle-reader.js";
import { MISSING, PickleMemo } from "./pickle-memo.js";
import { RebuildFastPath, type FastRebuild } from "./rebuild-fast-path.js";

export { toIntValue } from "./pickle-reader.js";

/**
 * What the unpickler offers callables and BUILD: OrderedDict marks are kept here while reading
 * and applied at the end only to dicts still in the result (most are empty backward-hook dicts of
 * tensor rebuilds, gone by then; marking each would cost a WeakMap entry).
 */
export interface UnpickleContext {
  markOrderedDict(dict: Map<unknown, unknown>): void;
  isOrderedDict(dict: Map<unknown, unknown>): boolean;
  setOrderedDictAttributes(dict: Map<unknown, unknown>, attributes: Map<unknown, unknown>): void;
}

/** A global the allow-list lets a pickle call (REDUCE, NEWOBJ). */
export class PickleCallable {
  constructor(
    readonly qualifiedName: string,
    readonly call: (args: unknown[], context: UnpickleContext) => unknown,
  ) {}
}

/** The unpickler and the rebuild fast path call these as methods of the object given (with its `this`). */
export interface UnpickleOptions {
  /**
   * Resolves `module.name` to a value or a `PickleCallable`, or throws to refuse it. Nothing else
   * can be reached from a pickle: this is the whole attack surface.
   */
  findGlobal(module: string, name: string): unknown;
  /** Resolves a persistent id (PyTorch uses them for storages). */
  persistentLoad?(pid: unknown): unknown;
  /** Applies a BUILD (`__setstate__`) to an object made by a global; throws to refuse. */
  build?(object: unknown, state: unknown, context: UnpickleContext): void;
  /**
   * Runs tensor rebuilds through a faster path that gives the same result (rebuild-fast-path.ts);
   * `persistentLoad` must then give the same result when called again with an equal id, and not keep the id.
   */
  fastRebuild?: FastRebuild | undefined;
}

/**
 * What callables and BUILD get to mark dicts as OrderedDicts (finalize-state.ts). One object for
 * every unpickle: it holds nothing of one, and hot code must not call closures made per load
 * (keep-shapes.ts).
 */
const context: UnpickleContext = Object.freeze<UnpickleContext>({
  markOrderedDict: (dict) => markOrdered(dict, undefined),
  isOrderedDict: isMarkedOrdered,
  setOrderedDictAttributes: markOrdered,
});

/** Longest Python int accepted (LONG1/LONG4): 4 KiB is ~10,000 digits, far beyond any state. */
const MAX_LONG_BYTES = 4096;

/**
 * Reads a pickle (protocols 2–5) without executing anything: every global goes through
 * `options.findGlobal`. Containers are built with explicit stacks, so no input can recurse deeply,
 * and every length is checked against the bytes left before anything is allocated.
 */
export function unpickle(bytes: Uint8Array, options: UnpickleOptions): unknown {
  return unpickleAt(bytes, 0, options).value;
}

/**
 * Reads the pickle that starts at byte `start` of `bytes` and says where it ended (just after its
 * STOP): files that hold several pickles in a row (the legacy torch.save format) are read one
 * after the other. Byte offsets in errors count from the start of `bytes`.
 */
export function unpickleAt(bytes: Uint8Array, start: number, options: UnpickleOptions): { value: unknown; end: number } {
  const r = new PickleReader(bytes, start);
  let stack: unknown[] = [];
  const marks: unknown[][] = [];
  const memo = new PickleMemo();
  const fail = (code: string, message: string): never => {
    throw new FormatError(code, `${message} (at byte ${r.offset} of the pickle)`);
  };
  const pop = (): unknown => (stack.length > 0 ? stack.pop() : fail("PICKLE_STACK", "stack underflow"));
  const top = (): unknown => (stack.length > 0 ? stack[stack.length - 1] : fail("PICKLE_STACK", "stack underflow"));
  const popMark = (): unknown[] => {
    const items = stack;
    const outer = marks.pop();
    if (outer === undefined) fail("PICKLE_STACK", "no MARK to pop to");
    stack = outer!;
    return items;
  };
  const put = (index: number): void => memo.put(index, top());
  const get = (index: number): void => {
    const value = memo.get(index);
    if (value === MISSING) fail("PICKLE_MEMO", `memo entry ${index} read before it was written`);
    stack.push(value);
  };
  const dictAt = (what: string): Map<unknown, unknown> => {
    const dict = top();
    return dict instanceof Map ? dict : fail("PICKLE_TYPE", `${what} on a ${describe(dict)}, not a dict`);
  };
  const listAt = (what: string): unknown[] => {
    const list = top();
    return Array.isArray(list) ? list : fail("PICKLE_TYPE", `${what} on a ${describe(list)}, not a list`);
  };
  const setItems = (dict: Map<unknown, unknown>, items: unknown[]): void => {
    if (items.length % 2 !== 0) fail("PICKLE_TYPE", "SETITEMS with an odd number of items");
    for (let i = 0; i < items.length; i += 2) dict.set(dictKey(items[i]), items[i + 1]);
  };
  const callGlobal = (callable: unknown, args: unknown, opcode: string): unknown => {
    if (!(callable instanceof PickleCallable)) return fail("PICKLE_TYPE", `${opcode} on ${describe(callable)}, which cannot be called`);
    if (!Array.isArray(args)) return fail("PICKLE_TYPE", `${opcode} arguments must be a tuple, got ${describe(args)}`);
    try {
      const result = callable.call(args, context);
      // An array a callable made is a list unless the callable marked it (torch.Size does).
      if (Array.isArray(result) && tupleKind(result) === undefined) lists.add(result);
      return result;
    } catch (error) {
      if (error instanceof FormatError) throw error;
      throw new FormatError("PICKLE_CALL", `${callable.qualifiedName}(...) refused its arguments: ${(error as Error).message}`, { cause: error });
    }
  };

  // Tuples and lists are both arrays here. Most tuples only carry arguments (of tensor rebuilds,
  // persistent ids) and are garbage long before the end, so it is the lists (few in a state) that
  // are tracked: any other array still in the result is a tuple, marked in finalize(). Tracking
  // every tuple kept that garbage alive to the end, and copying it is most of what the garbage
  // collector did in a load of many small tensors. OrderedDicts carry their mark on themselves
  // (a symbol property, removed in finalize()) for the same reason.
  const lists = new Set<unknown[]>();
  const newTuple = (items: unknown[]): unknown[] => items;
  const newList = (items: unknown[]): unknown[] => {
    lists.add(items);
    return items;
  };

  const fast = options.fastRebuild;
  const fastPath =
    fast === undefined
      ? undefined
      : new RebuildFastPath(fast, { bytes, context, memo, options });

  const first = r.u8("the protocol");
  if (first !== Op.PROTO) fail("PICKLE_PROTOCOL", "not a pickle of protocol 2 or newer (no PROTO opcode at the start)");
  const protocol = r.u8("the protocol");
  if (protocol < 2 || protocol > HIGHEST_PROTOCOL) fail("PICKLE_PROTOCOL", `pickle protocol ${protocol} is not supported (2–5 are)`);

  for (;;) {
    const op = r.u8("an opcode");
    switch (op) {
      case Op.STOP: {
        if (marks.length > 0 || stack.length !== 1) fail("PICKLE_STACK", "STOP with an unbalanced stack");
        return { value: finalize(stack[0], lists), end: r.offset };
      }
      case Op.PROTO:
        r.u8("the protocol");
        break;
      case Op.FRAME:
        r.u64Length("a frame"); // frames only group bytes; reading stays linear
        break;
      case Op.MARK:
        if (fastPath !== undefined && stack.length > 0 && stack[stack.length - 1] === fast!.rebuild) {
          const end = fastPath.run(r.offset, stack);
          if (end >= 0) {
            r.moveTo(end);
            break;
          }
        }
        marks.push(stack);
        stack = [];
        break;
      case Op.POP:
        pop();
        break;
      case Op.POP_MARK:
        popMark();
        break;
      case Op.DUP:
        stack.push(top());
        break;
      case Op.NONE:
        stack.push(null);
        break;
      case Op.NEWTRUE:
        stack.push(true);
        break;
      case Op.NEWFALSE:
        stack.push(false);
        break;
      case Op.BININT:
        stack.push(r.i32("BININT"));
        break;
      case Op.BININT1:
        stack.push(r.u8("BININT1"));
        break;
      case Op.BININT2:
        stack.push(r.u16("BININT2"));
        break;
      case Op.LONG1:
      case Op.LONG4: {
        const n = op === Op.LONG1 ? r.u8("LONG1") : r.u32("LONG4");
        if (n > MAX_LONG_BYTES) fail("PICKLE_LIMIT", `an int of ${n} bytes exceeds the limit of ${MAX_LONG_BYTES}`);
        stack.push(decodeLong(r.take(n, "a long int")));
        break;
      }
      case Op.BINFLOAT: {
        const value = r.f64be("BINFLOAT");
        // A whole-valued float would read back as an int: keep the fact until finalize() marks it.
        stack.push(Number.isInteger(value) || Object.is(value, -0) ? new PyFloat(value) : value);
        break;
      }
      case Op.BINUNICODE:
        stack.push(decodeUtf8(r.take(r.u32("BINUNICODE"), "a string")));
        break;
      case Op.SHORT_BINUNICODE:
        stack.push(decodeUtf8(r.take(r.u8("SHORT_BINUNICODE"), "a string")));
        break;
      case Op.BINUNICODE8:
        stack.push(decodeUtf8(r.take(r.u64Length("BINUNICODE8"), "a string")));
        break;
      case Op.BINSTRING: {
        // Python 2 str: PyTorch reads these as latin-1 text (torch.load's default encoding).
        const n = r.i32("BINSTRING");
        if (n < 0) fail("PICKLE_LENGTH", "BINSTRING with a negative length");
        stack.push(latin1.decode(r.take(n, "a string")));
        break;
      }
      case Op.SHORT_BINSTRING:
        stack.push(latin1.decode(r.take(r.u8("SHORT_BINSTRING"), "a string")));
        break;
      case Op.BINBYTES:
        stack.push(r.take(r.u32("BINBYTES"), "bytes").slice());
        break;
      case Op.SHORT_BINBYTES:
        stack.push(r.take(r.u8("SHORT_BINBYTES"), "bytes").slice());
        break;
      case Op.BINBYTES8:
        stack.push(r.take(r.u64Length("BINBYTES8"), "bytes").slice());
        break;
      case Op.EMPTY_LIST:
        stack.push(newList([]));
        break;
      case Op.LIST: {
        const items = popMark(); // before `stack.` is read: popMark replaces the stack
        stack.push(newList(items));
        break;
      }
      case Op.APPEND: {
        const item = pop();
        listAt("APPEND").push(item);
        break;
      }
      case Op.APPENDS: {
        const items = popMark();
        const list = listAt("APPENDS");
        for (const item of items) list.push(item);
        break;
      }
      case Op.EMPTY_TUPLE:
        stack.push(newTuple([]));
        break;
      case Op.TUPLE: {
        const items = popMark();
        stack.push(newTuple(items));
        break;
      }
      case Op.TUPLE1:
      case Op.TUPLE2:
      case Op.TUPLE3: {
        const n = op - Op.TUPLE1 + 1;
        if (stack.length < n) fail("PICKLE_STACK", "stack underflow");
        stack.push(newTuple(stack.splice(stack.length - n, n)));
        break;
      }
      case Op.EMPTY_DICT:
        stack.push(new Map());
        break;
      case Op.DICT: {
        const dict = new Map();
        setItems(dict, popMark());
        stack.push(dict);
        break;
      }
      case Op.SETITEM: {
        const value = pop();
        const key = pop();
        dictAt("SETITEM").set(dictKey(key), value);
        break;
      }
      case Op.SETITEMS: {
        const items = popMark();
        setItems(dictAt("SETITEMS"), items);
        break;
      }
      case Op.BINPUT:
        put(r.u8("BINPUT"));
        break;
      case Op.LONG_BINPUT:
        put(r.u32("LONG_BINPUT"));
        break;
      case Op.MEMOIZE:
        put(memo.size);
        break;
      case Op.BINGET:
        get(r.u8("BINGET"));
        break;
      case Op.LONG_BINGET:
        get(r.u32("LONG_BINGET"));
        break;
      case Op.GLOBAL: {
        const module = r.line("a GLOBAL module");
        const name = r.line("a GLOBAL name");
        stack.push(options.findGlobal(module, name));
        break;
      }
      case Op.STACK_GLOBAL: {
        const name = pop();
        const module = pop();
        if (typeof module !== "string" || typeof name !== "string") fail("PICKLE_TYPE", "STACK_GLOBAL needs two strings");
        stack.push(options.findGlobal(module as string, name as string));
        break;
      }
      case Op.REDUCE: {
        const args = pop();
        const callable = pop();
        stack.push(callGlobal(callable, args, "REDUCE"));
        break;
      }
      case Op.NEWOBJ: {
        const args = pop();
        const cls = pop();
        stack.push(callGlobal(cls, args, "NEWOBJ"));
        break;
      }
      case Op.BUILD: {
        const state = pop();
        const object = top();
        if (options.build === undefined) fail("PICKLE_BUILD", `cannot set the state of ${describe(object)}`);
        options.build!(object, state, context);
        break;
      }
      case Op.BINPERSID: {
        const pid = pop();
        if (options.persistentLoad === undefined) fail("PICKLE_PERSID", "persistent ids are not allowed here");
        stack.push(options.persistentLoad!(pid));
        break;
      }
      default:
        return fail("PICKLE_OPCODE", `opcode 0x${op.toString(16).padStart(2, "0")} is not allowed in a state pickle`);
    }
  }
}

/** Dict keys must be hashable in Python; JavaScript Maps compare by identity, so only scalars and tuples. */
function dictKey(key: unknown): unknown {
  if (key instanceof PyFloat) return key.value;
  const type = typeof key;
  if (key === null || type === "string" || type === "number" || type === "bigint" || type === "boolean") return key;
  if (Array.isArray(key)) return key;
  throw new FormatError("PICKLE_TYPE", `a dict key must be a str, int, float, bool, None or tuple, got ${describe(key)}`);
}

function describe(value: unknown): string {
  if (value === null) return "None";
  if (value instanceof PickleCallable) return value.qualifiedName;
  if (value instanceof Map) return "dict";
  if (Array.isArray(value)) return "list or tuple";
  if (typeof value === "object") return value.constructor?.name ?? "object";
  return typeof value;
}
