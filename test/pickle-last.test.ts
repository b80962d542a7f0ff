// The order of a .pt archive of many small tensors: the storages first, numbered in the order the
// pickle meets them (as torch.save numbers them), sent to the sink while the pickle is made in
// steps, then the pickle (src/formats/torch/torch-writer.ts, picklesLast). Other files keep
// torch.save's order. torch.load reading such a file: test/torch-interop.test.ts.
import assert from "node:assert/strict";
import { readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { test } from "node:test";
import { FileCheckpointManager } from "../src/checkpoint/file-checkpoint-manager.js";
import { partTotals } from "../src/checkpoint/state-split.js";
import { MemoryReader, type ByteSink } from "../src/formats/byte-io.js";
import { writeTorchArchive } from "../src/formats/torch/torch-writer.js";
import { ZipReader } from "../src/formats/zip/zip-reader.js";
import { TorchTensorDumper, TorchTensorLoader } from "../src/io/torch-tensor-io.js";
import { ShardedTensor } from "../src/tensor/sharded-tensor.js";
import { Tensor } from "../src/tensor/tensor.js";
import { orderedDict, tuple, type StateDict, type StateValue } from "../src/values/py-values.js";
import { inspectState } from "../src/values/state-check.js";
import { useTempDirs } from "./helpers/checkpoint-helpers.js";

const tempDir = useTempDirs("pickle-last");

let nextValue = 1;
/** A tensor whose storage holds values no other storage here holds. */
function distinct(length = 4): Tensor {
  return Tensor.from(Float32Array.from({ length }, () => nextValue++), { shape: [length] });
}

/** Past the writer's mark for the pickle last: more than 1,024 storages, small on average. */
const FILLER = 1100;

/**
 * A state whose storages are met in a known order through every kind of container the pickler
 * walks; a view, a repeated list and repeated tensors come after the filler, so that a pickle
 * made in steps meets them again after pausing.
 */
function variedState(fillerLength = 4): { state: StateDict; order: Tensor[] } {
  const a = distinct(8);
  const b = distinct();
  const c = distinct();
  const d = distinct();
  const e = distinct();
  const f = distinct();
  const g = distinct();
  const h = distinct();
  const filler = Array.from({ length: FILLER }, () => distinct(fillerLength));
  const aView = new Tensor({ storage: a.storage, shape: [2], offset: 4 }); // a view: a's storage, met first here
  const shared = [b]; // a list met twice: the second time is a memo reference
  const state: StateDict = {
    first: aView,
    list: shared,
    byNumber: new Map<number, StateValue>([
      [2, e],
      [1, d],
    ]),
    pair: tuple(f, a),
    sharded: new ShardedTensor(c, { globalShape: [8], offsets: [4] }),
    ordered: orderedDict({ inside: g }, { attribute: h }),
    filler,
    again: shared,
    aAgain: a,
    aViewAgain: aView,
    bAgain: b,
  };
  // First met, walking depth first: keys in order, a Map's entries in order, attributes last.
  return { state, order: [a, b, e, d, f, c, g, h, ...filler] };
}

/** The offset of each entry's local header, by name. */
async function entryOffsets(file: Uint8Array): Promise<{ zip: ZipReader; offsetOf: (name: string) => number }> {
  const zip = await ZipReader.open(new MemoryReader(file));
  return { zip, offsetOf: (name) => zip.entry(name).headerOffset };
}

/** What the loaded varied state must show: one storage for the view and its base, one list, the values. */
function assertLoadedAsBuilt(loaded: Record<string, unknown>, order: Tensor[], label: string): void {
  const first = loaded.first as Tensor;
  const aAgain = loaded.aAgain as Tensor;
  assert.equal(first.storage, aAgain.storage, `${label}: the view and its base share one storage again`);
  assert.equal(loaded.aViewAgain, loaded.first, `${label}: a tensor met twice is one tensor again`);
  assert.deepEqual([...(first.data as Float32Array)], [...(order[0]!.data as Float32Array).subarray(4, 6)], `${label}: the view's values`);
  assert.equal(loaded.list, loaded.again, `${label}: a list met twice is one list again`);
  assert.equal((loaded.list as Tensor[])[0]!.storage, (loaded.bAgain as Tensor).storage, `${label}: b's storage is one`);
  assert.ok(loaded.sharded instanceof ShardedTensor, label);
  const filler = loaded.filler as Tensor[];
  assert.deepEqual([...filler[FILLER - 1]!.data], [...order[order.length - 1]!.data], `${label}: the last filler's values`);
}

test("many small tensors: the storages first, numbered in the order the pickle meets them, then data.pkl, byteorder and version", async () => {
  const { state, order } = variedState();
  const path = join(await tempDir(), "varied.pt");
  await new TorchTensorDumper().dump(state, path);

  const { zip, offsetOf } = await entryOffsets(await readFile(path));
  for (let key = 0; key < order.length; key++) {
    const bytes = await zip.read(`archive/data/${key}`);
    assert.ok(Buffer.from(bytes).equals(order[key]!.storage.bytes), `archive/data/${key} holds the storage met ${key}th`);
  }
  assert.equal(zip.find(`archive/data/${order.length}`), undefined, "one entry per storage, views and repeats included");
  for (let key = 1; key < order.length; key++) assert.ok(offsetOf(`archive/data/${key - 1}`) < offsetOf(`archive/data/${key}`), `entry ${key} follows entry ${key - 1}`);
  assert.ok(offsetOf(`archive/data/${order.length - 1}`) < offsetOf("archive/data.pkl"), "the pickle follows every storage");
  assert.ok(offsetOf("archive/data.pkl") < offsetOf("archive/byteorder"));
  assert.ok(offsetOf("archive/byteorder") < offsetOf("archive/version"));

  assertLoadedAsBuilt((await new TorchTensorLoader().load(path)) as Record<string, unknown>, order, "loaded");
});

test("few tensors, or large ones, keep torch.save's order: data.pkl and byteorder first", async () => {
  const dir = await tempDir();
  const few = { weight: distinct(), bias: distinct(), step: 3 };
  // As many storages as the filler, but large on average (80 KiB each: past the 64 KiB mean).
  const large: StateDict = {};
  for (let i = 0; i < FILLER; i++) large[`w${i}`] = Tensor.from(new Float32Array(20 * 1024).fill(i), { shape: [20 * 1024] });
  for (const [name, state] of [["few", few], ["large", large]] as const) {
    const path = join(dir, `${name}.pt`);
    await new TorchTensorDumper().dump(state, path);
    const { offsetOf } = await entryOffsets(await readFile(path));
    assert.ok(offsetOf("archive/data.pkl") < offsetOf("archive/byteorder"), name);
    assert.ok(offsetOf("archive/byteorder") < offsetOf("archive/data/0"), `${name}: the pickle comes first`);
  }
});

/** A sink that takes each write a macrotask later, holding its bytes: the writer waits for it between storages. */
function slowSink(): ByteSink & { bytes: () => Buffer; waits: number } {
  const chunks: Buffer[] = [];
  const sink = {
    waits: 0,
    write: async (chunk: Uint8Array) => {
      chunks.push(Buffer.from(chunk));
      sink.waits++;
      await new Promise((resolve) => setImmediate(resolve));
    },
    bytes: () => Buffer.concat(chunks),
  };
  return sink;
}

test("two archives of one state written at once (each pickle paused while the other runs) keep its views, repeats and storage keys", async () => {
  // Storages of 4 KiB: enough bytes that each writer waits for its sink, and so pauses its pickle.
  const { state, order } = variedState(1024);
  const sinks = [slowSink(), slowSink()];
  // Each pickle meets the shared storages and tensors while the other pauses: marks left by one
  // must not make the other take a storage as new (a second entry, a view no longer shared).
  const digests = await Promise.all(sinks.map((sink) => writeTorchArchive(state, sink)));
  const dir = await tempDir();
  for (let i = 0; i < sinks.length; i++) {
    const file = sinks[i]!.bytes();
    assert.equal(file.byteLength, digests[i]!.size);
    assert.ok(sinks[i]!.waits > 10, `writer ${i} waited for its sink ${sinks[i]!.waits} times`);
    const { zip, offsetOf } = await entryOffsets(file);
    assert.equal(zip.find(`archive/data/${order.length}`), undefined, `writer ${i}: one entry per storage`);
    assert.ok(offsetOf(`archive/data/${order.length - 1}`) < offsetOf("archive/data.pkl"), `writer ${i}: the pickle last`);
    for (const key of [0, 1, order.length - 1]) {
      assert.ok(Buffer.from(await zip.read(`archive/data/${key}`)).equals(order[key]!.storage.bytes), `writer ${i}: archive/data/${key}`);
    }
    const path = join(dir, `concurrent-${i}.pt`);
    await writeFile(path, file);
    assertLoadedAsBuilt((await new TorchTensorLoader().load(path)) as Record<string, unknown>, order, `writer ${i}`);
  }
});

test("the state's check counts the storages under each top-level key; a file's totals are the sum over its keys", () => {
  const shared = distinct(8);
  const state: StateDict = {
    model: { weight: shared, bias: distinct() },
    optimizer: { state: { 0: { exp_avg: distinct(16) } }, tied: shared },
    step_nr: 7,
    top: distinct(2),
  };
  const inspection = inspectState(state);
  assert.equal(inspection.unsaveable, undefined);
  const { totalsByKey } = inspection;
  assert.deepEqual(totalsByKey!.get("model"), { count: 2, bytes: 8 * 4 + 4 * 4 });
  assert.deepEqual(totalsByKey!.get("optimizer"), { count: 1, bytes: 16 * 4 }, "a storage met under an earlier key counts there only");
  assert.deepEqual(totalsByKey!.get("step_nr"), { count: 0, bytes: 0 });
  assert.deepEqual(totalsByKey!.get("top"), { count: 1, bytes: 2 * 4 }, "a tensor right under the root counts under its key");
  assert.deepEqual(partTotals({ model: state.model!, model_key: "model" }, totalsByKey!), { count: 2, bytes: 48 });
  assert.deepEqual(partTotals({ optimizer: state.optimizer!, step_nr: 7, top: state.top! }, totalsByKey!), { count: 2, bytes: 72 });
});

test("a manager's save of many small tensors writes its model file pickle last, and loads back", async () => {
  const dir = await tempDir();
  const { state: model, order } = variedState();
  const manager = new FileCheckpointManager({ checkpointDir: dir });
  await manager.beginCheckpoint(1);
  await manager.saveState({ model, step_nr: 1 });
  await manager.commitCheckpoint();
  await manager.close();

  const modelFile = join(dir, "step_1", "model.pt");
  const { offsetOf } = await entryOffsets(await readFile(modelFile));
  assert.ok(offsetOf(`archive/data/${order.length - 1}`) < offsetOf("archive/data.pkl"), "the model file's pickle comes last");
  const loaded = (await new FileCheckpointManager({ checkpointDir: dir }).loadCheckpoint(1)) as { model: Record<string, unknown>; step_nr: number };
  assert.equal(loaded.step_nr, 1);
  assertLoadedAsBuilt(loaded.model, order, "through the manager");
});
