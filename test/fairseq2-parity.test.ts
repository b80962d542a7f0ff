import assert from "node:assert/strict";
import { readFile, readdir } from "node:fs/promises";
import { join } from "node:path";
import { test } from "node:test";

import { FileCheckpointManager, fakeGangs, isFloatSlot, markFloatSlot, type StateDict } from "../src/index.js";
import { listFiles, modelState, trainingState, useTempDirs } from "./helpers/checkpoint-helpers.js";
import { describe, type Description } from "./helpers/describe.js";
import { requireTorch, runPython } from "./helpers/torch-python.js";

const FAIRSEQ2_FIXTURES = join(import.meta.dirname, "fixtures", "fairseq2");
const MAKE_FIXTURES = join(import.meta.dirname, "fixtures", "make-fixtures.py");
const HELPERS = join(import.meta.dirname, "helpers");
const tempDir = useTempDirs("fairseq2-parity");

interface FixtureExpectation {
  dp_size: number;
  model_key: string;
  /** Per step, the description of the state each dp rank gave save_state (top-level keys sorted). */
  steps: Record<string, Description[]>;
}

/**
 * The state with its top-level keys sorted (whole-float marks kept): fairseq2 merges a state back
 * file by file, so the order of those keys is not part of what it restores; everything below is.
 */
function sortedTopLevel(state: StateDict): StateDict {
  const sorted: StateDict = {};
  for (const key of Object.keys(state).sort()) {
    sorted[key] = state[key]!;
    if (isFloatSlot(state, key)) markFloatSlot(sorted, key);
  }
  return sorted;
}

async function fixtureCases(): Promise<string[]> {
  return (await readdir(FAIRSEQ2_FIXTURES)).sort();
}

// ------------------------------------------------------------------ fairseq2's directories, read here

test("checkpoint directories fairseq2 0.4 writes load here with exactly the state each data-parallel rank saved", async (t) => {
  const cases = await fixtureCases();
  assert.deepEqual(cases, ["dp1-custom-key", "dp2-everything-replicated", "dp2-non-replicated-model"]);
  for (const name of cases) {
    await t.test(name, async () => {
      const dir = join(FAIRSEQ2_FIXTURES, name);
      const expected = JSON.parse(await readFile(join(dir, "expected.json"), "utf8")) as FixtureExpectation;
      for (let dpRank = 0; dpRank < expected.dp_size; dpRank++) {
        const manager = new FileCheckpointManager({ checkpointDir: dir, gangs: fakeGangs({ dpRank, dpSize: expected.dp_size }) });
        assert.deepEqual(await manager.getStepNumbers(), [10, 20], "every step is resumable");
        for (const [step, states] of Object.entries(expected.steps)) {
          const state = await manager.loadCheckpoint(Number(step));
          assert.equal("model_key" in state, false, "model_key describes the files, not the state");
          assert.deepEqual(describe(sortedTopLevel(state)), states[dpRank], `step ${step}, dp rank ${dpRank}`);
        }
        const { stepNr } = await manager.loadLastCheckpoint();
        assert.equal(stepNr, 20);
        await manager.close();
      }
    });
  }
});

test("the model of a fairseq2 checkpoint with a custom model key loads alone from model.pt", async () => {
  const dir = join(FAIRSEQ2_FIXTURES, "dp1-custom-key");
  const expected = JSON.parse(await readFile(join(dir, "expected.json"), "utf8")) as FixtureExpectation;
  const manager = new FileCheckpointManager({ checkpointDir: dir });
  const model = await manager.loadModel(10);
  const saved = expected.steps["10"]![0]!;
  assert.ok(saved.type === "dict");
  const savedModel = saved.items.find(([key]) => key.type === "str" && key.value === "_model")![1];
  assert.deepEqual(describe(model), savedModel);
  await manager.close();
});

test("the committed fairseq2 fixture directories are what make-fixtures.py writes today", async (t) => {
  const python = requireTorch(t);
  if (python === null) return;
  const out = await tempDir();
  runPython(python, `import runpy, sys; sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name="__main__")`, [MAKE_FIXTURES, out, "fairseq2"]);
  for (const name of await fixtureCases()) {
    assert.deepEqual(await listFiles(join(out, "fairseq2", name)), await listFiles(join(FAIRSEQ2_FIXTURES, name)), name);
    assert.equal(await readFile(join(out, "fairseq2", name, "expected.json"), "utf8"), await readFile(join(FAIRSEQ2_FIXTURES, name, "expected.json"), "utf8"), "rerun make-fixtures.py");
  }
});

// ------------------------------------------------------------------ our directories, read by fairseq2's rules

/**
 * Loads one dp rank's state of a checkpoint by fairseq2 0.4's rules, as the issue states them:
 * merge rank_<dp>.pt then replicated.pt (a missing file counts as empty); read model.pt only when
 * the "model_key" they name is not among their keys (or none is named); then drop "model_key".
 * Prints the description of each state (top-level keys sorted) as a JSON list.
 */
const FAIRSEQ2_LOADER = `
import json, os, sys
import torch
sys.dont_write_bytecode = True
sys.path.insert(0, sys.argv[1])
from describe import describe

def load_part(path):
    return torch.load(path) if os.path.exists(path) else {}

def fairseq2_load_checkpoint(step_dir, dp_rank):
    checkpoint = {}
    for name in (f"rank_{dp_rank}.pt", "replicated.pt"):
        checkpoint.update(load_part(os.path.join(step_dir, name)))
    if checkpoint.get("model_key") not in checkpoint:
        checkpoint.update(load_part(os.path.join(step_dir, "model.pt")))
    checkpoint.pop("model_key", None)
    return checkpoint

step_dir, dp_size = sys.argv[2], int(sys.argv[3])
states = [fairseq2_load_checkpoint(step_dir, rank) for rank in range(dp_size)]
print(json.dumps([describe(dict(sorted(state.items()))) for state in states]))
`;

/** A training state whose model is under `modelKey`, distinct per dp rank. */
function rankState(modelKey: string, seed: number): StateDict {
  const { model, ...rest } = trainingState(seed);
  return { [modelKey]: model!, ...rest, epoch: 3 };
}

interface OurCase {
  name: string;
  dpSize: number;
  replicatedKeys: string[];
  /** Every rank saves rank 0's state (what "*" promises). */
  sameOnEveryRank: boolean;
  /** Also write a consolidated model.pt (the model stays in the rank files). */
  consolidated: boolean;
}

const OUR_CASES: OurCase[] = [
  { name: "dp=1, custom model key", dpSize: 1, replicatedKeys: [], sameOnEveryRank: false, consolidated: false },
  { name: "dp=2, non-replicated model, custom model key", dpSize: 2, replicatedKeys: ["epoch"], sameOnEveryRank: false, consolidated: false },
  { name: "dp=2, non-replicated model and a consolidated model.pt", dpSize: 2, replicatedKeys: ["epoch"], sameOnEveryRank: false, consolidated: true },
  { name: "dp=2, everything replicated", dpSize: 2, replicatedKeys: ["*"], sameOnEveryRank: true, consolidated: false },
];

for (const ourCase of OUR_CASES) {
  test(`a directory ckpt writes (${ourCase.name}) loads by fairseq2 0.4's rules with exactly the state each rank saved`, async (t) => {
    const python = requireTorch(t);
    if (python === null) return;
    const dir = await tempDir();
    const modelKey = "_model";
    const states = Array.from({ length: ourCase.dpSize }, (_, dpRank) => rankState(modelKey, ourCase.sameOnEveryRank ? 5 : 5 + dpRank));
    const managers = states.map((_, dpRank) => new FileCheckpointManager({ checkpointDir: dir, gangs: fakeGangs({ dpRank, dpSize: ourCase.dpSize }) }));
    for (const manager of managers) await manager.beginCheckpoint(5);
    for (const [dpRank, manager] of managers.entries()) {
      await manager.saveState(states[dpRank]!, { modelKey, replicatedKeys: ourCase.replicatedKeys });
      if (ourCase.consolidated) await manager.saveConsolidatedFsdpModel(modelState(99));
    }
    for (const manager of managers.slice(1)) await manager.commitCheckpoint();
    await managers[0]!.commitCheckpoint();

    const loaded = JSON.parse(runPython(python, FAIRSEQ2_LOADER, [HELPERS, join(dir, "step_5"), String(ourCase.dpSize)])) as Description[];
    assert.equal(loaded.length, ourCase.dpSize);
    for (const [dpRank, state] of states.entries()) {
      assert.deepEqual(loaded[dpRank], describe(sortedTopLevel(state)), `dp rank ${dpRank} as fairseq2 loads it`);
      assert.deepEqual(describe(sortedTopLevel(await managers[dpRank]!.loadCheckpoint(5))), describe(sortedTopLevel(state)), `dp rank ${dpRank} as ckpt loads it`);
    }
    await managers[0]!.close();
  });
}

test("a state may not hold a model_key entry, nor use it as the model key: loading would remove it", async () => {
  const dir = await tempDir();
  const manager = new FileCheckpointManager({ checkpointDir: dir });
  await manager.beginCheckpoint(1);
  await assert.rejects(manager.saveState({ model: modelState(1), model_key: "model" }), /"model_key" is reserved/);
  await assert.rejects(manager.saveState({ model_key: modelState(1) }, { modelKey: "model_key" }), /"model_key" is reserved/);
  await manager.saveState({ model: modelState(1) });
  await manager.commitCheckpoint();
  await manager.close();
});

test("loading in place finds the live model under a custom model key, in loadCheckpoint and loadModel", async () => {
  const dir = await tempDir();
  const manager = new FileCheckpointManager({ checkpointDir: dir });
  await manager.beginCheckpoint(3);
  await manager.saveState(rankState("_model", 3), { modelKey: "_model" });
  await manager.commitCheckpoint();
  const live = modelState(0);
  const state = await manager.loadCheckpoint(3, { into: { _model: live }, modelKey: "_model" });
  const model = state._model as StateDict;
  assert.equal(model["encoder.weight"], live["encoder.weight"], "the live tensor was filled, not replaced");
  assert.deepEqual(describe(live), describe(modelState(3)));
  const other = modelState(1);
  assert.equal((await manager.loadModel(3, { into: other, modelKey: "_model" }))["encoder.weight"], other["encoder.weight"]);
  assert.deepEqual(describe(other), describe(modelState(3)));
  await manager.close();
});
