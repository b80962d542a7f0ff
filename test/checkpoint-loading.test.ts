import assert from "node:assert/strict";
import { readFile, readdir, rm, truncate, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { test } from "node:test";

import {
  CheckpointLoadError,
  CheckpointNotFoundError,
  FileCheckpointManager,
  Tensor,
  fakeGangs,
  isOrderedDict,
  type StateDict,
} from "../src/index.js";
import { arange, assertSameState, modelState, saveStep, trainingState, useTempDirs } from "./helpers/checkpoint-helpers.js";
import { requireTorch, runPython } from "./helpers/torch-python.js";

const tempDir = useTempDirs("loading");

/** A checkpoint directory with steps 1 and 2 (2 with metadata), closed again. */
async function twoCheckpoints(): Promise<{ dir: string; states: StateDict[] }> {
  const dir = await tempDir();
  const manager = new FileCheckpointManager({ checkpointDir: dir });
  const one = await saveStep(manager, 1, { score: 1 });
  const two = await saveStep(manager, 2, { score: 3, metadata: { tokenizer: "bpe", vocab: 32000 } });
  await manager.close();
  return { dir, states: [one, two] };
}

test("loadCheckpoint and loadLastCheckpoint return what saveState was given", async () => {
  const { dir, states } = await twoCheckpoints();
  const manager = new FileCheckpointManager({ checkpointDir: dir });
  assertSameState(await manager.loadCheckpoint(1), states[0]);
  assertSameState(await manager.loadCheckpoint(2), states[1]);
  const { stepNr, state } = await manager.loadLastCheckpoint();
  assert.equal(stepNr, 2);
  assertSameState(state, states[1]);
  // The values themselves, not only their description: int keys, tuples, bigints, bytes.
  const optimizer = state.optimizer as StateDict;
  assert.ok(optimizer.state instanceof Map && optimizer.state.has(0) && optimizer.state.has(1), "int keys stay int keys");
  assert.equal(state.big, 2n ** 60n);
  assert.deepEqual([...(state.rng as Uint8Array)], [1, 2, 3, 2]);
  const weight = (state.model as StateDict)["encoder.weight"] as Tensor;
  assert.ok(weight instanceof Tensor);
  assert.deepEqual([...weight.shape], [2, 3]);
  assert.deepEqual([...(weight.data as Float32Array)], [2, 3, 4, 5, 6, 7]);
});

test("loadLastCheckpoint on a fresh manager after more saves returns the newest state", async () => {
  const dir = await tempDir();
  const writer = new FileCheckpointManager({ checkpointDir: dir });
  for (const stepNr of [5, 10, 15]) await saveStep(writer, stepNr);
  await writer.close();
  const { stepNr, state } = await new FileCheckpointManager({ checkpointDir: dir }).loadLastCheckpoint();
  assert.equal(stepNr, 15);
  assertSameState(state, trainingState(15));
});

test("a missing step is CheckpointNotFoundError with its stepNr, and an empty directory has stepNr undefined", async () => {
  const { dir } = await twoCheckpoints();
  const manager = new FileCheckpointManager({ checkpointDir: dir });
  for (const [name, call] of [
    ["loadCheckpoint", () => manager.loadCheckpoint(7)],
    ["loadMetadata", () => manager.loadMetadata(7)],
    ["loadModel", () => manager.loadModel(7)],
    ["deleteCheckpoint", () => manager.deleteCheckpoint(7)],
  ] as const) {
    await assert.rejects(call(), (error: unknown) => {
      assert.ok(error instanceof CheckpointNotFoundError, name);
      assert.equal(error.stepNr, 7);
      assert.match(error.message, /no checkpoint 7/);
      return true;
    });
  }

  for (const empty of [await tempDir(), join(await tempDir(), "never-created")]) {
    const fresh = new FileCheckpointManager({ checkpointDir: empty });
    for (const call of [() => fresh.loadLastCheckpoint(), () => fresh.loadModel()]) {
      await assert.rejects(call(), (error: unknown) => {
        assert.ok(error instanceof CheckpointNotFoundError);
        assert.equal(error.stepNr, undefined);
        return true;
      });
    }
    await assert.rejects(fresh.loadCheckpoint(0), (error: unknown) => error instanceof CheckpointNotFoundError && error.stepNr === 0);
  }
});

test("loading with another dp or tp size is a CheckpointLoadError naming both layouts", async () => {
  const dir = await tempDir();
  const ranks = [0, 1, 2, 3].map((dpRank) => new FileCheckpointManager({ checkpointDir: dir, gangs: fakeGangs({ dpRank, dpSize: 4 }) }));
  for (const manager of ranks) await manager.beginCheckpoint(5);
  for (const [dpRank, manager] of ranks.entries()) await manager.saveState({ model: modelState(1), rank: dpRank }, { replicatedKeys: ["model"] });
  for (const manager of [...ranks.slice(1), ranks[0]!]) await manager.commitCheckpoint();
  await ranks[0]!.close();

  for (const [gangs, now] of [
    [fakeGangs(), "dp=1, tp=1"],
    [fakeGangs({ dpSize: 2 }), "dp=2, tp=1"],
    [fakeGangs({ dpSize: 8, dpRank: 3 }), "dp=8, tp=1"],
    [fakeGangs({ dpSize: 4, tpSize: 2 }), "dp=4, tp=2"],
  ] as const) {
    const manager = new FileCheckpointManager({ checkpointDir: dir, gangs });
    const calls = [() => manager.loadCheckpoint(5), () => manager.loadLastCheckpoint()];
    for (const call of calls) {
      await assert.rejects(call(), (error: unknown) => {
        assert.ok(error instanceof CheckpointLoadError, now);
        assert.equal(error.stepNr, 5);
        assert.match(error.message, /saved with dp=4, tp=1/);
        assert.ok(error.message.includes(`this job has ${now}`), error.message);
        return true;
      });
    }
  }
  // The model alone depends only on tp: any dp size may load it, another tp size may not.
  assertSameState(await new FileCheckpointManager({ checkpointDir: dir }).loadModel(5), modelState(1));
  await assert.rejects(new FileCheckpointManager({ checkpointDir: dir, gangs: fakeGangs({ tpSize: 2 }) }).loadModel(5), /saved with dp=4, tp=1 but this job has dp=1, tp=2/);

  const tpDir = await tempDir();
  const tpRanks = [0, 1].map((tpRank) => new FileCheckpointManager({ checkpointDir: tpDir, gangs: fakeGangs({ tpRank, tpSize: 2 }) }));
  for (const manager of tpRanks) await manager.beginCheckpoint(6);
  for (const manager of tpRanks) await manager.saveState({ model: modelState(2) });
  await tpRanks[1]!.commitCheckpoint();
  await tpRanks[0]!.commitCheckpoint();
  await tpRanks[0]!.close();
  const single = new FileCheckpointManager({ checkpointDir: tpDir });
  await assert.rejects(single.loadCheckpoint(6), (error: unknown) => {
    assert.ok(error instanceof CheckpointLoadError);
    assert.match(error.message, /saved with dp=1, tp=2 but this job has dp=1, tp=1/);
    return true;
  });
  await assert.rejects(single.loadModel(6), /saved with dp=1, tp=2 but this job has dp=1, tp=1/);
});

/** Asserts that loading step 2 (with `load`) fails with a CheckpointLoadError naming `file`. */
async function assertLoadFailsNaming(load: () => Promise<unknown>, file: string, what: RegExp): Promise<void> {
  await assert.rejects(load(), (error: unknown) => {
    assert.ok(error instanceof CheckpointLoadError, `${file}: ${String(error)}`);
    assert.equal(error.stepNr, 2);
    assert.ok(error.message.includes(file), `the message names ${file}: ${error.message}`);
    assert.match(error.message, what);
    return true;
  });
}

const DAMAGE = {
  "a flipped byte": {
    what: /corrupt/,
    async apply(path: string): Promise<void> {
      const bytes = await readFile(path);
      bytes[Math.floor(bytes.length / 2)]! ^= 0x01;
      await writeFile(path, bytes);
    },
  },
  "a truncated file": {
    what: /corrupt/,
    async apply(path: string): Promise<void> {
      const size = (await readFile(path)).length;
      await truncate(path, size - 10);
    },
  },
  "a missing file": {
    what: /cannot|has no/,
    async apply(path: string): Promise<void> {
      await rm(path);
    },
  },
};

for (const [damage, { what, apply }] of Object.entries(DAMAGE)) {
  test(`${damage} in a committed checkpoint is a CheckpointLoadError naming the file`, async () => {
    for (const file of ["model.pt", "replicated.pt", "rank_0.pt", "metadata.pt"]) {
      const { dir, states } = await twoCheckpoints();
      await apply(join(dir, "step_2", file));
      const manager = new FileCheckpointManager({ checkpointDir: dir });
      if (file === "metadata.pt") {
        await assertLoadFailsNaming(() => manager.loadMetadata(2), file, what);
        assertSameState(await manager.loadCheckpoint(2), states[1], "the state does not need metadata.pt");
        continue;
      }
      await assertLoadFailsNaming(() => manager.loadCheckpoint(2), file, what);
      await assertLoadFailsNaming(() => manager.loadLastCheckpoint(), file, what);
      if (file === "model.pt") {
        await assertLoadFailsNaming(() => manager.loadModel(2), file, what);
        await assertLoadFailsNaming(() => manager.loadModel(), file, what);
      } else {
        assertSameState(await manager.loadModel(2), states[1]!.model, `loadModel does not read ${file}`);
      }
      assertSameState(await manager.loadCheckpoint(1), states[0], "the other checkpoint still loads");
    }
  });
}

test("a damaged file still fails to load when checksum verification is turned off, naming the file", async () => {
  const { dir } = await twoCheckpoints();
  const path = join(dir, "step_2", "rank_0.pt");
  const bytes = await readFile(path);
  await writeFile(path, bytes.subarray(0, bytes.length - 30));
  const manager = new FileCheckpointManager({ checkpointDir: dir, verifyChecksums: false });
  await assertLoadFailsNaming(() => manager.loadCheckpoint(2), "rank_0.pt", /cannot/);
});

test("a damaged manifest.json is a CheckpointLoadError naming it", async () => {
  const { dir } = await twoCheckpoints();
  await writeFile(join(dir, "step_2", "manifest.json"), '{"format": "ckpt-manifest", "version": 1');
  const manager = new FileCheckpointManager({ checkpointDir: dir });
  await assertLoadFailsNaming(() => manager.loadCheckpoint(2), "manifest.json", /not valid JSON/);
});

test("a checkpoint whose manifest rotted is listed as damaged, never resumed from or pruned, and hides no other checkpoint", async () => {
  const { dir, states } = await twoCheckpoints();
  await writeFile(join(dir, "step_2", "manifest.json"), "\u0000garbage");
  const manager = new FileCheckpointManager({ checkpointDir: dir });
  const listed = await manager.listCheckpoints();
  assert.deepEqual(listed.map((c) => [c.stepNr, c.damaged === undefined ? "sound" : "damaged"]), [[1, "sound"], [2, "damaged"]]);
  assert.match(listed[1]!.damaged!, /manifest\.json of step 2 is damaged|not valid JSON/);
  assert.deepEqual(await manager.getStepNumbers(), [1]);
  assert.equal(await manager.getBestStepNumber(), 1, "its score (3) is not trusted either");
  const { stepNr, state } = await manager.loadLastCheckpoint();
  assert.equal(stepNr, 1, "training resumes from the last sound checkpoint");
  assertSameState(state, states[0]);
  await assert.rejects(manager.loadCheckpoint(2), (error: unknown) => {
    assert.ok(error instanceof CheckpointLoadError);
    assert.match(error.message, /checkpoint 2 is damaged/);
    return true;
  });
  assert.deepEqual(await manager.keepLastNCheckpoints(1), { deleted: [], stripped: [] }, "nothing to prune: the damaged one is left alone");
  assert.ok((await readdir(dir)).includes("step_2"));
  await manager.close();
});

test("loadMetadata returns what saveMetadata was given, or null when the checkpoint has none", async () => {
  const { dir } = await twoCheckpoints();
  const manager = new FileCheckpointManager({ checkpointDir: dir });
  assert.equal(await manager.loadMetadata(1), null);
  assert.deepEqual(await manager.loadMetadata(2), { tokenizer: "bpe", vocab: 32000 });

  const writer = new FileCheckpointManager({ checkpointDir: await tempDir() });
  const metadata = { shapes: [arange(0, [2])], name: "run-7", nested: { ok: true } };
  await writer.beginCheckpoint(1);
  await writer.saveState({ model: {} });
  await writer.saveMetadata(metadata);
  await writer.commitCheckpoint();
  assertSameState(await writer.loadMetadata(1), metadata);
  await writer.close();
});

test("loadModel reads only the model file: it works with the rank, replicated and metadata files gone", async () => {
  const { dir, states } = await twoCheckpoints();
  for (const file of ["rank_0.pt", "replicated.pt", "metadata.pt"]) await rm(join(dir, "step_2", file));
  const manager = new FileCheckpointManager({ checkpointDir: dir });
  const model = await manager.loadModel(2);
  assertSameState(model, states[1]!.model);
  assertSameState(await manager.loadModel(), states[1]!.model, "loadModel() takes the last checkpoint");
  await assert.rejects(manager.loadCheckpoint(2), CheckpointLoadError, "resuming needs the files that are gone");
});

test("loadModel() picks the last checkpoint, model-only ones included", async () => {
  const dir = await tempDir();
  const manager = new FileCheckpointManager({ checkpointDir: dir });
  for (const stepNr of [1, 2, 3]) await saveStep(manager, stepNr);
  await manager.deleteCheckpoint(3, { preserveModel: true });
  assert.equal(await manager.getLastStepNumber(), 2, "step 3 cannot be resumed");
  assertSameState(await manager.loadModel(), modelState(3), "but its model is the last one");
  assertSameState(await manager.loadModel(1), modelState(1));
  assert.equal((await manager.loadLastCheckpoint()).stepNr, 2);
  await manager.close();
});

test("loadModel of a checkpoint whose model is sharded across dp ranks says to save a consolidated copy", async () => {
  const dir = await tempDir();
  const ranks = [0, 1].map((dpRank) => new FileCheckpointManager({ checkpointDir: dir, gangs: fakeGangs({ dpRank, dpSize: 2 }) }));
  for (const manager of ranks) await manager.beginCheckpoint(1);
  for (const manager of ranks) await manager.saveState({ model: modelState(1) });
  await ranks[1]!.commitCheckpoint();
  await ranks[0]!.commitCheckpoint();
  await assert.rejects(ranks[0]!.loadModel(1), (error: unknown) => {
    assert.ok(error instanceof CheckpointLoadError);
    assert.match(error.message, /has no model\.pt.*saveConsolidatedFsdpModel\(\)/);
    return true;
  });
  await ranks[0]!.close();
});

test("getBestStepNumber returns the best-scoring step, the later one on a tie, and undefined without scores", async () => {
  const dir = await tempDir();
  const manager = new FileCheckpointManager({ checkpointDir: dir });
  assert.equal(await manager.getBestStepNumber(), undefined, "no checkpoints");
  await saveStep(manager, 1);
  assert.equal(await manager.getBestStepNumber(), undefined, "no scores");
  await saveStep(manager, 2, { score: 0.5, lowerBetter: true });
  await saveStep(manager, 3, { score: -1, lowerBetter: true });
  await saveStep(manager, 4, { score: 2, lowerBetter: true });
  await saveStep(manager, 5);
  assert.equal(await manager.getBestStepNumber(), 3, "the lowest loss, -1, is the best");
  await saveStep(manager, 6, { score: -1, lowerBetter: true });
  assert.equal(await manager.getBestStepNumber(), 6, "a tie goes to the later step");
  await manager.deleteCheckpoint(6, { preserveModel: true });
  assert.equal(await manager.getBestStepNumber(), 6, "a model-only checkpoint can still be the best model");
  assertSameState(await manager.loadModel((await manager.getBestStepNumber())!), modelState(6));
  await manager.close();
});

// ------------------------------------------------------------------ PyTorch and fairseq2

/** Writes, with torch.save, a checkpoint directory in fairseq2's layout (no manifest.json). */
const FAIRSEQ2_WRITER = `
import collections, os, sys, torch
root = sys.argv[1]
def step(n, score_text):
    path = os.path.join(root, f"step_{n}")
    os.makedirs(path)
    model = collections.OrderedDict([
        ("proj.weight", torch.arange(6, dtype=torch.float32).reshape(2, 3) * n),
        ("proj.bias", torch.tensor([n, -n], dtype=torch.int64)),
        ("norm.scale", torch.tensor([1.5, 2.5], dtype=torch.bfloat16)),
    ])
    torch.save({"model": model, "model_key": "module"}, os.path.join(path, "model.pt"))
    torch.save({
        "optimizer": {"state": {0: {"step": torch.tensor(float(n)), "exp_avg": torch.full((2, 3), 0.25)}},
                      "param_groups": [{"lr": 0.001, "betas": (0.9, 0.98), "params": [0]}]},
        "step_nr": n,
        "data_reader": {"epoch": 1, "position": n * 10},
    }, os.path.join(path, "rank_0.pt"))
    if score_text is not None:
        with open(os.path.join(path, "score.txt"), "w") as f:
            f.write(score_text)
step(100, "-0.5\\n")   # a loss of 0.5 (lower is better), as fairseq2 writes it
step(200, "--2\\n")    # a loss of -2: fairseq2 puts "-" before "-2"
step(300, None)
os.makedirs(os.path.join(root, "step_400.tmp"))
`;

test("a checkpoint directory written by fairseq2 with torch.save lists and loads, restoring its custom model key", async (t) => {
  const python = requireTorch(t);
  if (python === null) return;
  const dir = await tempDir();
  runPython(python, FAIRSEQ2_WRITER, [dir]);
  const manager = new FileCheckpointManager({ checkpointDir: dir });

  assert.deepEqual(await manager.getStepNumbers(), [100, 200, 300]);
  assert.equal(await manager.getLastStepNumber(), 300);
  assert.deepEqual(await manager.getScores(), [
    { stepNr: 100, score: -0.5 },
    { stepNr: 200, score: 2 },
  ]);
  assert.equal(await manager.getBestStepNumber(), 200, "a loss of -2 is the best score");
  assert.equal(await manager.loadMetadata(100), null);

  const state = await manager.loadCheckpoint(200);
  assert.deepEqual(Object.keys(state).sort(), ["data_reader", "module", "optimizer", "step_nr"], "the model comes back under model_key, and model_key itself is gone");
  const module = state.module as StateDict;
  assert.ok(isOrderedDict(module), "the state dict stays an OrderedDict");
  assertSameState(module, fairseq2Model(200));
  assert.equal(state.step_nr, 200);
  assert.deepEqual(state.data_reader, { epoch: 1, position: 2000 });
  const optimizer = state.optimizer as StateDict;
  assert.ok(optimizer.state instanceof Map && optimizer.state.has(0));

  const { stepNr, state: last } = await manager.loadLastCheckpoint();
  assert.equal(stepNr, 300);
  assert.ok("module" in last);
  assertSameState(await manager.loadModel(100), fairseq2Model(100));
  assertSameState((await manager.loadCheckpoint(100)).module, fairseq2Model(100));

  // Retention works on it too, by the scores fairseq2 wrote.
  assert.deepEqual(await manager.keepBestNCheckpoints(1), { deleted: [100], stripped: [] });
  assert.deepEqual(await manager.getStepNumbers(), [200, 300]);
  await manager.close();
});

/** The model FAIRSEQ2_WRITER saves at step n. */
function fairseq2Model(n: number): StateDict {
  return {
    "proj.weight": Tensor.from(Float32Array.from([0, 1, 2, 3, 4, 5], (x) => x * n), { shape: [2, 3] }),
    "proj.bias": Tensor.from(new BigInt64Array([BigInt(n), BigInt(-n)])),
    "norm.scale": Tensor.from(Uint16Array.from([0x3fc0, 0x4020]), { dtype: "bfloat16" }),
  };
}

const TORCH_READER = `
import json, sys, torch
out = {}
for path in sys.argv[1:]:
    value = torch.load(path)
    def describe(v):
        if isinstance(v, torch.Tensor):
            return {"dtype": str(v.dtype), "shape": list(v.shape), "data": v.float().flatten().tolist() if v.dtype != torch.int64 else v.flatten().tolist()}
        if isinstance(v, dict):
            return {str(k): describe(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [describe(x) for x in v]
        return v
    out[path.rsplit("/", 2)[-1]] = describe(value)
print(json.dumps(out))
`;

test("torch.load opens the model.pt and rank files this manager writes and finds the same tensors", async (t) => {
  const python = requireTorch(t);
  if (python === null) return;
  const dir = await tempDir();
  const manager = new FileCheckpointManager({ checkpointDir: dir });
  await manager.beginCheckpoint(50);
  await manager.saveState(
    { module: modelState(50), step_nr: 50, optimizer: { state: new Map([[0, { exp_avg: arange(0.5, [3]) }]]) } },
    { modelKey: "module" },
  );
  await manager.commitCheckpoint();
  await manager.close();

  const described = JSON.parse(runPython(python, TORCH_READER, [join(dir, "step_50", "model.pt"), join(dir, "step_50", "rank_0.pt")])) as Record<string, unknown>;
  assert.deepEqual(described["model.pt"], {
    module: {
      "encoder.weight": { dtype: "torch.float32", shape: [2, 3], data: [50, 51, 52, 53, 54, 55] },
      "encoder.bias": { dtype: "torch.float64", shape: [2], data: [50.5, -50] },
      "head.weight": { dtype: "torch.int64", shape: [3], data: [50, -1, 2 ** 40] },
    },
    model_key: "module",
  });
  assert.deepEqual(described["rank_0.pt"], {
    step_nr: 50,
    optimizer: { state: { "0": { exp_avg: { dtype: "torch.float32", shape: [3], data: [0.5, 1.5, 2.5] } } } },
  });
});
