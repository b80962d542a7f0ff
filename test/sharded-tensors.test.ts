import assert from "node:assert/strict";
import { join } from "node:path";
import { test } from "node:test";

import { InvalidArgumentError, ShardedTensor, Tensor, TorchTensorDumper, TorchTensorLoader, type StateDict } from "../src/index.js";
import { entries, inProcessGangs, managersFor, onAllRanks, readManifest, useTempDirs } from "./helpers/checkpoint-helpers.js";
import { requireTorch, runPython } from "./helpers/torch-python.js";

const tempDir = useTempDirs("sharded");

/** The full tensors of the test model: a 6 × 4 weight (sharded by rows) and a 5-element embedding (sharded flat). */
const FULL_WEIGHT = Float32Array.from({ length: 24 }, (_, i) => i * 0.5 - 3);
const FULL_EMBEDDING = Float64Array.from({ length: 5 }, (_, i) => 100 + i);
const BIAS = Float32Array.from([1, 2, 3, 4]);

/** Rank `dpRank` of `dpSize`'s model: its rows of the weight, its part of the embedding, the whole bias. */
function shardedModel(dpRank: number, dpSize: number, tpRank = 0): StateDict {
  const rowsPer = 6 / dpSize;
  const rows = FULL_WEIGHT.slice(dpRank * rowsPer * 4, (dpRank + 1) * rowsPer * 4).map((x) => x + tpRank);
  // The embedding is split unevenly: rank 0 takes 3 elements, the others share the rest.
  const start = dpRank === 0 ? 0 : 3 + Math.floor(((dpRank - 1) * 2) / (dpSize - 1));
  const end = dpRank === 0 ? 3 : 3 + Math.floor((dpRank * 2) / (dpSize - 1));
  return {
    "0.weight": new ShardedTensor(Tensor.from(rows, { shape: [rowsPer, 4] }), { globalShape: [6, 4], offsets: [dpRank * rowsPer, 0] }),
    "0.bias": Tensor.from(BIAS.slice()),
    embedding: new ShardedTensor(Tensor.from(FULL_EMBEDDING.slice(start, end)), { globalShape: [5], offsets: [start] }),
  };
}

function assertSameShard(actual: unknown, expected: ShardedTensor): void {
  assert.ok(actual instanceof ShardedTensor, `a ShardedTensor, got ${String(actual)}`);
  assert.deepEqual(actual.globalShape, expected.globalShape);
  assert.deepEqual(actual.offsets, expected.offsets);
  assert.deepEqual(actual.shard.shape, expected.shard.shape);
  assert.deepEqual([...actual.shard.data], [...expected.shard.data]);
}

test("a ShardedTensor checks that its shard fits the full tensor", () => {
  const rows = Tensor.from(new Float32Array(8), { shape: [2, 4] });
  assert.throws(() => new ShardedTensor(rows, { globalShape: [6, 4], offsets: [5, 0] }), InvalidArgumentError);
  assert.throws(() => new ShardedTensor(rows, { globalShape: [6], offsets: [0] }), /2 dimensions but globalShape has 1/);
  assert.throws(() => new ShardedTensor(rows, { globalShape: [6, 4], offsets: [-1, 0] }), InvalidArgumentError);
});

test("a ShardedTensor round-trips through a .pt file, and torch.load reads it as a plain dict", async (t) => {
  const dir = await tempDir();
  const path = join(dir, "shard.pt");
  const model = shardedModel(1, 3);
  await new TorchTensorDumper().dump({ model }, path);
  const loaded = (await new TorchTensorLoader().load(path)) as { model: StateDict };
  assertSameShard(loaded.model["0.weight"], model["0.weight"] as ShardedTensor);
  assertSameShard(loaded.model.embedding, model.embedding as ShardedTensor);

  const python = requireTorch(t);
  if (python === null) return;
  const seen = JSON.parse(
    runPython(python, `
import json, sys, torch
w = torch.load(sys.argv[1])["model"]["0.weight"]
print(json.dumps({"marker": w["__ckpt__"], "shape": list(w["shard"].shape), "global": list(w["global_shape"]), "offsets": list(w["offsets"]), "tuple": type(w["offsets"]).__name__}))
`, [path]),
  ) as Record<string, unknown>;
  assert.deepEqual(seen, { marker: "ShardedTensor", shape: [2, 4], global: [6, 4], offsets: [2, 0], tuple: "tuple" });
});

for (const [dpSize, tpSize, background] of [[3, 1, false], [2, 2, false], [2, 1, true]] as const) {
  test(`FSDP-style shards under dp=${dpSize} × tp=${tpSize}${background ? " (background)" : ""}: rank files keep each rank's shards, the manifest records them, and the consolidated model.pt holds the full tensors`, async (t) => {
    const dir = await tempDir();
    const gangs = inProcessGangs(dpSize, tpSize);
    const managers = managersFor(dir, gangs);
    const models = gangs.map((g) => shardedModel(g.dp.rank, dpSize, g.tp.rank));
    await onAllRanks(managers, async (manager, rank) => {
      await manager.beginCheckpoint(10, { background });
      await manager.saveState({ model: models[rank]!, step_nr: 10 });
      await manager.saveConsolidatedFsdpModel(models[rank]!);
      await manager.commitCheckpoint();
      await manager.waitForPendingSave();
    });

    const suffix = (tp: number): string => (tpSize > 1 ? `.${tp}` : "");
    const expectedFiles = ["manifest.json"];
    for (let tp = 0; tp < tpSize; tp++) expectedFiles.push(`model${suffix(tp)}.pt`);
    for (let dp = 0; dp < dpSize; dp++) for (let tp = 0; tp < tpSize; tp++) expectedFiles.push(`rank_${dp}${suffix(tp)}.pt`);
    assert.deepEqual(await entries(join(dir, "step_10")), expectedFiles.sort(), "no scratch file of the consolidation is left");

    // Each rank loads its own shards back.
    const loaded = await onAllRanks(managers, (manager) => manager.loadCheckpoint(10));
    loaded.forEach((state, rank) => {
      const model = state.model as StateDict;
      assertSameShard(model["0.weight"], models[rank]!["0.weight"] as ShardedTensor);
      assertSameShard(model.embedding, models[rank]!.embedding as ShardedTensor);
    });

    const manifest = await readManifest(dir, 10);
    const weights = manifest.sharded!.filter((s) => s.path.join("/") === "model/0.weight");
    assert.equal(weights.length, tpSize);
    for (const entry of weights) {
      assert.deepEqual(entry.globalShape, [6, 4]);
      assert.equal(entry.dtype, "float32");
      assert.deepEqual(entry.shards.map((s) => s.offsets), Array.from({ length: dpSize }, (_, dp) => [dp * (6 / dpSize), 0]));
      assert.deepEqual(entry.shards.map((s) => s.file), Array.from({ length: dpSize }, (_, dp) => `rank_${dp}${suffix(entry.tpRank)}.pt`));
    }

    // The consolidated model, read by PyTorch, holds the full tensors.
    const python = requireTorch(t);
    if (python !== null) {
      for (let tp = 0; tp < tpSize; tp++) {
        const model = JSON.parse(
          runPython(python, `
import json, sys, torch
m = torch.load(sys.argv[1])
assert m["model_key"] == "model"
print(json.dumps({k: {"shape": list(v.shape), "values": v.flatten().tolist()} for k, v in m["model"].items()}))
`, [join(dir, "step_10", `model${suffix(tp)}.pt`)]),
        ) as Record<string, { shape: number[]; values: number[] }>;
        assert.deepEqual(model["0.weight"], { shape: [6, 4], values: [...FULL_WEIGHT].map((x) => x + tp) });
        assert.deepEqual(model.embedding, { shape: [5], values: [...FULL_EMBEDDING] });
        assert.deepEqual(model["0.bias"], { shape: [4], values: [...BIAS] });
      }
    }
    // And loadModel gives full tensors too.
    const full = await managers[0]!.loadModel(10);
    assert.ok(full["0.weight"] instanceof Tensor);
    assert.deepEqual([...(full["0.weight"] as Tensor).data], [...FULL_WEIGHT]);
    await onAllRanks(managers, (manager) => manager.close());
  });
}

test("shards that do not tile the full tensor fail the consolidation on every rank and leave nothing behind", async () => {
  const dir = await tempDir();
  const gangs = inProcessGangs(2, 1);
  const managers = managersFor(dir, gangs);
  const models = gangs.map((g) => shardedModel(g.dp.rank, 2));
  // Rank 1 claims the same rows as rank 0: rows 3..5 are never covered.
  const rows = (models[1]!["0.weight"] as ShardedTensor).shard;
  models[1]!["0.weight"] = new ShardedTensor(rows, { globalShape: [6, 4], offsets: [0, 0] });
  models[1]!.embedding = new ShardedTensor(Tensor.from(new Float64Array(1)), { globalShape: [5], offsets: [4] });
  const results = await Promise.allSettled(
    managers.map(async (manager, rank) => {
      await manager.beginCheckpoint(1);
      await manager.saveConsolidatedFsdpModel(models[rank]!);
    }),
  );
  for (const result of results) {
    assert.equal(result.status, "rejected");
    assert.match(String((result as PromiseRejectedResult).reason), /cover \d+ of its \d+ elements/);
  }
  assert.deepEqual(await entries(dir), [".ckpt.lock"], "the checkpoint was dropped");
  await onAllRanks(managers, (manager) => manager.close());
});
