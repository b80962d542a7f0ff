/**
 * The legacy format of torch.save (before PyTorch 1.6, or `_use_new_zipfile_serialization=False`),
 * with files written by real PyTorch at test time. Its fixtures of every dtype, views, shared
 * storages and Python values are in test/fixtures/legacy-*.pt (torch-interop.test.ts checks them);
 * malformed files are built byte by byte in malformed-input.test.ts.
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { readFile, rm, stat } from "node:fs/promises";
import { join } from "node:path";
import { test } from "node:test";
import { crc32 } from "node:zlib";

import { FileCheckpointManager, Tensor, TorchTensorLoader, type StateDict } from "../src/index.js";
import { readLegacyTorchFile } from "../src/formats/torch/legacy-storages.js";
import { LocalFileSystem } from "../src/fs/local-file-system.js";
import { useTempDirs } from "./helpers/checkpoint-helpers.js";
import { describe, type Description } from "./helpers/describe.js";
import { requireTorch, runPython } from "./helpers/torch-python.js";
import { bundledOnce } from "../torture/lib/bundle-child.js";

const tempDir = useTempDirs("legacy-format");
const HELPERS = join(import.meta.dirname, "helpers");
const loader = new TorchTensorLoader();

test("a 300 MiB legacy file loads with its peak memory under twice its size, and in place with almost none", { timeout: 300_000 }, async (t) => {
  const python = requireTorch(t);
  if (python === null) return;
  const path = join(await tempDir(), "big-legacy.pt");
  const bigNumel = (300 << 20) / 4;
  runPython(python, `
import sys, torch
big = torch.arange(${bigNumel}, dtype=torch.int32)
small = torch.arange(4000, dtype=torch.int32)
torch.save({"big": big, "small": small, "view": small[1000:2000], "half": torch.tensor([1.5, -2.0], dtype=torch.float16), "step": 7},
           sys.argv[1], _use_new_zipfile_serialization=False)
`, [path]);
  try {
    const { size } = await stat(path);
    assert.ok(size > 300 << 20);
    // Each load runs in a fresh process, so the peak resident set measures this load alone.
    const bundle = await bundledOnce(join(HELPERS, "legacy-memory-child.ts"));
    const measure = (mode: "whole" | "into"): { peakGrowth: number; checks: Record<string, unknown> } => {
      const child = spawnSync(process.execPath, [bundle, path, mode, String(bigNumel)], { encoding: "utf8" });
      assert.equal(child.status, 0, child.stderr);
      return JSON.parse(child.stdout) as { peakGrowth: number; checks: Record<string, unknown> };
    };
    // Read whole into one buffer and the tensors are views of it: the file is in memory once.
    const whole = measure("whole");
    assert.deepEqual(whole.checks, { numel: bigNumel, sampled: true, viewShares: true, inPlace: false });
    assert.ok(whole.peakGrowth < 2 * size, `loading grew the peak RSS by ${whole.peakGrowth >> 20} MiB for a ${size >> 20} MiB file`);
    // In place, the big storage goes straight into the live tensor: nothing of its size is allocated.
    const into = measure("into");
    assert.deepEqual(into.checks, { numel: bigNumel, sampled: true, viewShares: true, inPlace: true });
    assert.ok(into.peakGrowth < size / 8, `loading in place grew the peak RSS by ${into.peakGrowth >> 20} MiB for a ${size >> 20} MiB file`);
    t.diagnostic(`${size >> 20} MiB legacy file: peak RSS grew by ${whole.peakGrowth >> 20} MiB loading it, ${into.peakGrowth >> 20} MiB loading it in place`);
  } finally {
    await rm(path, { force: true });
  }
});

test("a legacy file whose pickles outgrow the first read window loads with every storage aligned, and its CRC-32 comes from the same reads", async (t) => {
  const python = requireTorch(t);
  if (python === null) return;
  const path = join(await tempDir(), "long-pickle.pt");
  const expected = JSON.parse(runPython(python, `
import collections, json, sys, torch
sys.dont_write_bytecode = True
sys.path.insert(0, sys.argv[2])
from describe import describe_file
state = collections.OrderedDict((f"layer.{i}.weight", torch.full((3,), float(i))) for i in range(2000))
# Storages of odd byte sizes between them: packed back to back in the file, none stays aligned there.
state["odd"] = torch.tensor([1, 2, 3], dtype=torch.int8)
state["half"] = torch.tensor([0.5, 1.5, 2.5], dtype=torch.float16)
state["big"] = torch.arange(300000, dtype=torch.int64)
state["notes"] = "x" * (3 << 20)
torch.save(state, sys.argv[1], _use_new_zipfile_serialization=False)
print(json.dumps(describe_file(sys.argv[1])))
`, [path, HELPERS])) as Description;
  const loaded = (await loader.load(path)) as Record<string, unknown>;
  assert.deepEqual(describe(loaded), expected);
  // Every storage sits at an aligned place, so `.data` is a view of it for every dtype: writes go
  // to the tensor, as for the zip format.
  for (const value of Object.values(loaded)) {
    if (!(value instanceof Tensor)) continue;
    assert.equal(value.storage.bytes.byteOffset % 64, 0);
  }
  const big = loaded.big as Tensor;
  (big.data as BigInt64Array)[7] = -1n;
  assert.equal((big.data as BigInt64Array)[7], -1n);

  const fileSystem = new LocalFileSystem();
  const reader = await fileSystem.openReader(path);
  try {
    const { state, crc32: crc } = await readLegacyTorchFile(reader, { crc: true });
    assert.deepEqual(describe(state), expected);
    assert.equal(crc, crc32(await readFile(path)), "the reads covered the file exactly once");
  } finally {
    await reader.close();
  }
});

test("a legacy file loads in place into live tensors, and a recorded digest is checked on both paths", async (t) => {
  const python = requireTorch(t);
  if (python === null) return;
  const path = join(await tempDir(), "model.pt");
  runPython(python, `
import sys, torch
torch.save({"weight": torch.arange(6, dtype=torch.float32).reshape(2, 3), "bias": torch.tensor([1, -1], dtype=torch.int64), "step": 3},
           sys.argv[1], _use_new_zipfile_serialization=False)
`, [path]);
  const weight = Tensor.zeros([2, 3], "float32");
  const state = (await loader.load(path, { into: { weight } })) as StateDict;
  assert.equal(state.weight, weight, "the live tensor is returned");
  assert.deepEqual(Array.from(weight.data as Float32Array), [0, 1, 2, 3, 4, 5]);
  assert.deepEqual(Array.from((state.bias as Tensor).data as BigInt64Array), [1n, -1n]);

  const bytes = await readFile(path);
  const good = { size: bytes.length, crc32: crc32(bytes) };
  const bad = { size: bytes.length, crc32: (good.crc32 ^ 1) >>> 0 };
  await loader.load(path, { expectedDigest: good });
  await loader.load(path, { expectedDigest: good, into: { weight } });
  for (const into of [undefined, { weight }]) {
    await assert.rejects(loader.load(path, { expectedDigest: bad, ...(into === undefined ? {} : { into }) }), (error: Error) => {
      assert.match(error.message, /the file is corrupt: its CRC-32 is/);
      return true;
    });
  }
});

test("legacy storage views (view metadata, written by old PyTorch) load as torch.load reads them", async (t) => {
  const python = requireTorch(t);
  if (python === null) return;
  const path = join(await tempDir(), "storage-views.pt");
  // PyTorch 1.13 writes no storage views any more: this pickler gives one tensor a view of
  // elements 2 to 5 of the storage its neighbour uses whole, as older versions could.
  const out = runPython(python, `
import collections, json, pickle, struct, sys, torch

class Storage:
    def __init__(self, pid): self.pid = pid

class SavedTensor:
    def __init__(self, storage, offset, size): self.args = (storage, offset, size, (1,), False, collections.OrderedDict())
    def __reduce__(self): return (torch._utils._rebuild_tensor_v2, self.args)

class Pickler(pickle.Pickler):
    def persistent_id(self, obj): return obj.pid if isinstance(obj, Storage) else None

root = Storage(("storage", torch.FloatStorage, "100", "cpu", 8, None))
view = Storage(("storage", torch.FloatStorage, "100", "cpu", 8, ("200", 2, 4)))
state = {"whole": SavedTensor(root, 0, (8,)), "in_view": SavedTensor(view, 1, (2,))}
with open(sys.argv[1], "wb") as f:
    for header in (0x1950a86a20f9469cfc6c, 1001, {"protocol_version": 1001, "little_endian": True}):
        pickle.dump(header, f, protocol=2)
    Pickler(f, protocol=2).dump(state)
    pickle.dump(["100"], f, protocol=2)
    f.write(struct.pack("<q", 8) + struct.pack("<8f", *range(8)))
loaded = torch.load(sys.argv[1])
print(json.dumps({k: v.tolist() for k, v in loaded.items()}))
`, [path]);
  const inTorch = JSON.parse(out) as Record<string, number[]>;
  assert.deepEqual(inTorch, { whole: [0, 1, 2, 3, 4, 5, 6, 7], in_view: [3, 4] });
  const state = (await loader.load(path)) as Record<string, Tensor>;
  assert.deepEqual(Array.from(state.whole!.data as Float32Array), inTorch.whole);
  assert.deepEqual(Array.from(state.in_view!.data as Float32Array), inTorch.in_view);
  assert.equal(state.in_view!.storage, state.whole!.storage, "one storage, as in torch");
});

test("a fairseq2 checkpoint directory saved by an old PyTorch (legacy files) lists and loads", async (t) => {
  const python = requireTorch(t);
  if (python === null) return;
  const dir = await tempDir();
  runPython(python, `
import collections, os, sys, torch
step = os.path.join(sys.argv[1], "step_100")
os.makedirs(step)
legacy = {"_use_new_zipfile_serialization": False}
model = collections.OrderedDict([("proj.weight", torch.ones(2, 3)), ("proj.bias", torch.zeros(2))])
torch.save({"model": model, "model_key": "model"}, os.path.join(step, "model.pt"), **legacy)
torch.save({"step_nr": 100, "optimizer": {"state": {0: {"exp_avg": torch.full((2, 3), 0.5)}}}}, os.path.join(step, "rank_0.pt"), **legacy)
`, [dir]);
  const manager = new FileCheckpointManager({ checkpointDir: dir });
  const { stepNr, state } = await manager.loadLastCheckpoint();
  assert.equal(stepNr, 100);
  assert.deepEqual(Object.keys(state).sort(), ["model", "optimizer", "step_nr"]);
  assert.deepEqual(Array.from(((state.model as StateDict)["proj.weight"] as Tensor).data as Float32Array), [1, 1, 1, 1, 1, 1]);
  await manager.close();
});
