import assert from "node:assert/strict";
import { mkdtemp, readFile, readdir, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, test } from "node:test";

import {
  PyDType,
  PyFloat,
  Tensor,
  TensorLoadError,
  TorchTensorDumper,
  TorchTensorLoader,
  markFloatSlot,
  markTuple,
  orderedDict,
  tuple,
  type StateDict,
  type StateKey,
  type StateValue,
} from "../src/index.js";
import { describe, type Description } from "./helpers/describe.js";
import { requireTorch, runPython } from "./helpers/torch-python.js";

const FIXTURES = join(import.meta.dirname, "fixtures");
const HELPERS = join(import.meta.dirname, "helpers");
const MAKE_FIXTURES = join(FIXTURES, "make-fixtures.py");

const loader = new TorchTensorLoader();
const dumper = new TorchTensorDumper();

const tempDirs: string[] = [];
async function tempDir(): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), "ckpt-torch-interop-"));
  tempDirs.push(dir);
  return dir;
}
after(async () => {
  await Promise.all(tempDirs.map((dir) => rm(dir, { recursive: true, force: true })));
});

/** The fixtures in `dir`: every `<name>.pt`, each with its `<name>.expected.json`. */
async function fixtureNames(dir: string): Promise<string[]> {
  const files = await readdir(dir);
  const names = files.filter((file) => file.endsWith(".pt")).map((file) => file.slice(0, -".pt".length)).sort();
  for (const name of names) assert.ok(files.includes(`${name}.expected.json`), `${name}.pt has no ${name}.expected.json`);
  return names;
}

async function readExpected(dir: string, name: string): Promise<Description> {
  return JSON.parse(await readFile(join(dir, `${name}.expected.json`), "utf8")) as Description;
}

/** torch.load and describe.py on each file, in one Python process; a refused file fails the test. */
function describeInTorch(python: string, paths: string[], options: { weightsOnly?: boolean } = {}): Description[] {
  const script = `import sys; sys.dont_write_bytecode = True; sys.path.insert(0, ${JSON.stringify(HELPERS)}); import describe; describe.main(sys.argv[1:])`;
  const args = options.weightsOnly === true ? ["--weights-only", ...paths] : paths;
  const results = JSON.parse(runPython(python, script, args)) as { path: string; description?: Description; error?: string }[];
  assert.equal(results.length, paths.length);
  return results.map((result) => {
    if (result.description === undefined) assert.fail(`torch.load refused ${result.path}: ${result.error}`);
    return result.description;
  });
}

/** The value under the str key `key` in a dict description. */
function item(dict: Description, key: string): Description {
  assert.ok(dict.type === "dict" || dict.type === "OrderedDict", `not a dict: ${dict.type}`);
  const found = dict.items.find(([k]) => k.type === "str" && k.value === key);
  assert.ok(found !== undefined, `no key ${JSON.stringify(key)}`);
  return found[1];
}

function storageOf(tensor: Description): number {
  assert.equal(tensor.type, "tensor");
  return tensor.storage;
}

/**
 * A state with everything a training state holds except Python floats and bytes, which PyTorch
 * 1.13's `torch.load(weights_only=True)` refuses (it has no BINFLOAT and no `_codecs.encode`): every
 * dtype (NaNs, infinities, -0.0 and subnormals as raw words), views of one storage, non-contiguous
 * tensors, 0-dim and empty tensors, parameters, int-keyed Maps, tuples, torch.Size, OrderedDicts
 * with `_metadata`, and ints beyond 2^53 and 2^64 (LONG1, which 1.13's weights-only unpickler reads).
 */
function weightsOnlyState(): StateDict {
  const base = Tensor.from(Float32Array.from({ length: 12 }, (_, i) => i - 2.5));
  const grid = base.reshape([3, 4]);
  const weight = Tensor.from(Float32Array.from([1, 2, 3, 4, 5, 6], (x) => x / 8), { shape: [2, 3] });
  const cube = Tensor.from(Int16Array.from({ length: 24 }, (_, i) => i - 12), { shape: [2, 3, 4] });
  const pair = Tensor.from(new Float32Array([1.5, -2]));
  const ids = Tensor.from(BigInt64Array.from([100n, 101n, 102n, 103n, 104n, 105n]));
  const step = (n: number): Tensor => Tensor.from(new Float32Array([n]), { shape: [] });

  return {
    dtypes: {
      float32: Tensor.from(new Float32Array([0, -0, 1, -1.5, 1 / 3, NaN, Infinity, -Infinity, 3.4028234663852886e38, 1.1754943508222875e-38, 1e-45])),
      // A negative quiet NaN with a payload and a signalling NaN, as bit patterns.
      float32_nan_bits: Tensor.from(new Float32Array(new Uint32Array([0xffc00001, 0x7f800001]).buffer)),
      float64: Tensor.from(new Float64Array([0, -0, 1, 0.1, -1e300, NaN, Infinity, -Infinity, Number.MAX_VALUE, 2.2250738585072014e-308, 5e-324])),
      float16: Tensor.from(Uint16Array.from([0x0000, 0x8000, 0x3c00, 0x2e66, 0x7bff, 0xfbff, 0x7e00, 0x7c00, 0xfc00, 0x0001, 0x0400, 0x7c01, 0xfdff]), { dtype: "float16" }),
      bfloat16: Tensor.from(Uint16Array.from([0x0000, 0x8000, 0x3f80, 0x3dcd, 0x7f7f, 0x7fc0, 0x7f80, 0xff80, 0x0001, 0x0080, 0x7f81, 0xffc1]), { dtype: "bfloat16" }),
      int8: Tensor.from(Int8Array.from([-128, -1, 0, 1, 127])),
      uint8: Tensor.from(Uint8Array.from([0, 1, 127, 128, 255])),
      int16: Tensor.from(Int16Array.from([-32768, -1, 0, 1, 32767])),
      int32: Tensor.from(Int32Array.from([-(2 ** 31), -1, 0, 1, 2 ** 31 - 1])),
      int64: Tensor.from(BigInt64Array.from([-(2n ** 63n), -(2n ** 53n) - 1n, -1n, 0n, 2n ** 53n + 1n, 2n ** 63n - 1n])),
      bool: Tensor.from(Uint8Array.from([1, 0, 0, 1]), { dtype: "bool" }),
      complex64: Tensor.from(new Float32Array([1, 2, -0, Infinity, NaN, -1.5, 0, 0]), { dtype: "complex64" }),
      matrix_int32: Tensor.from(Int32Array.from([-3, -2, -1, 0, 1, 2]), { shape: [2, 3] }),
    },
    views: {
      base,
      middle: new Tensor({ storage: base.storage, shape: [4], offset: 2 }),
      grid,
      row: new Tensor({ storage: base.storage, shape: [4], offset: 8 }),
      column: new Tensor({ storage: base.storage, shape: [3], strides: [4], offset: 1 }),
      empty_view: new Tensor({ storage: base.storage, shape: [0], offset: 12 }),
      base_again: base,
      ids_tail: new Tensor({ storage: ids.storage, shape: [3], offset: 3 }),
      ids,
    },
    non_contiguous: {
      weight_t: weight.transpose(),
      cube_t: cube.transpose(0, 2),
      strided: new Tensor({ storage: Tensor.from(Float64Array.from({ length: 10 }, (_, i) => i)).storage, shape: [3], strides: [3], offset: 1 }),
      expanded: new Tensor({ storage: pair.storage, shape: [3, 2], strides: [0, 1] }),
      half_t: Tensor.from(Uint16Array.from([0x0000, 0x3c00, 0x4000, 0x4200, 0x4400, 0x4500]), { dtype: "float16", shape: [3, 2] }).transpose(),
    },
    shapes: {
      scalar_float: step(3.5),
      scalar_int64: Tensor.from(BigInt64Array.from([-7n]), { shape: [] }),
      scalar_bool: Tensor.from(Uint8Array.from([1]), { dtype: "bool", shape: [] }),
      empty: Tensor.zeros([0]),
      empty_2x0: Tensor.zeros([2, 0]),
      empty_0x3_int64: Tensor.zeros([0, 3], "int64"),
    },
    model: orderedDict(
      {
        "linear.weight": new Tensor({ storage: weight.storage, shape: [2, 3], requiresGrad: false }),
        "linear.bias": Tensor.from(new Float32Array([0.25, -0.25])),
        "norm.num_batches_tracked": Tensor.from(BigInt64Array.from([0n]), { shape: [] }),
      },
      { _metadata: orderedDict({ "": { version: 1 }, linear: { version: 1 }, norm: { version: 2 } }) },
    ),
    parameter: new Tensor({ storage: Tensor.from(new Float32Array([1, -2])).storage, shape: [1, 2], requiresGrad: true, isParameter: true }),
    frozen_parameter: new Tensor({ storage: Tensor.from(BigInt64Array.from([7n])).storage, shape: [1], isParameter: true }),
    leaf_requires_grad: Tensor.from(new Float32Array([0.5, 0.25]), { requiresGrad: true }),
    optimizer: {
      state: new Map<StateKey, StateValue>([
        [0, { step: step(1), exp_avg: Tensor.zeros([2, 3]) }],
        [1, { step: step(1), exp_avg: Tensor.zeros([2]) }],
      ]),
      param_groups: [{ amsgrad: false, foreach: null, params: [0, 1] }],
    },
    ordered_int_keys: orderedDict(new Map<StateKey, StateValue>([[3, "c"], [1, "a"]])),
    empty_ordered: orderedDict({}),
    ints: [0, 1, -1, 255, 256, 65535, 65536, -300, -70000, 2 ** 31 - 1, 2 ** 31, -(2 ** 31), -(2 ** 31) - 1, 2 ** 53 - 1, -(2 ** 53) + 1, 5n],
    strings: ["", "ascii", "héllo ✓ 🎉", "line\nbreak", "a".repeat(70)],
    none: null,
    flags: [true, false],
    nested: [1, tuple<StateValue>(2, [3, tuple()], tuple("x")), [], [[null]], tuple(true)],
    integer_like_keys: new Map<StateKey, StateValue>([["10", "ten"], ["2", "two"], ["name", "n"]]),
    integer_like_object: { "10": "ten", "2": "two", name: "n" },
    mixed_keys: new Map<StateKey, StateValue>([[1, "one"], ["b", 2], [null, "none"], [false, "false"], [-5, "neg"], [2 ** 40, "big"]]),
    proto_keys: JSON.parse('{"__proto__": 1, "constructor": 2, "toString": 3}') as StateDict,
    big_ints: [2n ** 53n, 2n ** 53n + 1n, -(2n ** 53n) - 1n, 2n ** 63n, -(2n ** 63n) - 1n, 2n ** 64n + 1n, -(2n ** 70n), 10n ** 40n],
    big_int_keys: new Map<StateKey, StateValue>([[2n ** 70n, "big"], [-(2n ** 64n), "negative"]]),
    dtype: new PyDType("float16"),
    size: markTuple([2, 3], "torch.Size"),
    empty_size: markTuple([], "torch.Size"),
    empty_tuple: tuple(),
    empty_list: [],
    empty_dict: {},
  };
}

/** Everything in `weightsOnlyState()` plus Python floats (whole ones too), float keys, bytes and more dtypes. */
function fullState(): StateDict {
  const group: StateDict = { lr: 2, betas: tuple<StateValue>(0.9, new PyFloat(1)), eps: 1e-8, weight_decay: new PyFloat(0), momentum: 0, params: [0, 1] };
  markFloatSlot(group, "lr"); // a number the caller says is a float
  const shared = [1, 2];
  const state = weightsOnlyState();
  (state["optimizer"] as StateDict)["param_groups"] = [group, { lr: 0.001, weight_decay: 0, params: [2] }];
  return {
    ...state,
    floats: [0.5, -0, 0.1, 1e16, 1e15, 1e-5, 1e-4, 1.5e300, 5e-324, NaN, Infinity, -Infinity, new PyFloat(1), new PyFloat(-2), new PyFloat(2 ** 53)],
    // Whole numbers beyond 2^53 are floats (they are what a program computed, not exact ints).
    unsafe_whole_numbers: [2 ** 53, -(2 ** 53), 1e300, -1e300, Number.MAX_VALUE],
    whole_float: new PyFloat(3),
    float_keys: new Map<StateKey, StateValue>([[2.5, "float"], [-0.125, "negative"]]),
    bytes: Uint8Array.from([0, 255, 114, 97, 119, 128]),
    empty_bytes: new Uint8Array(0),
    bytes_view: Buffer.from("..a view of a larger buffer..").subarray(2, 8),
    bfloat16_dtype: new PyDType("bfloat16"), // not on 1.13's weights-only list
    shared_twice: [shared, shared],
  };
}

test("every committed fixture loads here with exactly the description in its expected JSON", async (t) => {
  const names = await fixtureNames(FIXTURES);
  assert.ok(names.length >= 10, `only ${names.length} fixtures in ${FIXTURES}`);
  for (const name of names) {
    await t.test(name, async () => {
      assert.deepEqual(describe(await loader.load(join(FIXTURES, `${name}.pt`))), await readExpected(FIXTURES, name));
    });
  }
});

test("what torch.save writes today loads here as Python describes it, and the committed fixtures are up to date", async (t) => {
  const python = requireTorch(t);
  if (python === null) return;
  const dir = await tempDir();
  runPython(python, `import runpy, sys; sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name="__main__")`, [MAKE_FIXTURES, dir]);
  const names = await fixtureNames(dir);
  assert.deepEqual(names, await fixtureNames(FIXTURES));
  for (const name of names) {
    await t.test(name, async () => {
      const expected = await readExpected(dir, name);
      assert.deepEqual(describe(await loader.load(join(dir, `${name}.pt`))), expected);
      assert.deepEqual(await readExpected(FIXTURES, name), expected, "the committed fixture differs: rerun make-fixtures.py");
    });
  }
});

test("states built here load in torch.load with the same description, and views still share one storage", async (t) => {
  const python = requireTorch(t);
  if (python === null) return;
  const path = join(await tempDir(), "built-here.pt");
  const state = fullState();
  await dumper.dump(state, path);
  const [inTorch] = describeInTorch(python, [path]);
  assert.deepEqual(inTorch, describe(state));
  assert.deepEqual(describe(await loader.load(path)), describe(state));

  const views = item(inTorch!, "views");
  const baseStorage = storageOf(item(views, "base"));
  for (const name of ["middle", "grid", "row", "column", "empty_view", "base_again"]) {
    assert.equal(storageOf(item(views, name)), baseStorage, `${name} does not share the base's storage in torch`);
  }
  assert.equal(storageOf(item(views, "ids_tail")), storageOf(item(views, "ids")));
  assert.notEqual(storageOf(item(views, "ids")), baseStorage);
  assert.equal(storageOf(item(item(inTorch!, "model"), "linear.weight")), storageOf(item(item(inTorch!, "non_contiguous"), "weight_t")));
});

test("states without Python floats or bytes load with torch.load(weights_only=True)", async (t) => {
  const python = requireTorch(t);
  if (python === null) return;
  const path = join(await tempDir(), "weights-only.pt");
  const state = weightsOnlyState();
  await dumper.dump(state, path);
  const [inTorch] = describeInTorch(python, [path], { weightsOnly: true });
  assert.deepEqual(inTorch, describe(state));
});

test("every fixture comes back from torch → here → torch with the same types and values", async (t) => {
  const python = requireTorch(t);
  if (python === null) return;
  const dir = await tempDir();
  const names = await fixtureNames(FIXTURES);
  const originals = names.map((name) => join(FIXTURES, `${name}.pt`));
  const resaved = names.map((name) => join(dir, `${name}.pt`));
  for (const i of names.keys()) await dumper.dump(await loader.load(originals[i]!), resaved[i]!);
  const descriptions = describeInTorch(python, [...originals, ...resaved]);
  for (const [i, name] of names.entries()) {
    await t.test(name, () => {
      assert.deepEqual(descriptions[names.length + i], descriptions[i]);
    });
  }
});

/** Python's zipfile on each file: the first entry failing its CRC (or null) and where each entry's data starts. */
const ZIP_CHECK = `
import json, struct, sys, zipfile
report = []
for path in sys.argv[1:]:
    with zipfile.ZipFile(path) as archive, open(path, "rb") as raw:
        bad = archive.testzip()
        starts = {}
        for info in archive.infolist():
            raw.seek(info.header_offset)
            header = raw.read(30)
            name_length, extra_length = struct.unpack("<HH", header[26:30])
            starts[info.filename] = info.header_offset + 30 + name_length + extra_length
    report.append({"path": path, "bad": bad, "starts": starts})
json.dump(report, sys.stdout)
`;

test("files written here pass zipfile's CRC check and every storage's data starts at a multiple of 64 bytes", async (t) => {
  const python = requireTorch(t);
  if (python === null) return;
  const dir = await tempDir();
  const paths: string[] = [];
  const write = async (name: string, state: StateValue, options = {}): Promise<void> => {
    const path = join(dir, `${name}.pt`);
    await new TorchTensorDumper(options).dump(state, path);
    paths.push(path);
  };
  await write("full", fullState());
  await write("zip64", fullState(), { forceZip64: true });
  for (const name of await fixtureNames(FIXTURES)) await write(name, await loader.load(join(FIXTURES, `${name}.pt`)));

  const report = JSON.parse(runPython(python, ZIP_CHECK, paths)) as { path: string; bad: string | null; starts: Record<string, number> }[];
  assert.equal(report.length, paths.length);
  for (const { path, bad, starts } of report) {
    assert.equal(bad, null, `${path}: entry ${bad} fails its CRC check`);
    const storages = Object.entries(starts).filter(([name]) => name.startsWith("archive/data/"));
    assert.ok(Object.hasOwn(starts, "archive/data.pkl"), `${path} has no archive/data.pkl`);
    for (const [name, start] of storages) assert.equal(start % 64, 0, `${path}: ${name} starts at ${start}`);
    if (path.endsWith("full.pt")) assert.ok(storages.length > 20, `${path} has only ${storages.length} storages`);
  }
});

test("a state of many small tensors (its storages written before the pickle) loads in torch.load as built, views shared, and passes zipfile's CRC check", async (t) => {
  const python = requireTorch(t);
  if (python === null) return;
  const path = join(await tempDir(), "pickle-last.pt");
  // Past the writer's mark for the pickle last (1,024 storages, small on average: torch-writer.ts).
  const state = fullState();
  const many: StateDict = {};
  for (let i = 0; i < 1100; i++) many[`layer${i}.bias`] = Tensor.from(Float32Array.from({ length: 16 }, (_, j) => i + j / 16), { shape: [16] });
  state.many = many;
  await dumper.dump(state, path);

  const report = JSON.parse(runPython(python, ZIP_CHECK, [path])) as { path: string; bad: string | null; starts: Record<string, number> }[];
  const { bad, starts } = report[0]!;
  assert.equal(bad, null, `entry ${bad} fails its CRC check`);
  assert.ok(starts["archive/data/1100"]! < starts["archive/data.pkl"]!, "the storages come first");
  for (const [name, start] of Object.entries(starts)) if (name.startsWith("archive/data/")) assert.equal(start % 64, 0, `${name} starts at ${start}`);

  const [inTorch] = describeInTorch(python, [path]);
  assert.deepEqual(inTorch, describe(state));
  assert.deepEqual(describe(await loader.load(path)), describe(state));
  const views = item(inTorch!, "views");
  assert.equal(storageOf(item(views, "middle")), storageOf(item(views, "base")), "a view shares its base's storage in torch");
});

test("a file written with forceZip64 loads in torch and here", async (t) => {
  const path = join(await tempDir(), "zip64.pt");
  const state = fullState();
  await new TorchTensorDumper({ forceZip64: true }).dump(state, path);
  const bytes = await readFile(path);
  assert.ok(bytes.includes(Buffer.from([0x50, 0x4b, 0x06, 0x06])), "no zip64 end record was written");
  assert.deepEqual(describe(await loader.load(path)), describe(state));

  const python = requireTorch(t);
  if (python === null) return;
  const [inTorch] = describeInTorch(python, [path]);
  assert.deepEqual(inTorch, describe(state));
});

test("complex128 tensors and Python complex numbers saved by torch are refused as unsupported types, naming the global, not as a security refusal", async (t) => {
  const python = requireTorch(t);
  if (python === null) return;
  const dir = await tempDir();
  const script = `
import sys, torch
torch.save({"z": torch.zeros(2, dtype=torch.complex128)}, sys.argv[1] + "/complex128.pt")
torch.save({"c": 1 + 2j}, sys.argv[1] + "/complex.pt")
torch.save({"z": torch.zeros(2, dtype=torch.complex64)}, sys.argv[1] + "/complex64.pt")`;
  runPython(python, script, [dir]);
  const cases: [string, RegExp][] = [
    ["complex128.pt", /complex tensors other than complex64 are not supported \(torch\.ComplexDoubleStorage holds complex128\)/],
    ["complex.pt", /Python complex numbers are not supported \(__builtin__\.complex\)/],
  ];
  for (const [name, message] of cases) {
    await assert.rejects(loader.load(join(dir, name)), (error: unknown) => {
      assert.ok(error instanceof TensorLoadError);
      assert.match(error.message, message);
      assert.doesNotMatch(error.message, /allow-list|refusing/);
      assert.equal((error.cause as { code?: string }).code, "PICKLE_UNSUPPORTED_TYPE");
      return true;
    });
  }
  const z = (await loader.load(join(dir, "complex64.pt"))) as StateDict;
  assert.equal((z.z as Tensor).dtype, "complex64");
});

test("saving leaves tensors as they were: deep-equal to twins never saved, and a tensor saved twice is one object again", async () => {
  // The writer marks what it has written on the tensors and storages themselves (per-tensor cost):
  // in private fields, which no comparison or copy of a tensor sees.
  const make = (): { a: Tensor; view: Tensor } => {
    const a = Tensor.from(new Float32Array([1, 2, 3, 4, 5, 6]), { shape: [2, 3] });
    return { a, view: a.transpose(0, 1) };
  };
  const saved = make();
  const twin = make();
  const dir = await tempDir();
  await dumper.dump({ ...saved, again: saved.a }, join(dir, "first.pt"));
  await dumper.dump({ ...saved }, join(dir, "second.pt")); // a second write of the same tensors starts afresh
  assert.deepStrictEqual(saved, twin);
  const first = (await loader.load(join(dir, "first.pt"))) as { a: Tensor; view: Tensor; again: Tensor };
  assert.equal(first.again, first.a, "a tensor met twice is one object again");
  const second = (await loader.load(join(dir, "second.pt"))) as { a: Tensor; view: Tensor };
  assert.equal(second.view.storage, second.a.storage, "the view still shares its storage");
  assert.deepEqual([...second.view.contiguous().data], [1, 4, 2, 5, 3, 6]);
});
