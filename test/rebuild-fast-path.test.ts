// The unpickler's fast path for tensor rebuilds (src/formats/pickle/rebuild-fast-path.ts) must give
// exactly what the general path gives: every state here is read both ways and compared value by
// value, with the same sharing (one object where the other has one object), the same tuple,
// float and OrderedDict marks, and the same errors.
import assert from "node:assert/strict";
import { mkdtemp, readFile, readdir, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, test } from "node:test";
import { FormatError } from "../src/errors.js";
import { MemoryReader } from "../src/formats/byte-io.js";
import { Op } from "../src/formats/pickle/opcodes.js";
import { readTorchStorages, readTorchStructure } from "../src/formats/torch/torch-reader.js";
import { ZipReader } from "../src/formats/zip/zip-reader.js";
import { Storage } from "../src/tensor/storage.js";
import { Tensor } from "../src/tensor/tensor.js";
import { TorchTensorDumper } from "../src/io/torch-tensor-io.js";
import { getOrderedDictAttributes, isFloatSlot, isOrderedDict, orderedDict, tuple, tupleKind, type StateValue } from "../src/values/py-values.js";
import { bytesOf, global, int, pickle, str, torchZip, u32 } from "./helpers/pickle-bytes.js";
import { requireTorch, runPython } from "./helpers/torch-python.js";

const FIXTURES = join(import.meta.dirname, "fixtures");
const tempDirs: string[] = [];
after(async () => {
  for (const dir of tempDirs) await rm(dir, { recursive: true, force: true });
});
async function tempDir(): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), "ckpt-fast-path-"));
  tempDirs.push(dir);
  return dir;
}

type Outcome = { state: StateValue } | { error: FormatError };

async function readBothWays(file: Uint8Array): Promise<{ fast: Outcome; general: Outcome }> {
  const read = async (fastRebuild: boolean): Promise<Outcome> => {
    try {
      const zip = await ZipReader.open(new MemoryReader(file));
      return { state: await readTorchStorages(zip, await readTorchStructure(zip, { fastRebuild })) };
    } catch (error) {
      assert.ok(error instanceof FormatError, `not a FormatError: ${String(error)}`);
      return { error };
    }
  };
  return { fast: await read(true), general: await read(false) };
}

function describe(value: unknown): string {
  return typeof value === "object" && value !== null ? "an object" : typeof value === "bigint" ? `${value}n` : String(value as never);
}

/** Asserts that `a` and `b` are the same state: same values, marks and sharing (a bijection of objects). */
function assertSameState(a: unknown, b: unknown): void {
  const pairs = new Map<unknown, unknown>();
  const reverse = new Map<unknown, unknown>();
  const pending: [unknown, unknown, string][] = [[a, b, "state"]];
  const pairUp = (x: object, y: object, where: string): boolean => {
    if (pairs.has(x) || reverse.has(y)) {
      assert.equal(pairs.get(x), y, `${where}: shared differently`);
      return false;
    }
    pairs.set(x, y);
    reverse.set(y, x);
    return true;
  };
  const compareMarks = (x: object, y: object, keys: unknown[], where: string): void => {
    assert.equal(isOrderedDict(x), isOrderedDict(y), `${where}: OrderedDict mark`);
    if (isOrderedDict(x)) pending.push([getOrderedDictAttributes(x), getOrderedDictAttributes(y), `${where}._metadata`]);
    for (const key of keys) assert.equal(isFloatSlot(x, key), isFloatSlot(y, key), `${where}[${String(key)}]: float mark`);
  };
  while (pending.length > 0) {
    const [x, y, where] = pending.pop()!;
    if (typeof x !== "object" || x === null) {
      assert.ok(Object.is(x, y), `${where}: ${describe(x)} vs ${describe(y)}`);
      continue;
    }
    assert.ok(typeof y === "object" && y !== null, `${where}: an object vs ${describe(y)}`);
    assert.equal(Object.getPrototypeOf(x), Object.getPrototypeOf(y), `${where}: prototypes`);
    if (!pairUp(x, y, where)) continue;
    if (x instanceof Tensor) {
      const t = y as Tensor;
      assert.deepEqual([x.dtype, [...x.shape], [...x.strides], x.offset, x.requiresGrad, x.isParameter], [t.dtype, [...t.shape], [...t.strides], t.offset, t.requiresGrad, t.isParameter], where);
      pending.push([x.storage, t.storage, `${where}.storage`]);
    } else if (x instanceof Storage) {
      assert.deepEqual([x.dtype, x.numel, Buffer.from(x.bytes)], [(y as Storage).dtype, (y as Storage).numel, Buffer.from((y as Storage).bytes)], where);
    } else if (ArrayBuffer.isView(x)) {
      assert.deepEqual(Buffer.from(x.buffer, x.byteOffset, x.byteLength), Buffer.from((y as Uint8Array).buffer, (y as Uint8Array).byteOffset, (y as Uint8Array).byteLength), where);
    } else if (Array.isArray(x)) {
      const ys = y as unknown[];
      assert.equal(x.length, ys.length, `${where}: length`);
      assert.equal(tupleKind(x), tupleKind(ys), `${where}: tuple mark`);
      compareMarks(x, ys, [...x.keys()], where);
      x.forEach((item, i) => pending.push([item, ys[i], `${where}[${i}]`]));
    } else if (x instanceof Map) {
      const ym = y as Map<unknown, unknown>;
      assert.equal(x.size, ym.size, `${where}: size`);
      const yEntries = [...ym];
      [...x].forEach(([key, item], i) => {
        // Keys may be tuples (compared as values, in order), so entries are paired by position.
        pending.push([key, yEntries[i]![0], `${where}: key ${i}`], [item, yEntries[i]![1], `${where}[${describe(key)}]`]);
        assert.equal(isFloatSlot(x, key), isFloatSlot(ym, yEntries[i]![0]), `${where}: key ${i}: float mark`);
      });
      compareMarks(x, ym, [], where);
    } else {
      const keys = Reflect.ownKeys(x);
      assert.deepEqual(keys, Reflect.ownKeys(y), `${where}: keys`);
      compareMarks(x, y, keys, where);
      for (const key of keys) pending.push([(x as Record<PropertyKey, unknown>)[key], (y as Record<PropertyKey, unknown>)[key], `${where}.${String(key)}`]);
    }
  }
}

/** Reads `file` both ways and asserts the same state (or the same error); returns the fast path's state. */
async function assertSameBothWays(file: Uint8Array, what: string): Promise<StateValue | undefined> {
  const { fast, general } = await readBothWays(file);
  if ("error" in general) {
    assert.ok("error" in fast, `${what}: the general path fails (${general.error.message}) but the fast path does not`);
    assert.equal(fast.error.code, general.error.code, what);
    assert.equal(fast.error.message, general.error.message, what);
    return undefined;
  }
  assert.ok("state" in fast, `${what}: the fast path fails: ${"error" in fast ? fast.error.message : ""}`);
  assertSameState(fast.state, general.state);
  return fast.state;
}

/** The fast path shares one frozen shape between tensors of one shape; the general path copies: proof it ran. */
function assertFastPathRan(first: unknown, second: unknown): void {
  assert.ok(first instanceof Tensor && second instanceof Tensor);
  assert.deepEqual(first.shape, second.shape);
  assert.equal(first.shape, second.shape, "the fast path did not run (tensors of one shape do not share it)");
}

/** A state with everything a rebuild can carry, and more than 256 memo entries (LONG_BINPUT/LONG_BINGET). */
function richState(): StateValue {
  const big = Tensor.from(Float32Array.from({ length: 70_010 }, (_, i) => i * 0.5));
  const grid = Tensor.from(Float32Array.from({ length: 24 }, (_, i) => i), { shape: [2, 3, 4] });
  const model: Record<string, StateValue> = {
    "weight": Tensor.from(new Float32Array([1, 2, 3, 4, 5, 6]), { shape: [2, 3], requiresGrad: true }),
    "tied": grid,
    "tied.again": grid, // the same tensor at two paths
    "transposed": grid.transpose(0, 2), // strides, shared storage
    "window": new Tensor({ storage: big.storage, shape: [3], offset: 300 }), // BININT2 offset
    "far": new Tensor({ storage: big.storage, shape: [2], strides: [7], offset: 70_000 }), // BININT offset
    "scalar": Tensor.from(new Float64Array([2.5]), { shape: [] }), // EMPTY_TUPLE shape and strides
    "five-d": Tensor.from(new Int32Array(6).fill(7), { shape: [1, 1, 2, 1, 3] }), // MARK … TUPLE shape
    "param": new Tensor({ storage: new Storage("float32", new Uint8Array(8)), shape: [2], requiresGrad: true, isParameter: true }),
    "empty": Tensor.from(new BigInt64Array(0), { shape: [0, 4] }),
    "gewicht.größe": Tensor.from(new Uint8Array([1, 0, 1]), { dtype: "bool" }),
    "名前": Tensor.from(new Uint16Array([0x3c00, 0x4000]), { dtype: "float16" }),
  };
  for (let i = 0; i < 150; i++) model[`layers.${i}.bias`] = Tensor.from(new Float32Array([i, i + 0.5]));
  return {
    model: orderedDict(model),
    optimizer: { state: { 0: { step: 1.0, exp_avg: Tensor.zeros([2, 3]) } }, param_groups: [{ lr: 0.001, params: tuple(0) }] },
    big,
    step_nr: 12,
  };
}

test("states written here load the same through the fast path and the general path", async () => {
  const dir = await tempDir();
  const path = join(dir, "rich.pt");
  await new TorchTensorDumper().dump(richState(), path);
  const state = (await assertSameBothWays(await readFile(path), "rich.pt")) as { model: Record<string, Tensor> };
  assertFastPathRan(state.model["layers.0.bias"], state.model["layers.1.bias"]);
});

test("every committed torch.save fixture loads the same through the fast path and the general path", async () => {
  const files = (await readdir(FIXTURES)).filter((name) => name.endsWith(".pt") && !name.startsWith("legacy-"));
  assert.ok(files.length >= 8, "the fixtures are missing");
  for (const name of files) await assertSameBothWays(await readFile(join(FIXTURES, name)), name);
});

test("a state torch.save writes with views, parameters, 0-d and 5-D tensors and 300 memo entries loads the same both ways", async (t) => {
  const python = requireTorch(t);
  if (python === null) return;
  const dir = await tempDir();
  const path = join(dir, "torch.pt");
  runPython(
    python,
    `
import collections, sys, torch
base = torch.arange(24, dtype=torch.float32)
model = collections.OrderedDict()
model["w"] = torch.nn.Parameter(torch.ones(2, 3))
model["grid"] = base.view(2, 3, 4)
model["t"] = base.view(2, 3, 4).transpose(0, 2)
model["tail"] = base[20:]
model["scalar"] = torch.tensor(1.5, dtype=torch.float64)
model["five"] = torch.zeros(1, 1, 2, 1, 3, dtype=torch.int16)
model["grad"] = torch.ones(3, requires_grad=True)
model["größe"] = torch.tensor([True, False])
for i in range(60):
    model["layers.%d.bias" % i] = torch.full((2,), float(i))
torch.save({"model": model, "shared": [model["grid"], model["grid"]], "step": 3}, sys.argv[1])
`,
    [path],
  );
  const state = (await assertSameBothWays(await readFile(path), "torch.pt")) as { model: Record<string, Tensor> };
  assertFastPathRan(state.model["layers.0.bias"], state.model["layers.1.bias"]);
});

// A hand-built rebuild of one float32 storage "0" of two elements, as torch.save writes it, with
// every intermediate value memoized: the pid tuple at 1, size at 2, stride at 3, hooks at 5, args at 6.
const STORAGE = new Uint8Array(8);
function rebuild(options: { requiresGrad?: number[]; tail?: number[] } = {}): number[] {
  return [
    ...global("torch._utils", "_rebuild_tensor_v2"),
    Op.MARK,
    Op.MARK, ...str("storage"), ...global("torch", "FloatStorage"), ...str("0"), ...str("cpu"), Op.BININT1, 2, Op.TUPLE, Op.BINPUT, 1,
    Op.BINPERSID,
    Op.BININT1, 0,
    Op.BININT1, 2, Op.TUPLE1, Op.BINPUT, 2,
    Op.BININT1, 1, Op.TUPLE1, Op.BINPUT, 3,
    ...(options.requiresGrad ?? [Op.NEWFALSE]),
    ...global("collections", "OrderedDict"), Op.BINPUT, 4, Op.EMPTY_TUPLE, Op.REDUCE, Op.BINPUT, 5,
    ...(options.tail ?? []),
    Op.TUPLE, Op.BINPUT, 6,
    Op.REDUCE, Op.BINPUT, 7,
  ];
}

test("memoized parts of a rebuild read back later are the general path's values, with the same sharing", async () => {
  // [tensor, pid, size, stride, hooks, args, args again, size again, a second tensor reusing size and the hooks type]
  const bytes = pickle(
    Op.EMPTY_LIST, Op.MARK,
    ...rebuild(),
    Op.BINGET, 1, Op.BINGET, 2, Op.BINGET, 3, Op.BINGET, 5, Op.BINGET, 6, Op.BINGET, 6, Op.BINGET, 2,
    ...global("torch._utils", "_rebuild_tensor_v2"), Op.MARK, Op.BINGET, 1, Op.BINPERSID, Op.BININT1, 0, Op.BINGET, 2, Op.BINGET, 3, Op.NEWTRUE, Op.BINGET, 4, Op.EMPTY_TUPLE, Op.REDUCE, Op.TUPLE, Op.REDUCE,
    Op.APPENDS,
  );
  const state = (await assertSameBothWays(await torchZip(bytes, { 0: STORAGE }), "memo reads")) as unknown[];
  assert.equal(state.length, 9);
  assert.equal(state[5], state[6], "the args tuple read twice is one tuple");
  assert.equal((state[5] as unknown[])[2], state[2], "the args tuple holds the memoized size tuple");
  assert.ok(state[8] instanceof Tensor && state[8].requiresGrad);
});

test("a rebuild that leaves the sequence part way falls back to the general path, with the same result or error", async () => {
  // [what, opcodes, whether the pickle ends there without a STOP]
  const cases: [string, number[], boolean?][] = [
    ["a 7th argument (metadata)", rebuild({ tail: [Op.EMPTY_DICT] })],
    ["requires_grad as an int", rebuild({ requiresGrad: [Op.BININT1, 1] })],
    // Entry 9 holds "stale" before the sequence and "0" once the sequence writes it; the location reads it back.
    ["a memo index written and read back inside the sequence", [Op.EMPTY_LIST, Op.MARK, ...str("stale"), Op.BINPUT, 9, Op.POP, ...global("torch._utils", "_rebuild_tensor_v2"), Op.MARK, Op.MARK, ...str("storage"), ...global("torch", "FloatStorage"), ...str("0"), Op.BINPUT, 9, Op.BINGET, 9, Op.BININT1, 2, Op.TUPLE, Op.BINPUT, 1, Op.BINPERSID, Op.BININT1, 0, Op.BININT1, 2, Op.TUPLE1, Op.BININT1, 1, Op.TUPLE1, Op.NEWFALSE, ...global("collections", "OrderedDict"), Op.EMPTY_TUPLE, Op.REDUCE, Op.TUPLE, Op.REDUCE, Op.BINGET, 1, Op.APPENDS]],
    ["a refused global in the persistent id", [...global("torch._utils", "_rebuild_tensor_v2"), Op.MARK, Op.MARK, ...str("storage"), ...global("os", "system"), ...str("0"), ...str("cpu"), Op.BININT1, 2, Op.TUPLE, Op.BINPERSID]],
    ["a size past the storage", [...global("torch._utils", "_rebuild_tensor_v2"), Op.MARK, Op.MARK, ...str("storage"), ...global("torch", "FloatStorage"), ...str("0"), ...str("cpu"), Op.BININT1, 2, Op.TUPLE, Op.BINPERSID, Op.BININT1, 0, Op.BININT1, 9, Op.TUPLE1, Op.BININT1, 1, Op.TUPLE1, Op.NEWFALSE, ...global("collections", "OrderedDict"), Op.EMPTY_TUPLE, Op.REDUCE, Op.TUPLE, Op.REDUCE]],
    ["a negative offset (BININT)", [...global("torch._utils", "_rebuild_tensor_v2"), Op.MARK, Op.MARK, ...str("storage"), ...global("torch", "FloatStorage"), ...str("0"), ...str("cpu"), Op.BININT1, 2, Op.TUPLE, Op.BINPERSID, ...int(-1), Op.BININT1, 1, Op.TUPLE1, Op.BININT1, 1, Op.TUPLE1, Op.NEWFALSE, ...global("collections", "OrderedDict"), Op.EMPTY_TUPLE, Op.REDUCE, Op.TUPLE, Op.REDUCE]],
    ["a truncated LONG_BINPUT at the end", [...rebuild().slice(0, -2), Op.LONG_BINPUT, ...u32(7).slice(0, 2)], true],
    ["a pickle that ends inside the sequence", rebuild().slice(0, 40), true],
  ];
  for (const [what, parts, unterminated] of cases) {
    const bytes = unterminated === true ? bytesOf(Op.PROTO, 2, ...parts) : pickle(...parts);
    await assertSameBothWays(await torchZip(bytes, { 0: STORAGE }), what);
  }
});
