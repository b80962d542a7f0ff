import assert from "node:assert/strict";
import { test } from "node:test";

import { CheckpointSaveError, FileCheckpointManager, Tensor, listCheckpointDirectory, verifyCheckpoints, type FileSystem } from "../../src/index.js";
import { joinPath } from "../../src/fs/paths.js";
import { assertSameState, trainingState } from "./checkpoint-helpers.js";
import { resealManifest } from "./manifest-edits.js";
import { filesUnder, type StorageWithoutRename } from "./storages-without-rename.js";

const SAVE_DIR = /^save-[0-9a-z]+-[0-9a-f]{8}$/;

async function save(manager: FileCheckpointManager, stepNr: number, seed = stepNr, score?: number): Promise<void> {
  await manager.beginCheckpoint(stepNr);
  await manager.saveState(trainingState(seed), { replicatedKeys: ["epoch"] });
  if (score !== undefined) await manager.saveScore(score);
  await manager.commitCheckpoint();
}

async function readManifest(fileSystem: FileSystem, dir: string, stepNr: number): Promise<Record<string, unknown>> {
  return JSON.parse(new TextDecoder().decode(await fileSystem.readFile(joinPath(dir, `step_${stepNr}`, "manifest.json")))) as Record<string, unknown>;
}

/** Writes a file, making its directory first where the storage has directories. */
async function put(fileSystem: FileSystem, path: string, bytes: Uint8Array): Promise<void> {
  await fileSystem.makeDirectory(joinPath(path, ".."));
  await fileSystem.writeFile(path, bytes);
}

/**
 * The commit protocol of storage without rename (manifest last, one save directory per save),
 * checked through the manager on any such storage: a local disk with rename refused, and S3.
 */
export function manifestCommitCases(storage: StorageWithoutRename): void {
  const { fileSystem } = storage;
  const manager = (dir: string): FileCheckpointManager => new FileCheckpointManager({ checkpointDir: dir, fileSystem });

  test(`${storage.name}: files go to step_N/save-<id>/, the manifest naming them is written last, and it all loads back`, async () => {
    const dir = await storage.newDir();
    const m = manager(dir);
    await m.beginCheckpoint(100);
    await m.saveState(trainingState(100), { replicatedKeys: ["epoch"] });
    await m.saveScore(1.5);
    const before = await filesUnder(fileSystem, dir);
    assert.ok(before.every((name) => !name.endsWith("manifest.json")), `no manifest before the commit: ${before.join(", ")}`);
    assert.deepEqual(await m.getStepNumbers(), [], "a save without its manifest is no checkpoint");
    assert.equal((await listCheckpointDirectory(dir, { fileSystem })).checkpoints[0]?.status, "unfinished");
    await m.commitCheckpoint();

    const manifest = await readManifest(fileSystem, dir, 100);
    assert.match(String(manifest.filesDir), SAVE_DIR);
    const files = await filesUnder(fileSystem, joinPath(dir, "step_100"));
    const saveDir = String(manifest.filesDir);
    assert.deepEqual(files, ["manifest.json", ...["model.pt", "rank_0.pt", "replicated.pt", "score.txt"].map((f) => `${saveDir}/${f}`)]);
    assert.deepEqual(await m.getStepNumbers(), [100]);
    assertSameState((await m.loadCheckpoint(100)), trainingState(100));
    assert.deepEqual(Object.keys(await m.loadModel(100)), Object.keys(trainingState(100).model as object));
    const listing = await listCheckpointDirectory(dir, { fileSystem });
    assert.equal(listing.checkpoints[0]?.status, "committed");
    assert.equal(listing.checkpoints[0]?.score, 1.5);
    assert.deepEqual(listing.checkpoints[0]?.files, ["manifest.json", "model.pt", "rank_0.pt", "replicated.pt", "score.txt"]);
    assert.equal((await verifyCheckpoints(dir, { fileSystem })).sound, true);
    await m.close();
  });

  test(`${storage.name}: a re-saved step shows the old checkpoint until the new manifest, then only the new one`, async () => {
    const dir = await storage.newDir();
    const m = manager(dir);
    await save(m, 5, 1);
    const oldDir = String((await readManifest(fileSystem, dir, 5)).filesDir);
    await m.beginCheckpoint(5);
    await m.saveState(trainingState(2), { replicatedKeys: ["epoch"] });
    // Everything of the new save is written, nothing committed: a reader still gets the old values.
    const reader = manager(dir);
    assertSameState(await reader.loadCheckpoint(5), trainingState(1));
    await m.commitCheckpoint();
    const newDir = String((await readManifest(fileSystem, dir, 5)).filesDir);
    assert.notEqual(newDir, oldDir);
    assertSameState(await reader.loadCheckpoint(5), trainingState(2));
    const entries = (await fileSystem.listDirectory(joinPath(dir, "step_5"))).map((e) => e.name).sort();
    assert.deepEqual(entries, ["manifest.json", newDir], "the replaced save's files are removed after the commit");
    await m.close();
  });

  test(`${storage.name}: an aborted or failed save leaves nothing listed and nothing behind; the last checkpoint still loads`, async () => {
    const dir = await storage.newDir();
    const m = manager(dir);
    await save(m, 1);
    await m.beginCheckpoint(2);
    await m.saveState(trainingState(2));
    await m.abortCheckpoint();
    await m.beginCheckpoint(2);
    await assert.rejects(m.saveState({ model: { w: Tensor.from(new Float32Array([1])) }, bad: () => 1 } as never), CheckpointSaveError);
    assert.deepEqual(await m.getStepNumbers(), [1]);
    assert.deepEqual((await fileSystem.listDirectory(dir)).map((e) => e.name).filter((n) => n.startsWith("step_")), ["step_1"]);
    assertSameState(await m.loadCheckpoint(1), trainingState(1));
    await m.close();
  });

  test(`${storage.name}: a crash's leftovers (a save without manifest, a replaced save never removed) are not listed and the next owner removes them`, async () => {
    const dir = await storage.newDir();
    const m = manager(dir);
    await save(m, 1);
    await save(m, 2);
    await m.close();
    const committed = String((await readManifest(fileSystem, dir, 1)).filesDir);
    // What a writer killed before its commit leaves: files under save directories no manifest names.
    const orphan = "save-zz-0000abcd";
    await put(fileSystem, joinPath(dir, "step_1", orphan, "rank_0.pt"), new Uint8Array([1, 2, 3]));
    await put(fileSystem, joinPath(dir, "step_3", orphan, "rank_0.pt"), new Uint8Array([4, 5, 6]));
    await put(fileSystem, joinPath(dir, "step_3", "notes.txt"), new TextEncoder().encode("a person's file"));

    const next = manager(dir);
    assert.deepEqual(await next.getStepNumbers(), [1, 2]);
    const listing = await listCheckpointDirectory(dir, { fileSystem });
    assert.deepEqual(listing.checkpoints.map((c) => `${c.name}:${c.status}`), ["step_1:committed", "step_2:committed", "step_3:unfinished"]);
    await save(next, 4); // taking the directory recovers it
    assert.deepEqual((await fileSystem.listDirectory(joinPath(dir, "step_1"))).map((e) => e.name).sort(), ["manifest.json", committed]);
    assert.deepEqual(await filesUnder(fileSystem, joinPath(dir, "step_3")), ["notes.txt"], "only save directories are leftovers; other files stay");
    assertSameState(await next.loadCheckpoint(1), trainingState(1));
    await next.close();
  });

  test(`${storage.name}: deleting withdraws the manifest first; retention and preserveModel work`, async () => {
    const dir = await storage.newDir();
    const m = manager(dir);
    for (const step of [1, 2, 3, 4]) await save(m, step, step, step);
    await m.deleteCheckpoint(1);
    assert.deepEqual((await fileSystem.listDirectory(dir)).map((e) => e.name).filter((n) => n.startsWith("step_")), ["step_2", "step_3", "step_4"]);
    await m.keepLastNCheckpoints(1, { preserveModel: true });
    assert.deepEqual(await m.getStepNumbers({ includeModelOnly: true }), [2, 3, 4]);
    const listing = await listCheckpointDirectory(dir, { fileSystem });
    assert.deepEqual(listing.checkpoints.map((c) => [c.stepNr, c.modelOnly]), [[2, true], [3, true], [4, false]]);
    const manifest = await readManifest(fileSystem, dir, 2);
    assert.equal(manifest.modelOnly, true);
    assert.deepEqual(Object.keys(manifest.files as object).sort(), ["model.pt", "score.txt"]);
    assert.deepEqual(await filesUnder(fileSystem, joinPath(dir, "step_2", String(manifest.filesDir))), ["model.pt", "score.txt"]);
    assert.deepEqual(Object.keys(await m.loadModel(2)), Object.keys(trainingState(2).model as object));
    assert.equal((await verifyCheckpoints(dir, { fileSystem })).sound, true);
    await m.keepBestNCheckpoints(1);
    assert.deepEqual(await m.getStepNumbers(), [4]);
    await m.close();
  });

  test(`${storage.name}: a flipped byte in a saved file is caught at load and by verify, naming the file`, async () => {
    const dir = await storage.newDir();
    const m = manager(dir);
    await save(m, 7);
    const saveDir = String((await readManifest(fileSystem, dir, 7)).filesDir);
    const path = joinPath(dir, "step_7", saveDir, "rank_0.pt");
    const bytes = await fileSystem.readFile(path);
    const flipped = Uint8Array.from(bytes);
    flipped[flipped.length >> 1]! ^= 0x40;
    await fileSystem.writeFile(path, flipped);
    await assert.rejects(m.loadCheckpoint(7), /rank_0\.pt/);
    const report = await verifyCheckpoints(dir, { fileSystem });
    assert.equal(report.sound, false);
    assert.deepEqual(report.checkpoints[0]?.problems.map((p) => p.file), ["rank_0.pt"]);
    await m.close();
  });

  test(`${storage.name}: a checkpoint in the disk layout (manifest next to its files) lists, loads, and is replaced cleanly`, async () => {
    const dir = await storage.newDir();
    const m = manager(dir);
    await save(m, 3);
    // Re-create step_3 as a copy from a local disk would be: the files beside the manifest.
    const manifest = await readManifest(fileSystem, dir, 3);
    const saveDir = String(manifest.filesDir);
    for (const name of Object.keys(manifest.files as object)) {
      await fileSystem.writeFile(joinPath(dir, "step_3", name), await fileSystem.readFile(joinPath(dir, "step_3", saveDir, name)));
    }
    delete manifest.filesDir;
    await fileSystem.writeFile(joinPath(dir, "step_3", "manifest.json"), resealManifest(manifest));
    await fileSystem.remove(joinPath(dir, "step_3", saveDir));
    assertSameState(await m.loadCheckpoint(3), trainingState(3));
    assert.equal((await verifyCheckpoints(dir, { fileSystem })).sound, true);
    await save(m, 3, 9);
    assertSameState(await m.loadCheckpoint(3), trainingState(9));
    const entries = (await fileSystem.listDirectory(joinPath(dir, "step_3"))).map((e) => e.name).sort();
    assert.equal(entries.length, 2, `the loose files of the replaced checkpoint are gone: ${entries.join(", ")}`);
    await m.close();
  });
}
