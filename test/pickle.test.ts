import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { FormatError } from "../src/errors.js";
import { Op } from "../src/formats/pickle/opcodes.js";
import { Pickler, runToEnd } from "../src/formats/pickle/pickler.js";
import { unpickle } from "../src/formats/pickle/unpickler.js";
import { buildTorchObject, findTorchGlobal } from "../src/formats/torch/torch-globals.js";
import {
  PyFloat,
  getOrderedDictAttributes,
  isFloatSlot,
  isOrderedDict,
  isTuple,
  markTuple,
  orderedDict,
  tuple,
  tupleKind,
  type StateDict,
  type StateValue,
} from "../src/values/py-values.js";

function load(bytes: Uint8Array): unknown {
  return unpickle(bytes, { findGlobal: findTorchGlobal, build: buildTorchObject });
}

function roundTrip<T>(value: T): T {
  return load(Pickler.dump(value)) as T;
}

function refusedOnWrite(value: unknown, code: string, message: RegExp): void {
  assert.throws(() => Pickler.dump(value), (error: unknown) => {
    assert.ok(error instanceof FormatError, `expected a FormatError, got ${String(error)}`);
    assert.equal(error.code, code);
    assert.match(error.message, message);
    return true;
  });
}

describe("numbers", () => {
  test("whole-valued floats come back as numbers marked as float slots, and are written as floats again", () => {
    const state = { a: new PyFloat(1), b: 1.5, c: 2, list: [new PyFloat(3), 3], map: new Map<number, StateValue>([[1, new PyFloat(2)], [2, 2]]) };
    const bytes = Pickler.dump(state);
    const loaded = load(bytes) as { a: number; b: number; c: number; list: number[]; map: Map<number, number> };
    assert.equal(loaded.a, 1);
    assert.equal(isFloatSlot(loaded, "a"), true);
    assert.equal(isFloatSlot(loaded, "b"), false, "a fractional number needs no mark");
    assert.equal(isFloatSlot(loaded, "c"), false, "an int is not a float");
    assert.deepEqual(loaded.list, [3, 3]);
    assert.equal(isFloatSlot(loaded.list, 0), true);
    assert.equal(isFloatSlot(loaded.list, 1), false);
    assert.equal(isFloatSlot(loaded.map, 1), true);
    assert.equal(isFloatSlot(loaded.map, 2), false);
    assert.deepEqual(Pickler.dump(loaded), bytes, "saving what was loaded gives the same pickle");
  });

  test("a whole float at the root comes back as a PyFloat", () => {
    const loaded = roundTrip(new PyFloat(4));
    assert.ok(loaded instanceof PyFloat);
    assert.equal(loaded.value, 4);
  });

  test("-0, NaN and the infinities keep their identity as floats", () => {
    const loaded = roundTrip([-0, Number.NaN, Number.POSITIVE_INFINITY, Number.NEGATIVE_INFINITY, 0]);
    assert.ok(Object.is(loaded[0], -0));
    assert.ok(Number.isNaN(loaded[1]));
    assert.equal(loaded[2], Number.POSITIVE_INFINITY);
    assert.equal(loaded[3], Number.NEGATIVE_INFINITY);
    assert.ok(Object.is(loaded[4], 0));
    assert.equal(isFloatSlot(loaded, 0), true);
    assert.equal(isFloatSlot(loaded, 4), false, "0 is the int zero");
  });

  test("ints at every opcode boundary come back equal and as numbers when they fit exactly", () => {
    const cases: [number, number][] = [
      [0, Op.BININT1],
      [255, Op.BININT1],
      [256, Op.BININT2],
      [65535, Op.BININT2],
      [65536, Op.BININT],
      [2 ** 31 - 1, Op.BININT],
      [-1, Op.BININT],
      [-(2 ** 31), Op.BININT],
      [2 ** 31, Op.LONG1],
      [-(2 ** 31) - 1, Op.LONG1],
      [Number.MAX_SAFE_INTEGER, Op.LONG1],
      [Number.MIN_SAFE_INTEGER, Op.LONG1],
    ];
    for (const [value, opcode] of cases) {
      const bytes = Pickler.dump(value);
      assert.equal(bytes[2], opcode, `${value} is written with opcode 0x${opcode.toString(16)}`);
      const loaded = load(bytes);
      assert.equal(typeof loaded, "number", String(value));
      assert.equal(loaded, value);
    }
  });

  test("ints beyond 2^53 come back as bigints with their exact value", () => {
    assert.equal(load(Pickler.dump(2n ** 53n)), 2n ** 53n);
    assert.equal(load(Pickler.dump(2n ** 64n)), 2n ** 64n);
    assert.equal(load(Pickler.dump(2n ** 64n - 1n)), 2n ** 64n - 1n);
    assert.equal(load(Pickler.dump(-(2n ** 70n))), -(2n ** 70n));
    assert.equal(load(Pickler.dump(-(2n ** 63n))), -(2n ** 63n));
    assert.equal(load(Pickler.dump(2n ** 2000n)), 2n ** 2000n);
  });

  test("whole numbers that are not safe integers are written as floats, so they come back as numbers", () => {
    for (const value of [2 ** 53, -(2 ** 53), 2 ** 53 + 2, 1e300, -1e300, Number.MAX_VALUE]) {
      const bytes = Pickler.dump([value]);
      assert.equal(bytes[6], Op.BINFLOAT, `${value} is written as a float`); // after PROTO 2, EMPTY_LIST, BINPUT 0, MARK
      const loaded = load(bytes) as unknown[];
      assert.equal(typeof loaded[0], "number", String(value));
      assert.equal(loaded[0], value);
      assert.equal(isFloatSlot(loaded, 0), true, "and is saved back as a float");
    }
    assert.equal(Pickler.dump([Number.MAX_SAFE_INTEGER])[6], Op.LONG1, "the largest safe integer is still an int");
  });

  test("bigints that fit in a double come back as numbers", () => {
    assert.equal(load(Pickler.dump(5n)), 5);
    assert.equal(load(Pickler.dump(-128n)), -128);
    assert.equal(load(Pickler.dump(0n)), 0);
  });

  test("an int longer than 255 bytes is refused on write rather than truncated", () => {
    refusedOnWrite(2n ** 2100n, "PICKLE_LIMIT", /longer than 255 bytes/);
  });

  test("booleans and None round-trip", () => {
    assert.deepEqual(roundTrip([true, false, null]), [true, false, null]);
  });
});

describe("strings and bytes", () => {
  test("strings with any unicode, NULs and lone lengths round-trip", () => {
    const strings = ["", "a", "héllo", "日本語", "🎉 emoji", "\u0000nul", "x".repeat(65), "x".repeat(70_000)];
    assert.deepEqual(roundTrip(strings), strings);
  });

  test("a string repeated many times is written once and read back everywhere", () => {
    const list = Array.from({ length: 300 }, () => "weight");
    const bytes = Pickler.dump(list);
    assert.ok(bytes.length < 300 * 6, "repeats are memo references, not copies");
    assert.deepEqual(load(bytes), list);
  });

  test("a __proto__ key comes back as an own key and leaves every prototype alone", () => {
    const state = JSON.parse('{"first": 1, "__proto__": {"polluted": true}, "last": 2}') as StateDict;
    assert.ok(Object.hasOwn(state, "__proto__"));
    const loaded = roundTrip(state) as Record<string, unknown>;
    assert.ok(Object.hasOwn(loaded, "__proto__"));
    assert.deepEqual(Object.keys(loaded), ["first", "__proto__", "last"]);
    assert.equal(Object.getPrototypeOf(loaded), Object.prototype);
    assert.deepEqual(Object.getOwnPropertyDescriptor(loaded, "__proto__")?.value, { polluted: true });
    assert.equal(loaded["polluted"], undefined);
    assert.equal(({} as Record<string, unknown>)["polluted"], undefined);
  });

  test("bytes round-trip through _codecs.encode with every byte value", () => {
    const bytes = Uint8Array.from({ length: 256 }, (_, i) => i);
    const loaded = roundTrip({ bytes, empty: new Uint8Array(0) }) as { bytes: Uint8Array; empty: Uint8Array };
    assert.ok(loaded.bytes instanceof Uint8Array);
    assert.deepEqual([...loaded.bytes], [...bytes]);
    assert.equal(loaded.empty.length, 0);
  });
});

describe("dicts", () => {
  test("a dict with str keys comes back as a plain object in the same key order", () => {
    const state = { b: 1, a: 2, "layer.0.weight": 3 };
    const loaded = roundTrip(state);
    assert.deepEqual(loaded, state);
    assert.deepEqual(Object.keys(loaded), ["b", "a", "layer.0.weight"]);
  });

  test("a Map with int, bigint, bool, None, float, str and tuple keys keeps each key's type and order", () => {
    const key = tuple<StateValue>(1, "x");
    const map = new Map<unknown, StateValue>([
      [7, "seven"],
      [-3, "minus three"],
      [2n ** 64n, "big"],
      [true, "yes"],
      [null, "none"],
      [1.5, "float"],
      ["s", "str"],
      [key, "tuple"],
    ]);
    const loaded = roundTrip(map);
    assert.ok(loaded instanceof Map);
    const keys = [...loaded.keys()];
    assert.deepEqual(keys.slice(0, 7), [7, -3, 2n ** 64n, true, null, 1.5, "s"]);
    assert.deepEqual(keys[7], [1, "x"]);
    assert.ok(isTuple(keys[7]));
    assert.deepEqual([...loaded.values()], [...map.values()]);
  });

  test("a pickle whose buffer starts at an expected size has the same bytes, whether the estimate was short or long", () => {
    const state = { model: Object.fromEntries(Array.from({ length: 3000 }, (_, i) => [`layer.${i}`, [i, i / 3, "x".repeat(i % 50)]])) };
    const plain = Pickler.dump(state);
    for (const expectedBytes of [0, 100, plain.byteLength - 1, plain.byteLength, 10 << 20]) {
      const bytes = runToEnd(Pickler.dumpInSteps(state, Infinity, undefined, undefined, undefined, expectedBytes));
      assert.ok(Buffer.from(bytes).equals(Buffer.from(plain)), `expected ${expectedBytes} bytes`);
    }
    assert.deepEqual(load(plain), state);
  });

  test("the string keys of a large dict are written in full, without memo entries; small dicts' repeated keys are memo references; all load back", () => {
    const occurrences = (bytes: Uint8Array, text: string): number => Buffer.from(bytes).toString("latin1").split(text).length - 1;
    const keys = Array.from({ length: 100 }, (_, i) => `layer.${i}.weight`);
    const state = {
      model: Object.fromEntries(keys.map((key, i) => [key, i])),
      // The same names again (an EMA copy of the model): written again, not taken from a memo.
      ema: Object.fromEntries(keys.map((key, i) => [key, -i])),
      byNumber: Object.fromEntries(keys.map((_, i) => [String(i + 1000), i])),
      perParameter: keys.map((_, i) => ({ step: i, exp_avg: i / 2 })),
    };
    const bytes = Pickler.dump(state);
    assert.equal(occurrences(bytes, "layer.7.weight"), 2, "once per large dict");
    assert.equal(occurrences(bytes, "exp_avg"), 1, "a small dict's key is written once, then referenced");
    assert.equal(occurrences(bytes, "1042"), 1);
    // 63 keys are a small dict: memoized as before, so the second copy's keys are references.
    const small = Object.fromEntries(keys.slice(0, 63).map((key, i) => [key, i]));
    assert.equal(occurrences(Pickler.dump({ a: small, b: { ...small } }), "layer.7.weight"), 1);
    const loaded = load(bytes) as typeof state;
    assert.deepEqual(loaded, state);
    assert.deepEqual(Object.keys(loaded.ema), keys);
  });

  test("a dict whose integer-like str keys are out of numeric order comes back as a Map in file order", () => {
    const map = new Map<string, StateValue>([["10", 1], ["2", 2], ["name", 3], ["0", 4]]);
    const loaded = roundTrip(map);
    assert.ok(loaded instanceof Map, "a plain object would reorder the keys");
    assert.deepEqual([...loaded.entries()], [["10", 1], ["2", 2], ["name", 3], ["0", 4]]);
  });

  test("a dict whose integer-like str keys are already in object order becomes a plain object", () => {
    const loaded = roundTrip(new Map<string, StateValue>([["0", "a"], ["2", "b"], ["name", "c"]]));
    assert.ok(!(loaded instanceof Map));
    assert.deepEqual(Object.entries(loaded as StateDict), [["0", "a"], ["2", "b"], ["name", "c"]]);
  });

  test("an OrderedDict keeps its mark, its order and its attributes", () => {
    const metadata = orderedDict({ "": { version: 1 }, linear: { version: 2 } });
    const state = orderedDict({ "linear.weight": 1, "linear.bias": 2 }, { _metadata: metadata });
    const loaded = roundTrip(state);
    assert.ok(isOrderedDict(loaded));
    assert.deepEqual(Object.keys(loaded), ["linear.weight", "linear.bias"]);
    const attributes = getOrderedDictAttributes(loaded);
    assert.deepEqual(attributes, { _metadata: { "": { version: 1 }, linear: { version: 2 } } });
    assert.ok(isOrderedDict(attributes?.["_metadata"]));
  });

  test("an OrderedDict with int keys stays an ordered Map", () => {
    const loaded = roundTrip(orderedDict(new Map<number, StateValue>([[3, "c"], [1, "a"]])));
    assert.ok(loaded instanceof Map);
    assert.ok(isOrderedDict(loaded));
    assert.deepEqual([...loaded.keys()], [3, 1]);
  });

  test("an empty OrderedDict without attributes round-trips", () => {
    const loaded = roundTrip(orderedDict({}));
    assert.ok(isOrderedDict(loaded));
    assert.equal(getOrderedDictAttributes(loaded), undefined);
    assert.deepEqual(loaded, {});
  });

  test("dicts with more items than one SETITEMS batch keep all of them in order", () => {
    const state: StateDict = {};
    for (let i = 0; i < 2500; i++) state[`k${i}`] = i;
    const loaded = roundTrip(state);
    assert.deepEqual(Object.keys(loaded), Object.keys(state));
    assert.deepEqual(loaded, state);
  });
});

describe("lists, tuples and torch.Size", () => {
  test("tuples of every length come back as tuples and lists as lists", () => {
    const state = [tuple(), tuple(1), tuple(1, 2), tuple(1, 2, 3), tuple(1, 2, 3, 4, 5), [1, 2]];
    const loaded = roundTrip(state);
    assert.deepEqual(loaded, state);
    for (let i = 0; i < 5; i++) assert.equal(tupleKind(loaded[i]!), "tuple", `item ${i}`);
    assert.equal(isTuple(loaded[5]), false);
    assert.equal(isTuple(loaded), false);
  });

  test("a torch.Size comes back as a torch.Size", () => {
    const loaded = roundTrip({ size: markTuple([2, 3, 4], "torch.Size") });
    assert.deepEqual(loaded.size, [2, 3, 4]);
    assert.equal(tupleKind(loaded.size), "torch.Size");
  });

  test("lists longer than one APPENDS batch keep every item", () => {
    const list = Array.from({ length: 2500 }, (_, i) => i);
    assert.deepEqual(roundTrip(list), list);
  });
});

describe("sharing and cycles", () => {
  test("an object saved twice is one object after loading", () => {
    const sharedList = [1, 2];
    const sharedDict = { x: 1 };
    const sharedMap = new Map<number, StateValue>([[1, 1]]);
    const sharedTuple = tuple(1, 2);
    const state = { a: sharedList, b: sharedList, c: sharedDict, d: [sharedDict], e: sharedMap, f: sharedMap, g: sharedTuple, h: sharedTuple };
    const loaded = roundTrip(state);
    assert.equal(loaded.a, loaded.b);
    assert.equal(loaded.c, loaded.d[0]);
    assert.equal(loaded.e, loaded.f);
    assert.equal(loaded.g, loaded.h);
    assert.notEqual(loaded.a, sharedList, "a copy, not the original");
  });

  test("a list that contains itself round-trips as a cycle", () => {
    const list: StateValue[] = [1];
    list.push(list);
    const loaded = roundTrip(list);
    assert.equal(loaded[0], 1);
    assert.equal(loaded[1], loaded);
  });

  test("a dict that contains itself round-trips as a cycle, as a plain object", () => {
    const dict: StateDict = { name: "root" };
    dict["self"] = dict;
    dict["list"] = [dict];
    const loaded = roundTrip(dict);
    assert.ok(!(loaded instanceof Map));
    assert.equal(loaded["self"], loaded);
    assert.equal((loaded["list"] as StateValue[])[0], loaded);
  });

  test("a tuple that contains itself is refused on write, as Python could not build it either", () => {
    const items: StateValue[] = [];
    const inner = tuple<StateValue>(1, items);
    items.push(inner);
    refusedOnWrite(inner, "PICKLE_UNSUPPORTED", /tuple that contains itself/);
  });
});

describe("unsupported types", () => {
  /** A pickle whose only opcode is GLOBAL module.name. */
  const globalPickle = (module: string, name: string): Uint8Array =>
    Uint8Array.from([Op.PROTO, 2, Op.GLOBAL, ...Buffer.from(`${module}\n${name}\n`, "latin1"), Op.STOP]);

  test("complex tensors other than complex64 and Python complex numbers are refused as unsupported types, naming the global", () => {
    const cases: [string, string, RegExp][] = [
      ["torch", "ComplexDoubleStorage", /^complex tensors other than complex64 are not supported \(torch\.ComplexDoubleStorage holds complex128\); the supported dtypes are float32, .*complex64$/],
      ["torch", "ComplexHalfStorage", /^complex tensors other than complex64 are not supported \(torch\.ComplexHalfStorage holds complex32\)/],
      ["torch", "QInt8Storage", /^qint8 tensors are not supported \(torch\.QInt8Storage holds qint8\)/],
      ["__builtin__", "complex", /^Python complex numbers are not supported \(__builtin__\.complex\)/],
      ["builtins", "complex", /^Python complex numbers are not supported \(builtins\.complex\)/],
    ];
    for (const [module, name, message] of cases) {
      assert.throws(() => load(globalPickle(module, name)), (error: unknown) => {
        assert.ok(error instanceof FormatError);
        assert.equal(error.code, "PICKLE_UNSUPPORTED_TYPE");
        assert.match(error.message, message);
        assert.doesNotMatch(error.message, /allow-list/);
        return true;
      });
    }
    assert.doesNotThrow(() => load(globalPickle("torch", "ComplexFloatStorage")), "complex64 storages are supported");
  });
});

describe("limits and refusals", () => {
  function nested(depth: number): StateValue {
    let value: StateValue = [];
    for (let i = 1; i < depth; i++) value = [value];
    return value;
  }

  test("nesting of 1000 levels is written and read back", () => {
    let loaded = roundTrip(nested(1000));
    let depth = 1;
    while (Array.isArray(loaded) && loaded.length === 1) {
      loaded = loaded[0]!;
      depth++;
    }
    assert.equal(depth, 1000);
  });

  test("nesting deeper than 1000 levels is refused on write instead of overflowing the stack", () => {
    refusedOnWrite(nested(1001), "PICKLE_LIMIT", /nested deeper than 1000 levels/);
    refusedOnWrite(nested(200_000), "PICKLE_LIMIT", /nested deeper than 1000 levels/);
  });

  test("the unpickler reads nesting far deeper than the JavaScript stack without recursing", () => {
    const depth = 200_000;
    const bytes = new Uint8Array(2 + depth + (depth - 1) + 1);
    bytes.set([Op.PROTO, 2]);
    bytes.fill(Op.EMPTY_LIST, 2, 2 + depth);
    bytes.fill(Op.APPEND, 2 + depth, 2 + depth + depth - 1);
    bytes[bytes.length - 1] = Op.STOP;
    let value = load(bytes);
    let levels = 1;
    while (Array.isArray(value) && value.length === 1) {
      value = value[0];
      levels++;
    }
    assert.equal(levels, depth);
  });

  test("values that are not state values are refused on write with their type named", () => {
    refusedOnWrite({ f: () => 1 }, "PICKLE_UNSUPPORTED", /a function cannot be saved/);
    refusedOnWrite([Symbol("s")], "PICKLE_UNSUPPORTED", /a symbol cannot be saved/);
    refusedOnWrite({ u: undefined }, "PICKLE_UNSUPPORTED", /a undefined cannot be saved/);
    class Module {}
    refusedOnWrite({ m: new Module() }, "PICKLE_UNSUPPORTED", /a Module cannot be saved/);
    refusedOnWrite({ d: new Date(0) }, "PICKLE_UNSUPPORTED", /a Date cannot be saved/);
    refusedOnWrite(new Set([1]), "PICKLE_UNSUPPORTED", /a Set cannot be saved/);
  });

  test("a pickle written here starts with PROTO 2 and ends with STOP", () => {
    const bytes = Pickler.dump({ a: 1 });
    assert.deepEqual([...bytes.subarray(0, 2)], [Op.PROTO, 2]);
    assert.equal(bytes[bytes.length - 1], Op.STOP);
  });
});
