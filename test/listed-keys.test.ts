// A save checks its state, then pickles it: both go through every key of a large dict, and V8 sorts
// a large (dictionary-mode) object's keys on every Object.keys call, ~4 ms for 20,000 keys. The check
// lists them once and the pickle reuses that list (src/values/state-check.ts, ObjectKeys).
import assert from "node:assert/strict";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, test } from "node:test";
import { FileCheckpointManager } from "../src/checkpoint/file-checkpoint-manager.js";
import { pickleState } from "../src/formats/torch/torch-writer.js";
import { TorchTensorLoader } from "../src/io/torch-tensor-io.js";
import { Tensor } from "../src/tensor/tensor.js";
import type { StateDict } from "../src/values/py-values.js";
import { checkStateForArchive } from "../src/values/state-check.js";

const tempDirs: string[] = [];
after(async () => {
  for (const dir of tempDirs) await rm(dir, { recursive: true, force: true });
});

function largeModel(): Record<string, Tensor> {
  const model: Record<string, Tensor> = {};
  for (let i = 0; i < 500; i++) model[`layers.${i}.weight`] = Tensor.from(new Float32Array([i, -i]), { shape: [2] });
  return model;
}

/** How many times `run` calls Object.keys on `target`. */
async function keyListings(target: object, run: () => unknown): Promise<number> {
  const objectKeys = Object.keys;
  let count = 0;
  Object.keys = (value: object) => {
    if (value === target) count++;
    return objectKeys(value);
  };
  try {
    await run();
  } finally {
    Object.keys = objectKeys;
  }
  return count;
}

test("the check lists a large object's keys, a small object's not", () => {
  const model = largeModel();
  const small = { lr: 0.1, betas: [0.9, 0.999] };
  const listed = checkStateForArchive({ model, small }, "state", (message) => new Error(message)).objectKeys;
  assert.deepEqual(listed.get(model), Object.keys(model));
  assert.equal(listed.has(small), false);
});

test("a dump lists a large dict's keys once, for the check and the pickle", async () => {
  const model = largeModel();
  const state: StateDict = { model, step_nr: 7 };
  let pickled: Uint8Array | undefined;
  assert.equal(await keyListings(model, () => (pickled = pickleState(state).pickle)), 1);
  // The same bytes as a pickle that lists the keys itself (a check that listed nothing).
  const unlisted = pickleState(state, { stateChecked: true, checkedKeys: new Map() }).pickle;
  assert.equal(Buffer.from(pickled!).toString("hex"), Buffer.from(unlisted).toString("hex"));
});

test("the pickle writes a dict in the order the check listed its keys", () => {
  const model = largeModel();
  const reversed = Object.keys(model).reverse();
  const { pickle } = pickleState({ model }, { stateChecked: true, checkedKeys: new Map([[model, reversed]]) });
  const text = Buffer.from(pickle).toString("latin1");
  assert.ok(text.indexOf("layers.499.weight") < text.indexOf("layers.0.weight"), "the listed order is the written order");
});

test("a manager's save lists the model's keys once, and the checkpoint loads whole", async () => {
  const dir = await mkdtemp(join(tmpdir(), "ckpt-listed-keys-"));
  tempDirs.push(dir);
  const model = largeModel();
  const manager = new FileCheckpointManager({ checkpointDir: dir });
  const listings = await keyListings(model, async () => {
    await manager.beginCheckpoint(1);
    await manager.saveState({ model, step_nr: 1 });
    await manager.commitCheckpoint();
  });
  await manager.close();
  assert.equal(listings, 1);
  const loaded = (await new TorchTensorLoader().load(join(dir, "step_1", "model.pt"))) as { model: Record<string, Tensor> };
  assert.deepEqual(Object.keys(loaded.model), Object.keys(model));
  assert.deepEqual([...loaded.model["layers.499.weight"]!.data], [499, -499]);
});
