import assert from "node:assert/strict";
import { execFileSync, spawn } from "node:child_process";
import { once } from "node:events";
import { chmod, mkdir, readdir, stat } from "node:fs/promises";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { test } from "node:test";
import { fileURLToPath } from "node:url";

import { CheckpointError, FileCheckpointManager } from "../src/index.js";
import { assertSameState, entries, saveStep, trainingState, useTempDirs } from "./helpers/checkpoint-helpers.js";
import { bundledOnce } from "../torture/lib/bundle-child.js";

const tempDir = useTempDirs("ownership");
const LOCK_HOLDER = fileURLToPath(new URL("./helpers/lock-holder.ts", import.meta.url));

const inUse = (error: unknown): boolean => {
  assert.ok(error instanceof CheckpointError, `a CheckpointError, got ${String(error)}`);
  assert.match(error.message, /is in use by another manager/);
  return true;
};

test("a manager refused the lock touches nothing: the holder's checkpoint in progress survives and commits", async () => {
  const dir = await tempDir();
  const holder = new FileCheckpointManager({ checkpointDir: dir });
  const intruder = new FileCheckpointManager({ checkpointDir: dir });
  await saveStep(holder, 1);
  await holder.beginCheckpoint(2);
  await holder.saveState(trainingState(2));
  const before = await readdir(join(dir, "step_2.tmp"));

  await assert.rejects(intruder.beginCheckpoint(2), inUse);
  await assert.rejects(intruder.beginCheckpoint(2, { background: true }), inUse);
  assert.deepEqual(await readdir(join(dir, "step_2.tmp")), before, "the holder's files are all still there");

  await holder.commitCheckpoint();
  assertSameState(await holder.loadCheckpoint(2), trainingState(2));
  await intruder.close();
  await holder.close();
});

test("a beginCheckpoint refused the lock opens nothing, in background mode too: once the holder closes, the next begin works", async () => {
  const dir = await tempDir();
  const holder = new FileCheckpointManager({ checkpointDir: dir });
  const intruder = new FileCheckpointManager({ checkpointDir: dir });
  await saveStep(holder, 1);
  await assert.rejects(intruder.beginCheckpoint(2, { background: true }), inUse);
  await assert.rejects(intruder.beginCheckpoint(3), inUse);
  await holder.close();
  await intruder.beginCheckpoint(4, { background: true });
  await intruder.saveState(trainingState(4));
  await intruder.commitCheckpoint();
  await intruder.waitForPendingSave();
  assert.deepEqual(await intruder.getStepNumbers(), [1, 4]);
  await intruder.close();
});

test("two processes racing for a directory: the one refused the lock leaves the holder's save untouched", async () => {
  const dir = await tempDir();
  const child = spawn(process.execPath, [await bundledOnce(LOCK_HOLDER), dir, "5"], { stdio: ["pipe", "pipe", "inherit"] });
  const lines = createInterface({ input: child.stdout! })[Symbol.asyncIterator]();
  try {
    assert.equal((await lines.next()).value, "open");
    const before = await readdir(join(dir, "step_5.tmp"));

    const intruder = new FileCheckpointManager({ checkpointDir: dir });
    for (const step of [5, 5, 6]) {
      await assert.rejects(intruder.beginCheckpoint(step), (error: unknown) => inUse(error) && (error as Error).message.includes(`held by process ${child.pid}`));
    }
    await assert.rejects(intruder.keepLastNCheckpoints(1), inUse);
    assert.deepEqual(await readdir(join(dir, "step_5.tmp")), before);

    child.stdin!.end("commit\n");
    assert.equal((await lines.next()).value, "committed");
    assert.deepEqual(await intruder.getStepNumbers(), [5]);
    assertSameState(await intruder.loadCheckpoint(5), trainingState(5));
    // The holder releases its lock only as it closes, after it printed `committed`.
    assert.equal((await lines.next()).value, "closed");
    await saveStep(intruder, 6); // the directory is free
    await intruder.close();
  } finally {
    child.kill("SIGKILL");
  }
  if (child.exitCode === null && child.signalCode === null) await once(child, "exit");
});

test("a relative checkpointDir is resolved once: chdir later changes nothing, close() releases the lock", async () => {
  const base = await tempDir();
  const elsewhere = join(base, "elsewhere");
  await mkdir(elsewhere);
  const cwd = process.cwd();
  process.chdir(base);
  let manager: FileCheckpointManager;
  try {
    manager = new FileCheckpointManager({ checkpointDir: "checkpoints" });
  } finally {
    process.chdir(cwd);
  }
  assert.equal(manager.checkpointDir, join(base, "checkpoints"));
  process.chdir(elsewhere);
  try {
    await saveStep(manager, 1);
    assert.deepEqual(await manager.getStepNumbers(), [1]);
    await manager.close();
  } finally {
    process.chdir(cwd);
  }
  assert.deepEqual(await entries(join(base, "checkpoints")), ["step_1"], "saved where it was constructed; the lock is gone");
  assert.deepEqual(await entries(elsewhere), []);
  const next = new FileCheckpointManager({ checkpointDir: join(base, "checkpoints") });
  await saveStep(next, 2);
  await next.close();
});

test("retention and deletion on a directory that does not exist create nothing", async () => {
  const base = await tempDir();
  const dir = join(base, "never-saved");
  const manager = new FileCheckpointManager({ checkpointDir: dir });
  assert.deepEqual(await manager.keepBestNCheckpoints(2), { deleted: [], stripped: [] });
  assert.deepEqual(await manager.keepLastNCheckpoints(2), { deleted: [], stripped: [] });
  await manager.deleteCheckpoint(3, { missingOk: true });
  await assert.rejects(manager.deleteCheckpoint(3), /no checkpoint 3/);
  await assert.rejects(stat(dir), { code: "ENOENT" });
  await manager.close();
});

/**
 * Makes `dir` impossible to write in: as root (whom permissions do not stop) by mounting a
 * read-only tmpfs on it, otherwise by taking away its write bits. Returns the undo.
 */
async function makeReadOnly(dir: string): Promise<() => Promise<void>> {
  if (process.getuid?.() === 0) {
    execFileSync("mount", ["-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", dir]);
    return async () => void execFileSync("umount", [dir]);
  }
  await chmod(dir, 0o555);
  return () => chmod(dir, 0o755);
}

test("a directory that cannot be written is reported as such, not as in use by another manager", async () => {
  const dir = await tempDir();
  const undo = await makeReadOnly(dir);
  try {
    const manager = new FileCheckpointManager({ checkpointDir: dir });
    const cannotWrite = (error: unknown): boolean => {
      assert.ok(error instanceof CheckpointError, String(error));
      assert.match(error.message, new RegExp(`checkpoint directory ${dir} cannot be written`));
      assert.doesNotMatch(error.message, /in use by another manager/);
      return true;
    };
    await assert.rejects(manager.beginCheckpoint(1), cannotWrite);
    await assert.rejects(manager.saveModelMetadata({ family: "llama" }), cannotWrite);
    await manager.close();
  } finally {
    await undo();
  }
});
