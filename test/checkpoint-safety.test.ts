import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { cp, mkdir, readFile, rename, writeFile } from "node:fs/promises";
import { hostname } from "node:os";
import { join } from "node:path";
import { test } from "node:test";

import {
  CheckpointError,
  CheckpointNotFoundError,
  CheckpointSaveError,
  FileCheckpointManager,
  InvalidArgumentError,
  LocalFileSystem,
  TensorDumpError,
  type FileWriter,
  type StateDict,
} from "../src/index.js";
import {
  assertManifestMatchesFiles,
  assertSameState,
  entries,
  inProcessGangs,
  managersFor,
  modelState,
  onAllRanks,
  saveStep,
  settleWithin,
  trainingState,
  useTempDirs,
} from "./helpers/checkpoint-helpers.js";

const tempDir = useTempDirs("safety");

/** Every rank must settle within this long: a rank still waiting is hanging. */
const HANG_MS = 5_000;

// ------------------------------------------------------------------ re-saving and failures

test("re-saving an existing step replaces it atomically: the old checkpoint until the commit, the new one after", async () => {
  const dir = await tempDir();
  const manager = new FileCheckpointManager({ checkpointDir: dir });
  const old = await saveStep(manager, 5, { score: 1, metadata: { version: "old" } });
  const replacement = trainingState(50);

  await manager.beginCheckpoint(5);
  await manager.saveState(replacement, { replicatedKeys: ["epoch"] });
  await manager.saveScore(2);
  assert.deepEqual(await entries(dir), [".ckpt.lock", "step_5", "step_5.tmp"], "beginCheckpoint(5) does not touch step_5");
  assert.deepEqual(await manager.getStepNumbers(), [5]);
  assertSameState(await manager.loadCheckpoint(5), old);
  assert.deepEqual(await manager.loadMetadata(5), { version: "old" });
  assert.deepEqual(await manager.getScores(), [{ stepNr: 5, score: 1 }]);

  await manager.commitCheckpoint();
  assert.deepEqual(await entries(dir), [".ckpt.lock", "step_5"], "nothing of the old one is left");
  assertSameState(await manager.loadCheckpoint(5), replacement);
  assert.equal(await manager.loadMetadata(5), null, "the replacement had no metadata");
  assert.deepEqual(await manager.getScores(), [{ stepNr: 5, score: 2 }]);
  await assertManifestMatchesFiles(dir, 5);

  // An aborted re-save leaves the committed one as it was.
  await manager.beginCheckpoint(5);
  await manager.saveState(trainingState(500));
  await manager.abortCheckpoint();
  assertSameState(await manager.loadCheckpoint(5), replacement);
  await manager.close();
});

/** A local disk on which creating a file whose name ends with `failOn` fails. */
class FailingFileSystem extends LocalFileSystem {
  failOn: string | undefined;

  override async createWriter(path: string): Promise<FileWriter> {
    if (this.failOn !== undefined && path.endsWith(this.failOn)) throw Object.assign(new Error("EIO: i/o error"), { code: "EIO" });
    return super.createWriter(path);
  }
}

test("an error in the middle of saveState leaves no .tmp, keeps the earlier checkpoints, and the next begin works", async () => {
  const dir = await tempDir();
  const fileSystem = new FailingFileSystem();
  const manager = new FileCheckpointManager({ checkpointDir: dir, fileSystem });
  const first = await saveStep(manager, 1);
  const failures: [StateDict, string | undefined, new (...args: never[]) => Error][] = [
    // rank_0.pt is written, then model.pt fails
    [{ model: modelState(2), step_nr: 2 }, "model.pt", TensorDumpError],
    // a value that cannot be saved: refused before the very first file
    [{ model: { weight: Symbol("no") as unknown as StateDict }, step_nr: 2 }, undefined, InvalidArgumentError],
  ];
  for (const [state, failOn, cause] of failures) {
    fileSystem.failOn = failOn;
    await manager.beginCheckpoint(2);
    await assert.rejects(manager.saveState(state), (error: unknown) => {
      assert.ok(error instanceof CheckpointSaveError);
      assert.equal(error.stepNr, 2);
      assert.match(error.message, /saveState failed for checkpoint 2, which was dropped/);
      assert.ok(error.cause instanceof cause, "the cause is chained");
      return true;
    });
    fileSystem.failOn = undefined;
    assert.deepEqual(await entries(dir), [".ckpt.lock", "step_1"], "the failed checkpoint is gone");
    await assert.rejects(manager.commitCheckpoint(), /call beginCheckpoint\(stepNr\) first/, "it was closed");
    assert.deepEqual(await manager.getStepNumbers(), [1]);
    assertSameState(await manager.loadCheckpoint(1), first);
  }
  const second = await saveStep(manager, 2);
  assertSameState(await manager.loadCheckpoint(2), second);
  assertSameState(await manager.loadCheckpoint(1), first);
  await manager.close();
});

// ------------------------------------------------------------------ the lock

test("a second manager on the same directory fails with a clear error while the first holds it, and succeeds after close()", async () => {
  const dir = await tempDir();
  const first = new FileCheckpointManager({ checkpointDir: dir });
  const second = new FileCheckpointManager({ checkpointDir: dir });
  await saveStep(first, 1);

  const inUse = (error: unknown): boolean => {
    assert.ok(error instanceof CheckpointError);
    assert.match(error.message, /is in use by another manager/);
    assert.ok(error.message.includes(`held by process ${process.pid}`), `the message names the holder: ${error.message}`);
    return true;
  };
  await assert.rejects(second.beginCheckpoint(2), inUse);
  await assert.rejects(second.deleteCheckpoint(1), inUse);
  await assert.rejects(second.keepLastNCheckpoints(1), inUse);
  await assert.rejects(second.keepBestNCheckpoints(1), inUse);
  await assert.rejects(second.saveModelMetadata({ family: "llama" }), inUse);
  await assert.rejects(second.commitCheckpoint(), /call beginCheckpoint/, "the failed begin left nothing open");
  // Reading does not need the lock.
  assert.deepEqual(await second.getStepNumbers(), [1]);
  assertSameState(await second.loadCheckpoint(1), trainingState(1));
  // The first manager was not disturbed.
  await saveStep(first, 2);
  assert.deepEqual(await first.getStepNumbers(), [1, 2]);

  await first.close();
  await saveStep(second, 3);
  assert.deepEqual(await second.getStepNumbers(), [1, 2, 3]);
  await assert.rejects(first.beginCheckpoint(4), inUse, "now the first one is the intruder");
  await second.close();
});

test("a lock left by a process that has exited does not block the next manager", async () => {
  const dir = await tempDir();
  const dead = spawnSync(process.execPath, ["-e", ""]);
  assert.equal(dead.status, 0);
  const deadPid = dead.pid!;
  assert.notEqual(deadPid, process.pid);
  await writeFile(join(dir, ".ckpt.lock"), JSON.stringify({ pid: deadPid, host: hostname(), token: "0123456789abcdef", since: "2020-01-01T00:00:00.000Z" }));

  const manager = new FileCheckpointManager({ checkpointDir: dir });
  await saveStep(manager, 1);
  const lock = JSON.parse(await readFile(join(dir, ".ckpt.lock"), "utf8")) as { pid: number };
  assert.equal(lock.pid, process.pid, "the manager took the lock over");
  assert.deepEqual(await entries(dir), [".ckpt.lock", "step_1"], "the dead lock is not left beside it");
  await manager.close();
  assert.deepEqual(await entries(dir), ["step_1"]);
});

test("a lock file cut short by a crash while it was written does not block the next manager", async () => {
  const dir = await tempDir();
  await writeFile(join(dir, ".ckpt.lock"), '{"pid": 12');
  const manager = new FileCheckpointManager({ checkpointDir: dir });
  await saveStep(manager, 1);
  assert.deepEqual(await manager.getStepNumbers(), [1]);
  await manager.close();
});

test("half-written files of a dead writer, in the directory and inside committed checkpoints, are removed when a manager takes it", async () => {
  const dir = await tempDir();
  const first = new FileCheckpointManager({ checkpointDir: dir });
  await saveStep(first, 1);
  await first.close();
  const dead = spawnSync(process.execPath, ["-e", ""]).pid!;
  const leftovers = [join(dir, `.model.yaml.${dead}.0badf00d.partial`), join(dir, "step_1", `.manifest.json.${dead}.deadbeef.partial`)];
  const live = join(dir, "step_1", `.manifest.json.${process.pid}.cafe0123.partial`); // a writer still running: kept
  for (const path of [...leftovers, live]) await writeFile(path, "half");
  await writeFile(join(dir, `.ckpt.lock.new-${"ab".repeat(8)}`), "{}"); // a lock side file of a dead taker

  const manager = new FileCheckpointManager({ checkpointDir: dir });
  await saveStep(manager, 2);
  assert.deepEqual(await entries(dir), [".ckpt.lock", "step_1", "step_2"]);
  assert.deepEqual((await entries(join(dir, "step_1"))).filter((name) => name.endsWith(".partial")), [`.manifest.json.${process.pid}.cafe0123.partial`]);
  assertSameState(await manager.loadCheckpoint(1), trainingState(1));
  await manager.close();
});

// ------------------------------------------------------------------ leftovers of a crash

/**
 * A directory as a crash leaves it: step_3.tmp (a save cut off), step_4.deleting (a delete cut
 * off), step_5.replaced without step_5 (a re-save cut off between its two renames), and
 * step_6.replaced beside step_6 (a re-save cut off before removing the old copy).
 */
async function crashedDirectory(): Promise<string> {
  const dir = await tempDir();
  const writer = new FileCheckpointManager({ checkpointDir: dir });
  for (const stepNr of [1, 4, 5, 6]) await saveStep(writer, stepNr);
  await writer.close();
  await mkdir(join(dir, "step_3.tmp"));
  await writeFile(join(dir, "step_3.tmp", "rank_0.pt"), "half a file");
  await rename(join(dir, "step_4"), join(dir, "step_4.deleting"));
  await rename(join(dir, "step_5"), join(dir, "step_5.replaced"));
  await cp(join(dir, "step_6"), join(dir, "step_6.replaced"), { recursive: true });
  return dir;
}

const TAKERS: Record<string, (manager: FileCheckpointManager) => Promise<unknown>> = {
  beginCheckpoint: async (manager) => {
    await manager.beginCheckpoint(7);
    await manager.abortCheckpoint();
  },
  deleteCheckpoint: (manager) => manager.deleteCheckpoint(99, { missingOk: true }),
  keepLastNCheckpoints: (manager) => manager.keepLastNCheckpoints(10),
  keepBestNCheckpoints: (manager) => manager.keepBestNCheckpoints(10),
  saveModelMetadata: (manager) => manager.saveModelMetadata({ family: "llama" }),
};

for (const [taker, take] of Object.entries(TAKERS)) {
  test(`leftovers of a crash are cleaned up and a moved-aside checkpoint restored when a manager takes the directory (${taker})`, async () => {
    const dir = await crashedDirectory();
    const manager = new FileCheckpointManager({ checkpointDir: dir });
    // Before anyone takes the directory, readers already see what is committed.
    assert.deepEqual(await manager.getStepNumbers(), [1, 5, 6]);
    assertSameState(await manager.loadCheckpoint(5), trainingState(5), "step 5 is read from step_5.replaced");

    await take(manager);
    const left = (await entries(dir)).filter((name) => name !== ".ckpt.lock" && name !== "model.yaml");
    assert.deepEqual(left, ["step_1", "step_5", "step_6"]);
    assert.deepEqual(await manager.getStepNumbers(), [1, 5, 6]);
    for (const stepNr of [1, 5, 6]) {
      await assertManifestMatchesFiles(dir, stepNr);
      assertSameState(await manager.loadCheckpoint(stepNr), trainingState(stepNr));
    }
    await saveStep(manager, 3);
    assert.deepEqual(await manager.getStepNumbers(), [1, 3, 5, 6]);
    await manager.close();
  });
}

// ------------------------------------------------------------------ errors across ranks

test("when saveState fails on one rank only, every rank's call rejects and all can begin again", async () => {
  const dir = await tempDir();
  const managers = managersFor(dir, inProcessGangs(4, 1));
  const stateOf = (rank: number): StateDict => ({ model: modelState(1), step_nr: 1, rank });
  await onAllRanks(managers, (m) => m.beginCheckpoint(1));
  const results = await settleWithin(
    HANG_MS,
    managers.map((m, rank) => m.saveState(rank === 2 ? { ...stateOf(rank), bad: (() => 0) as unknown as StateDict } : stateOf(rank), { replicatedKeys: ["model"] })),
  );
  for (const [rank, result] of results.entries()) {
    assert.equal(result.status, "rejected", `rank ${rank} rejects`);
    const error = (result as PromiseRejectedResult).reason as Error;
    assert.ok(error instanceof CheckpointSaveError, `rank ${rank}: ${String(error)}`);
    assert.equal(error.stepNr, 1);
    assert.match(error.message, rank === 2 ? /a function cannot be saved/ : /rank 2 failed: .*a function cannot be saved/);
  }
  assert.deepEqual(await entries(dir), [".ckpt.lock"], "the failed checkpoint is dropped");
  for (const manager of managers) await assert.rejects(manager.commitCheckpoint(), /call beginCheckpoint/, "every rank closed it");

  await onAllRanks(managers, (m) => m.beginCheckpoint(1));
  await onAllRanks(managers, (m, rank) => m.saveState(stateOf(rank), { replicatedKeys: ["model"] }));
  await onAllRanks(managers, (m) => m.commitCheckpoint());
  const loaded = await onAllRanks(managers, (m) => m.loadCheckpoint(1));
  for (const [rank, state] of loaded.entries()) assertSameState(state, stateOf(rank));
  await onAllRanks(managers, (m) => m.close());
});

test("when rank 0 cannot take the directory, every rank's beginCheckpoint rejects", async () => {
  const dir = await tempDir();
  const holder = new FileCheckpointManager({ checkpointDir: dir });
  await saveStep(holder, 1);
  const managers = managersFor(dir, inProcessGangs(2, 2));
  const results = await settleWithin(HANG_MS, managers.map((m) => m.beginCheckpoint(2)));
  for (const [rank, result] of results.entries()) {
    assert.equal(result.status, "rejected", `rank ${rank}`);
    assert.match(((result as PromiseRejectedResult).reason as Error).message, /in use by another manager/);
  }
  await holder.close();
  await onAllRanks(managers, (m) => m.beginCheckpoint(2));
  await onAllRanks(managers, (m) => m.saveState({ model: modelState(2) }, { replicatedKeys: ["model"] }));
  await onAllRanks(managers, (m) => m.commitCheckpoint());
  assert.deepEqual(await managers[3]!.getStepNumbers(), [1, 2]);
  assertSameState(await managers[3]!.loadModel(2), modelState(2));
  await onAllRanks(managers, (m) => m.close());
});

/** Runs `calls[rank]` on each rank at once and checks every rank rejects naming both operations. */
async function assertMismatchRejectsEverywhere(
  managers: FileCheckpointManager[],
  calls: ((manager: FileCheckpointManager) => Promise<unknown>)[],
  operations: [RegExp, RegExp],
): Promise<void> {
  const results = await settleWithin(HANG_MS, managers.map((m, rank) => calls[rank]!(m)));
  for (const [rank, result] of results.entries()) {
    assert.equal(result.status, "rejected", `rank ${rank} must not succeed`);
    const message = ((result as PromiseRejectedResult).reason as Error).message;
    assert.ok((result as PromiseRejectedResult).reason instanceof CheckpointError, `rank ${rank}: ${message}`);
    for (const operation of operations) assert.match(message, operation, `rank ${rank}: ${message}`);
  }
}

test("ranks calling different operations get an error naming both operations instead of hanging", async () => {
  const dir = await tempDir();
  const managers = managersFor(dir, inProcessGangs(4, 1));
  await onAllRanks(managers, (m) => m.beginCheckpoint(3));
  await onAllRanks(managers, (m) => m.saveState({ model: modelState(3) }, { replicatedKeys: ["model"] }));
  await assertMismatchRejectsEverywhere(
    managers,
    [(m) => m.saveMetadata({ a: 1 }), (m) => m.saveScore(1), (m) => m.saveScore(1), (m) => m.saveScore(1)],
    [/saveMetadata\(3\)/, /saveScore\(3\)/],
  );
  assert.deepEqual(await entries(dir), [".ckpt.lock"], "the checkpoint was dropped on every rank");

  // Same operation, different steps.
  await assertMismatchRejectsEverywhere(
    managers,
    [(m) => m.beginCheckpoint(4), (m) => m.beginCheckpoint(4), (m) => m.beginCheckpoint(5), (m) => m.beginCheckpoint(4)],
    [/beginCheckpoint\(4\)/, /beginCheckpoint\(5\)/],
  );

  // A commit on some ranks and an abort on the others.
  await onAllRanks(managers, (m) => m.beginCheckpoint(6));
  await onAllRanks(managers, (m) => m.saveState({ model: modelState(6) }, { replicatedKeys: ["model"] }));
  await assertMismatchRejectsEverywhere(
    managers,
    [(m) => m.commitCheckpoint(), (m) => m.abortCheckpoint(), (m) => m.commitCheckpoint(), (m) => m.commitCheckpoint()],
    [/commitCheckpoint/, /abortCheckpoint/],
  );
  assert.deepEqual(await managers[0]!.getStepNumbers(), [], "nothing was committed");

  // Retention on some ranks, a delete on the others.
  await assertMismatchRejectsEverywhere(
    managers,
    [(m) => m.keepLastNCheckpoints(1), (m) => m.keepLastNCheckpoints(1), (m) => m.keepBestNCheckpoints(1), (m) => m.keepLastNCheckpoints(1)],
    [/keepLastNCheckpoints/, /keepBestNCheckpoints/],
  );

  // After all that, the ranks are in step again.
  await onAllRanks(managers, (m) => m.beginCheckpoint(7));
  await onAllRanks(managers, (m) => m.saveState({ model: modelState(7) }, { replicatedKeys: ["model"] }));
  await onAllRanks(managers, (m) => m.commitCheckpoint());
  assert.deepEqual(await onAllRanks(managers, (m) => m.getStepNumbers()), [[7], [7], [7], [7]]);
  await onAllRanks(managers, (m) => m.close());
});

test("a rank that reaches deleteCheckpoint after rank 0 has deleted the checkpoint does not leave rank 0 waiting", async () => {
  for (const missingOk of [true, false]) {
    const dir = await tempDir();
    const managers = managersFor(dir, inProcessGangs(4, 1));
    for (const stepNr of [1, 2]) {
      await onAllRanks(managers, (m) => m.beginCheckpoint(stepNr));
      await onAllRanks(managers, (m) => m.saveState({ model: modelState(stepNr) }, { replicatedKeys: ["model"] }));
      await onAllRanks(managers, (m) => m.commitCheckpoint());
    }
    // Ranks are not in lockstep: rank 0 may be done deleting before the others start.
    const rank0 = managers[0]!.deleteCheckpoint(1, { missingOk });
    const deadline = Date.now() + HANG_MS;
    while ((await entries(dir)).includes("step_1") && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 1));
    assert.ok(!(await entries(dir)).includes("step_1"), "rank 0 deleted step 1");
    const results = await settleWithin(HANG_MS, [rank0, ...managers.slice(1).map((m) => m.deleteCheckpoint(1, { missingOk }))]);
    assert.deepEqual(results.map((r) => r.status), ["fulfilled", "fulfilled", "fulfilled", "fulfilled"], `missingOk ${missingOk}: every rank agrees the delete happened`);
    assert.deepEqual(await onAllRanks(managers, (m) => m.getStepNumbers()), [[2], [2], [2], [2]]);

    // A step that no rank has is CheckpointNotFoundError on every rank (unless missingOk), with the ranks still in step.
    const missing = await settleWithin(HANG_MS, managers.map((m) => m.deleteCheckpoint(9)));
    for (const result of missing) {
      assert.equal(result.status, "rejected");
      assert.ok((result as PromiseRejectedResult).reason instanceof CheckpointNotFoundError);
    }
    await onAllRanks(managers, (m) => m.deleteCheckpoint(9, { missingOk: true }));
    await onAllRanks(managers, (m) => m.deleteCheckpoint(2));
    assert.deepEqual(await managers[0]!.getStepNumbers(), []);
    await onAllRanks(managers, (m) => m.close());
  }
});
