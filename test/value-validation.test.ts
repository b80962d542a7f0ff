import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { readFile, readdir } from "node:fs/promises";
import { join } from "node:path";
import { describe, test } from "node:test";
import { parse as parseYaml } from "yaml";

import {
  CheckpointSaveError,
  FileCheckpointManager,
  FormatError,
  InvalidArgumentError,
  PyDType,
  PyFloat,
  Tensor,
  TensorDumpError,
  TorchTensorDumper,
  TorchTensorLoader,
  markTuple,
  orderedDict,
  tuple,
  type StateDict,
  type StateKey,
  type StateValue,
} from "../src/index.js";
import { checkStateValue } from "../src/values/state-check.js";
import { checkPlainData } from "../src/values/plain-data.js";
import { Pickler } from "../src/formats/pickle/pickler.js";
import {
  assertSameState,
  inProcessGangs,
  listFiles,
  managersFor,
  modelState,
  onAllRanks,
  settleWithin,
  trainingState,
  useTempDirs,
} from "./helpers/checkpoint-helpers.js";
import { requireTorch, runPython } from "./helpers/torch-python.js";

const tempDir = useTempDirs("values");

/** Every file under `dir` with a hash of its bytes: equal snapshots mean nothing on disk changed. */
async function diskSnapshot(dir: string): Promise<Record<string, string>> {
  const snapshot: Record<string, string> = {};
  for (const name of await listFiles(dir)) snapshot[name] = createHash("sha256").update(await readFile(join(dir, name))).digest("hex");
  for (const name of await readdir(dir)) snapshot[`${name}/`] = "entry"; // empty directories (step_N.tmp) count too
  return snapshot;
}

function refusedWith(message: RegExp): (error: unknown) => true {
  return (error: unknown) => {
    assert.ok(error instanceof InvalidArgumentError, `expected an InvalidArgumentError, got ${String(error)}`);
    assert.match(error.message, message);
    return true;
  };
}

/** A save call refused before anything was written: the step fails like any save error, naming the key path. */
function saveRefusedWith(op: string, stepNr: number, message: RegExp): (error: unknown) => true {
  return (error: unknown) => {
    assert.ok(error instanceof CheckpointSaveError, `expected a CheckpointSaveError, got ${String(error)}`);
    assert.equal(error.stepNr, stepNr);
    assert.match(error.message, new RegExp(`^${op} failed for checkpoint ${stepNr}, which was dropped: ${message.source}`));
    assert.ok(error.cause instanceof InvalidArgumentError, "the refusal is the cause");
    return true;
  };
}

/** A manager with checkpoint 1 committed. */
async function managerWithCheckpoint(): Promise<{ dir: string; manager: FileCheckpointManager }> {
  const dir = await tempDir();
  const manager = new FileCheckpointManager({ checkpointDir: dir });
  await manager.beginCheckpoint(1);
  await manager.saveState(trainingState(1));
  await manager.commitCheckpoint();
  return { dir, manager };
}

/** Map keys that would save but never load back (here or in torch.load), with the words that say why. */
const UNLOADABLE_KEYS: [string, () => unknown, RegExp][] = [
  ["a plain object", () => ({ a: 1 }), /a Map key cannot be a plain object \(Map keys must load back as hashable Python keys: strings, numbers, bigints, booleans, null, or tuples of these\)/],
  ["an array", () => [1, 2], /a Map key cannot be an array \(a Python list\) .*\(mark it as a tuple with tuple\(\.\.\.\)/],
  ["a tensor", () => Tensor.zeros([2]), /a Map key cannot be a Tensor .*a tensor key would load as a new tensor/],
  ["a Uint8Array", () => Uint8Array.from([1, 2]), /a Map key cannot be a Uint8Array .*use a string/],
  ["a Map", () => new Map(), /a Map key cannot be a Map/],
  ["a tuple holding a list", () => tuple<StateValue>(1, [2]), /the Map key tuple\(1, <an array \(a Python list\)>\) holds an array \(a Python list\), which a tuple key cannot hold/],
  ["undefined", () => undefined, /a Map key cannot be undefined/],
];

describe("Map keys", () => {
  for (const background of [false, true]) {
    test(`a Map key that is an object, array, tensor or Uint8Array is refused at saveState (${background ? "background" : "foreground"}), naming the key path, and nothing on disk changes`, async () => {
      const { dir, manager } = await managerWithCheckpoint();
      const before = await diskSnapshot(dir);
      for (const [what, key, message] of UNLOADABLE_KEYS) {
        await manager.beginCheckpoint(2, { background });
        const state = trainingState(2);
        ((state.optimizer as StateDict).state as Map<unknown, StateValue>).set(key(), { step: 1 });
        await assert.rejects(manager.saveState(state), saveRefusedWith("saveState", 2, new RegExp(`state\\.optimizer\\.state: ${message.source}`)), what);
        // Foreground: the checkpoint is dropped at once; background: once the refused step is reached.
        if (background) await manager.abortCheckpoint();
        else await assert.rejects(manager.commitCheckpoint(), /call beginCheckpoint\(stepNr\) first/, "the checkpoint was dropped");
        assert.deepEqual(await diskSnapshot(dir), before, `${what}: nothing was written, and the dropped step_2.tmp is gone`);
      }
      assertSameState(await manager.loadCheckpoint(1), trainingState(1), "the earlier checkpoint is untouched");

      // The manager is usable: the next checkpoint saves and commits.
      await manager.beginCheckpoint(2, { background });
      await manager.saveState(trainingState(2));
      await manager.commitCheckpoint();
      await manager.waitForPendingSave();
      assert.deepEqual(await manager.getStepNumbers(), [1, 2]);
      assertSameState(await manager.loadCheckpoint(2), trainingState(2));
      await manager.close();
    });
  }

  test("keys that are one key in Python (1, 1n, true, a whole PyFloat; equal tuples) are refused, naming both", () => {
    const cases: [unknown, unknown, RegExp][] = [
      [1, 1n, /the Map keys 1 and 1n are one key in Python, so the loaded dict would keep only one of them/],
      [1, true, /the Map keys 1 and true are one key/],
      [0n, false, /the Map keys 0n and false are one key/],
      [2, new PyFloat(2), /the Map keys 2 and new PyFloat\(2\) are one key/],
      [2 ** 53, 2n ** 53n, /the Map keys 9007199254740992 and 9007199254740992n are one key/],
      [tuple<StateValue>(1, "a"), tuple<StateValue>(1n, "a"), /the Map keys tuple\(1, "a"\) and tuple\(1n, "a"\) are one key/],
    ];
    for (const [a, b, message] of cases) {
      const table = new Map<unknown, StateValue>([[a, "first"], [b, "second"]]);
      assert.throws(() => checkStateValue({ table } as never), refusedWith(new RegExp(`^state\\.table: ${message.source}`)));
    }
    // Keys that only look alike are different Python keys.
    checkStateValue({ table: new Map<unknown, StateValue>([[1, "int"], ["1", "str"], [1.5, "float"], [null, "none"], [tuple(1), "tuple"], [2n, "two"], [Number.NaN, "nan"]]) } as never);
  });

  test("the keys that are allowed come back here as the same keys", async () => {
    const path = join(await tempDir(), "keys.pt");
    const keys: StateKey[] = ["name", "", 0, -7, 2 ** 40, 2.5, -0.125, 2 ** 60, 5n, 2n ** 70n, true, null];
    const table = new Map<unknown, StateValue>(keys.map((key, i) => [key, i]));
    const pairKey = tuple<StateValue>(1, "a", tuple(null, 2n ** 64n));
    table.set(pairKey, "tuple");
    await new TorchTensorDumper().dump({ table: table as never }, path);
    const loaded = ((await new TorchTensorLoader().load(path)) as StateDict).table as Map<unknown, StateValue>;
    const expected = keys.map((key) => (key === 5n ? 5 : key)); // Python ints come back as numbers when they are safe integers
    assert.deepEqual([...loaded.keys()].slice(0, keys.length), expected);
    const loadedTuple = [...loaded.keys()][keys.length];
    assert.deepEqual(loadedTuple, [1, "a", [null, 2n ** 64n]]);
    assert.equal(loaded.get(loadedTuple), "tuple");
  });

  test("the keys that are allowed load in torch.load as hashable keys of the Python types they stand for", async (t) => {
    const python = requireTorch(t);
    if (python === null) return;
    const path = join(await tempDir(), "keys-torch.pt");
    const table = new Map<unknown, StateValue>([
      ["name", 0], [3, 1], [2.5, 2], [2 ** 60, 3], [5n, 4], [true, 5], [null, 6], [new PyFloat(4), 7], [tuple<StateValue>(1, tuple("x")), 8],
    ]);
    await new TorchTensorDumper().dump({ table: table as never }, path);
    const script = `
import sys, torch
table = torch.load(sys.argv[1])["table"]
for key, value in table.items():
    print(value, type(key).__name__, repr(key), hash(key) == hash(key))`;
    const lines = runPython(python, script, [path]).trim().split("\n");
    assert.deepEqual(lines, [
      "0 str 'name' True",
      "1 int 3 True",
      "2 float 2.5 True",
      "3 float 1.152921504606847e+18 True",
      "4 int 5 True",
      "5 bool True True",
      "6 NoneType None True",
      "7 float 4.0 True",
      "8 tuple (1, ('x',)) True",
    ]);
  });

  test("TorchTensorDumper refuses the same keys, naming the key path, and leaves no file", async () => {
    const dir = await tempDir();
    const path = join(dir, "bad.pt");
    await assert.rejects(new TorchTensorDumper().dump({ model: { table: new Map<unknown, StateValue>([[Tensor.zeros([1]), 1]]) as never } }, path), (error: unknown) => {
      assert.ok(error instanceof TensorDumpError);
      assert.match(error.message, /: cannot save the state: state\.model\.table: a Map key cannot be a Tensor/);
      assert.ok(error.cause instanceof FormatError);
      assert.equal(error.cause.code, "PICKLE_UNSUPPORTED");
      return true;
    });
    assert.deepEqual(await readdir(dir), []);
  });
});

describe("values that cannot be saved", () => {
  test("undefined, functions, symbols, class instances and bare typed arrays are refused naming their key path", () => {
    class Module {}
    const cases: [StateDict, RegExp][] = [
      [{ optimizer: { state: new Map([[3, { exp_avg: undefined as never }]]) } }, /^state\.optimizer\.state\[3\]\.exp_avg: undefined cannot be saved in a state \(use null for Python's None, or leave the key out\)$/],
      [{ model: { "linear.weight": (() => 1) as never } }, /^state\.model\["linear\.weight"\]: a function cannot be saved in a state \(a state holds tensors, numbers, bigints, strings, booleans, null, bytes \(Uint8Array\), arrays, tuples, plain objects and Maps\)$/],
      [{ list: [1, 2, Symbol("s") as never] }, /^state\.list\[2\]: a symbol cannot be saved/],
      [{ names: new Map([["3", new Module() as never]]) }, /^state\.names\["3"\]: a Module cannot be saved in a state/],
      [{ when: new Date(0) as never }, /^state\.when: a Date cannot be saved/],
      [{ weights: new Float32Array(2) as never }, /^state\.weights: a Float32Array cannot be saved as it is; wrap it with Tensor\.from\(array, \{ shape \}\)$/],
      [{ ids: new Map([[5n, new Set() as never]]) }, /^state\.ids\[5n\]: a Set cannot be saved/],
      [{ holes: [1, , 3] as never }, /^state\.holes\[1\]: undefined cannot be saved/],
      [{ t: tuple<StateValue>(1, new Map([[tuple(1, 2), [undefined as never]]]) as never) }, /^state\.t\[1\]\[tuple\(1, 2\)\]\[0\]: undefined cannot be saved/],
      [orderedDict({ w: 1 }, { _metadata: { bad: undefined as never } }), /^state\.<attributes>\._metadata\.bad: undefined cannot be saved/],
    ];
    for (const [state, message] of cases) {
      assert.throws(() => checkStateValue(state), refusedWith(message), message.source);
      assert.throws(() => Pickler.dump(state), Error, `the pickler refuses ${message.source} too`);
    }
  });

  test("a string that is not valid Unicode, a PyDType torch lacks, an int over 255 bytes, a bad torch.Size and a tuple inside itself are refused", () => {
    const selfTuple: StateValue[] = [];
    const inner = tuple<StateValue>(1, selfTuple);
    selfTuple.push(inner);
    const cases: [StateDict, RegExp][] = [
      [{ name: "a\ud800b" }, /^state\.name: a string with an unpaired surrogate \(not valid Unicode\) cannot be written as UTF-8$/],
      [{ table: new Map([["\udc00", 1]]) }, /^state\.table: the Map key "\\udc00" is a string with an unpaired surrogate/],
      [{ dtype: new PyDType("float8") }, /^state\.dtype: PyDType\("float8"\) is not a torch dtype \(float32, /],
      [{ big: 2n ** 2040n }, /^state\.big: an int longer than 255 bytes cannot be saved$/],
      [{ size: markTuple([2, 1.5], "torch.Size") }, /^state\.size\[1\]: a torch\.Size holds ints, not 1\.5$/],
      [{ t: inner }, /^state\.t\[1\]\[0\]: a tuple that contains itself cannot be saved \(Python could not build it\)$/],
    ];
    for (const [state, message] of cases) assert.throws(() => checkStateValue(state), refusedWith(message), message.source);
    // The largest ints the pickler writes are accepted.
    checkStateValue({ big: 2n ** 2039n - 1n, small: -(2n ** 2039n) });
    Pickler.dump({ big: 2n ** 2039n - 1n, small: -(2n ** 2039n) });
  });

  test("the nesting limit is the pickler's: 1000 levels of containers pass both (tensors add none), 1001 are refused naming the path", async () => {
    const nested = (depth: number, leaf: StateValue): StateValue => {
      let value: StateValue = [leaf];
      for (let i = 1; i < depth; i++) value = i % 2 === 0 ? [value] : { k: value };
      return value;
    };
    const deepest = nested(1000, Tensor.zeros([1]));
    checkStateValue(deepest);
    const path = join(await tempDir(), "deep.pt");
    await new TorchTensorDumper().dump(deepest, path);
    let loaded = await new TorchTensorLoader().load(path);
    for (let level = 0; level < 1000; level++) loaded = Array.isArray(loaded) ? loaded[0]! : (loaded as StateDict).k!;
    assert.ok(loaded instanceof Tensor, "the tensor 1000 levels down was written and read back");

    const tooDeep = nested(1001, 1);
    assert.throws(() => checkStateValue(tooDeep), refusedWith(/^state\[0\]\.k\[0\]\.k.*…\(\d+ more levels\)….*: the state is nested deeper than 1000 levels$/));
    assert.throws(() => Pickler.dump(tooDeep), /nested deeper than 1000 levels/);
    // A tuple key counts its own levels.
    let key: StateValue[] = tuple(1);
    for (let i = 1; i < 999; i++) key = tuple<StateValue>(key);
    checkStateValue(new Map([[key, 1]]) as never);
    assert.throws(() => checkStateValue([new Map([[key, 1]])] as never), refusedWith(/^state\[0\]: a Map key is a tuple nested deeper than 1000 levels$/));
  });

  test("in background mode an unsaveable value is refused by the saveState call itself, before any of it is queued", async () => {
    const { dir, manager } = await managerWithCheckpoint();
    const before = await diskSnapshot(dir);
    await manager.beginCheckpoint(2, { background: true });
    await assert.rejects(manager.saveState({ ...trainingState(2), callback: (() => 0) as never }), saveRefusedWith("saveState", 2, /state\.callback: a function cannot be saved/));
    await manager.abortCheckpoint();
    assert.deepEqual(await diskSnapshot(dir), before, "the refused state reached no file");
    assert.equal(manager.hasPendingSave, false);
    await manager.beginCheckpoint(2, { background: true });
    await manager.saveState(trainingState(2));
    await manager.commitCheckpoint();
    await manager.waitForPendingSave(); // nothing failed in the background
    assertSameState(await manager.loadCheckpoint(2), trainingState(2));
    await manager.close();
  });

  test("a refusal on one rank fails that checkpoint on every rank, in background mode too, and all can begin again", async () => {
    for (const background of [false, true]) {
      const dir = await tempDir();
      const managers = managersFor(dir, inProcessGangs(2, 1));
      const stateOf = (rank: number): StateDict => ({ model: modelState(1), rank });
      await onAllRanks(managers, (m) => m.beginCheckpoint(1, { background }));
      const bad = { ...stateOf(1), ids: new Map<unknown, StateValue>([[[1, 2], "list key"]]) as never };
      const saves = await settleWithin(5_000, managers.map((m, rank) => m.saveState(rank === 1 ? bad : stateOf(rank), { replicatedKeys: ["model"] })));
      assert.equal(saves[1]!.status, "rejected", "the refusing rank hears it from its own call");
      assert.match(((saves[1] as PromiseRejectedResult).reason as Error).message, /state\.ids: a Map key cannot be an array/);
      if (background) {
        assert.equal(saves[0]!.status, "fulfilled", "rank 0's save was queued");
        const ends = await settleWithin(5_000, managers.map(async (m) => {
          await m.commitCheckpoint();
          await m.waitForPendingSave();
        }));
        for (const [rank, end] of ends.entries()) {
          assert.equal(end.status, "rejected", `rank ${rank} learns that the checkpoint failed`);
          assert.match(((end as PromiseRejectedResult).reason as Error).message, /state\.ids: a Map key cannot be an array/);
        }
      } else {
        assert.equal(saves[0]!.status, "rejected", "every rank's call rejects");
        assert.match(((saves[0] as PromiseRejectedResult).reason as Error).message, /rank 1 failed: .*state\.ids: a Map key cannot be an array/);
      }
      assert.deepEqual(await readdir(dir), [".ckpt.lock"], "nothing of the checkpoint is left");
      await onAllRanks(managers, (m) => m.beginCheckpoint(1, { background }));
      await onAllRanks(managers, (m, rank) => m.saveState(stateOf(rank), { replicatedKeys: ["model"] }));
      await onAllRanks(managers, (m) => m.commitCheckpoint());
      await onAllRanks(managers, (m) => m.waitForPendingSave());
      for (const [rank, state] of (await onAllRanks(managers, (m) => m.loadCheckpoint(1))).entries()) assertSameState(state, stateOf(rank));
      await onAllRanks(managers, (m) => m.close());
    }
  });

  test("saveState, saveMetadata and saveConsolidatedFsdpModel name the key path in their value", async () => {
    const { manager } = await managerWithCheckpoint();
    await manager.beginCheckpoint(2);
    const state = trainingState(2);
    ((state.optimizer as StateDict).state as Map<number, StateValue>).set(3, { exp_avg: undefined as never });
    await assert.rejects(manager.saveState(state), saveRefusedWith("saveState", 2, /state\.optimizer\.state\[3\]\.exp_avg: undefined cannot be saved/));
    await manager.beginCheckpoint(2);
    await assert.rejects(manager.saveMetadata({ notes: [undefined as never] }), saveRefusedWith("saveMetadata", 2, /metadata\.notes\[0\]: undefined cannot be saved/));
    await manager.beginCheckpoint(2);
    await assert.rejects(manager.saveConsolidatedFsdpModel({ w: Tensor.zeros([1]), b: new Int32Array(1) as never }), saveRefusedWith("saveConsolidatedFsdpModel", 2, /model\.b: an Int32Array cannot be saved as it is/));
    assert.deepEqual(await manager.getStepNumbers(), [1]);
    await manager.close();
  });
});

describe("saveModelMetadata config", () => {
  test("a function in config is an InvalidArgumentError naming its key path, and model.yaml is left as it was", async () => {
    const dir = await tempDir();
    const manager = new FileCheckpointManager({ checkpointDir: dir });
    await manager.saveModelMetadata({ family: "llama", config: { dim: 8 } });
    const card = await readFile(join(dir, "model.yaml"), "utf8");
    const cases: [unknown, RegExp][] = [
      [{ dim: 8, layers: [{ act: Math.tanh }] }, /^config\.layers\[0\]\.act is a function, which is not plain data/],
      [{ sizes: [1, undefined] }, /^config\.sizes\[1\] is undefined, which YAML cannot hold \(use null\)/],
      [{ table: new Map([["a", 1]]) }, /^config\.table is a Map, which is not plain data: use a plain object/],
      [{ "rope.theta": Symbol("x") }, /^config\["rope\.theta"\] is a symbol/],
      [{ created: new Date(0) }, /^config\.created is a Date.*toISOString/],
      [new (class LlamaConfig { dim = 8 })(), /^config is a LlamaConfig, which is not plain data: copy its fields into a plain object/],
    ];
    for (const [config, message] of cases) await assert.rejects(manager.saveModelMetadata({ family: "llama", config }), refusedWith(message), message.source);
    const cyclic: Record<string, unknown> = { dim: 8 };
    cyclic.self = cyclic;
    await assert.rejects(manager.saveModelMetadata({ family: "llama", config: cyclic }), refusedWith(/^config\.self contains itself/));
    assert.equal(await readFile(join(dir, "model.yaml"), "utf8"), card, "model.yaml is unchanged");

    // Plain data, shared parts, non-finite numbers and bigints are fine; undefined properties are left out.
    const shared = { heads: 4 };
    await manager.saveModelMetadata({ family: "llama", config: { a: shared, b: shared, eps: Infinity, big: 2n ** 70n, dropout: undefined, name: null } });
    const written = parseYaml(await readFile(join(dir, "model.yaml"), "utf8"), { intAsBigInt: true }) as { model_config: Record<string, unknown> };
    assert.deepEqual(written.model_config, { a: { heads: 4n }, b: { heads: 4n }, eps: Infinity, big: 2n ** 70n, name: null });
    await manager.close();
  });

  test("checkPlainData walks configs nested far deeper than the stack without recursing, and refuses past 1000 levels", () => {
    let config: unknown = 1;
    for (let i = 0; i < 1000; i++) config = [config];
    checkPlainData(config);
    assert.throws(() => checkPlainData([config]), refusedWith(/is nested deeper than 1000 levels/));
    let deep: unknown = 1;
    for (let i = 0; i < 100_000; i++) deep = { d: deep };
    assert.throws(() => checkPlainData(deep), refusedWith(/is nested deeper than 1000 levels/));
  });
});

describe("numbers beyond 2^53", () => {
  const state = (): StateDict => ({ loss: 1e300, best: 2 ** 53, negative: -(2 ** 60), max: Number.MAX_VALUE, safe: 2 ** 53 - 1 });

  test("whole numbers that are not safe integers are saved as floats and come back as numbers", async () => {
    const dir = await tempDir();
    const manager = new FileCheckpointManager({ checkpointDir: dir });
    await manager.beginCheckpoint(1);
    await manager.saveState(state());
    await manager.commitCheckpoint();
    const loaded = await manager.loadCheckpoint(1);
    for (const key of ["loss", "best", "negative", "max", "safe"]) assert.equal(typeof loaded[key], "number", key);
    assert.equal(Math.min(loaded.loss as number, loaded.best as number), 2 ** 53);
    assert.deepEqual([loaded.loss, loaded.best, loaded.negative, loaded.max, loaded.safe], [1e300, 2 ** 53, -(2 ** 60), Number.MAX_VALUE, 2 ** 53 - 1]);
    await manager.close();
  });

  test("torch.load reads them as Python floats, and safe integers as ints", async (t) => {
    const python = requireTorch(t);
    if (python === null) return;
    const path = join(await tempDir(), "numbers.pt");
    await new TorchTensorDumper().dump(state(), path);
    const script = `
import sys, torch
state = torch.load(sys.argv[1])
for key in ["loss", "best", "negative", "max", "safe"]:
    print(key, type(state[key]).__name__, repr(state[key]))`;
    assert.deepEqual(runPython(python, script, [path]).trim().split("\n"), [
      "loss float 1e+300",
      "best float 9007199254740992.0",
      "negative float -1.152921504606847e+18",
      "max float 1.7976931348623157e+308",
      "safe int 9007199254740991",
    ]);
  });
});
