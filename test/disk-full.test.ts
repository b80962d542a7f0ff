import assert from "node:assert/strict";
import { readdir } from "node:fs/promises";
import { join } from "node:path";
import { test } from "node:test";
import { CheckpointSaveError, FileCheckpointManager, InvalidArgumentError, LocalFileSystem, Tensor, tuple } from "../src/index.js";
import { diskFull } from "../torture/classes/disk-full.js";
import { storageBytes } from "../src/checkpoint/free-space.js";
import { inspectState } from "../src/values/state-check.js";
import { modelState, useTempDirs } from "./helpers/checkpoint-helpers.js";

const tempDir = useTempDirs("disk-full");

test("saves onto a full small disk fail with ENOSPC named, keep earlier checkpoints and leave nothing behind", async () => {
  const result = await diskFull({ seed: 1, budgetMs: 10 * 60_000, workDir: await tempDir(), quick: true });
  assert.deepEqual(result.failures, []);
  assert.match(String(result.figures.writes), /^direct/); // seed 1: the disk fills during direct writes too
  assert.equal(Object.keys(result.cases).length, 5, JSON.stringify(result.cases));
  // Both ways of running out must have happened: refused up front, and ENOSPC from a write.
  assert.ok(Number(result.figures["refused before writing"]) > 0, JSON.stringify(result.figures));
  assert.ok(Number(result.figures["ENOSPC while writing"]) > 0, JSON.stringify(result.figures));
});

test("where no tmpfs can be mounted, an injected ENOSPC past a quota gives the same guarantees, and the report says which disk it was", async () => {
  process.env.CKPT_TORTURE_NO_MOUNT = "1";
  try {
    const result = await diskFull({ seed: 2, budgetMs: 10 * 60_000, workDir: await tempDir(), quick: true });
    assert.deepEqual(result.failures, []);
    assert.match(String(result.figures.disk), /injected ENOSPC/);
    assert.equal(result.figures.writes, "through the page cache");
    assert.ok(Number(result.figures["ENOSPC while writing"]) > 0, JSON.stringify(result.figures));
  } finally {
    delete process.env.CKPT_TORTURE_NO_MOUNT;
  }
});

class TinyDisk extends LocalFileSystem {
  override async freeSpace(): Promise<number> {
    return 1000;
  }
}

test("a save whose tensors exceed the free space is refused before anything is written, naming needed and free bytes", async () => {
  const checkpointDir = join(await tempDir(), "checkpoints");
  const manager = new FileCheckpointManager({ checkpointDir, fileSystem: new TinyDisk() });
  await manager.beginCheckpoint(1);
  await assert.rejects(manager.saveState({ model: modelState(1), big: Tensor.zeros([1000]) }), (error: unknown) => {
    assert.ok(error instanceof CheckpointSaveError);
    assert.match(error.message, /tensors alone need 4064 bytes and 1000 bytes are free \(ENOSPC\)/);
    assert.equal((error.cause as NodeJS.ErrnoException).code, "ENOSPC");
    return true;
  });
  assert.deepEqual((await readdir(checkpointDir)).filter((name) => name !== ".ckpt.lock"), []);
  // A state that fits is saved by the same manager.
  await manager.beginCheckpoint(1);
  await manager.saveState({ step: 1 });
  await manager.commitCheckpoint();
  assert.deepEqual(await manager.getStepNumbers(), [1]);
  await manager.close();
});

test("the free-space estimate counts each storage once, however many tensors view it, and again in the next estimate", () => {
  const weight = Tensor.from(new Float32Array(6), { shape: [2, 3] });
  const bias = Tensor.from(new Float64Array(4), { shape: [4] });
  const cycle: unknown[] = [bias];
  cycle.push(cycle);
  const state = { model: { weight, transposed: weight.transpose(0, 1), bias }, again: [weight.reshape([6])], cycle, shared: new Map([[1, bias]]) };
  assert.equal(storageBytes([state]), 6 * 4 + 4 * 8);
  assert.equal(storageBytes([state.model, undefined, state]), 6 * 4 + 4 * 8, "across the values of one estimate too");
  assert.equal(storageBytes([{ bias }]), 4 * 8, "a storage met in an earlier estimate counts again");
});

test("the check of a state before a save sums the same storage bytes in the same walk, and finds what cannot be saved", () => {
  const weight = Tensor.from(new Float32Array(6), { shape: [2, 3] });
  const bias = Tensor.from(new Float64Array(4), { shape: [4] });
  const cycle: unknown[] = [bias];
  cycle.push(cycle);
  const state = { model: { weight, transposed: weight.transpose(0, 1), bias }, again: [weight.reshape([6])], cycle, shared: new Map([[1, bias]]), pair: tuple(Tensor.zeros([3]), weight) };
  const expected = 6 * 4 + 4 * 8 + 3 * 4;
  assert.equal(storageBytes([state]), expected);
  // objectKeys lists only objects of 64 keys or more (see ObjectKeys): none here.
  // The totals under each top-level key: a storage counts under the first key that meets it.
  const totalsByKey = new Map([
    ["model", { count: 2, bytes: 6 * 4 + 4 * 8 }],
    ["again", { count: 0, bytes: 0 }],
    ["cycle", { count: 0, bytes: 0 }],
    ["shared", { count: 0, bytes: 0 }],
    ["pair", { count: 1, bytes: 3 * 4 }],
  ]);
  assert.deepEqual(inspectState(state), { storageBytes: expected, objectKeys: new Map(), totalsByKey });
  assert.deepEqual(inspectState({ bias }), { storageBytes: 4 * 8, objectKeys: new Map(), totalsByKey: new Map([["bias", { count: 1, bytes: 4 * 8 }]]) }, "a storage met in an earlier walk counts again");
  const refused = inspectState({ model: { weight }, lr: undefined });
  assert.ok(refused.unsaveable instanceof InvalidArgumentError);
  assert.match(refused.unsaveable.message, /^state\.lr: undefined cannot be saved/);
});
