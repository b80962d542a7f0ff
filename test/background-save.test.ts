import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { readdir, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { describe, it } from "node:test";
import {
  CheckpointSaveError,
  FileCheckpointManager,
  LocalFileSystem,
  Tensor,
  tuple,
  type FileWriter,
  type StateDict,
} from "../src/index.js";
import { useTempDirs } from "./helpers/checkpoint-helpers.js";

const tempDir = useTempDirs("background");

function trainingState(fill: number, elements = 1 << 16): StateDict {
  return {
    model: { "0.weight": Tensor.from(new Float32Array(elements).fill(fill), { shape: [elements / 16, 16] }) },
    optimizer: { param_groups: [{ lr: 0.01, betas: tuple(0.9, 0.999) }] },
    step_nr: fill,
  };
}

function firstValue(state: StateDict): number {
  return ((state.model as StateDict)["0.weight"] as Tensor).data[0] as number;
}

/** A local disk whose writers fail once `failAfter` bytes have been written through them. */
class FailingFileSystem extends LocalFileSystem {
  failing = false;

  override async createWriter(path: string): Promise<FileWriter> {
    const writer = await super.createWriter(path);
    const fs = this;
    return {
      async write(chunk: Uint8Array) {
        if (fs.failing) throw Object.assign(new Error("ENOSPC: no space left on device"), { code: "ENOSPC" });
        await writer.write(chunk);
      },
      close: () => writer.close(),
      abort: () => writer.abort(),
    };
  }
}

describe("background checkpoints", () => {
  it("save what the tensors held when saveState returned, whatever the caller changes afterwards", async () => {
    const dir = await tempDir();
    const manager = new FileCheckpointManager({ checkpointDir: dir });
    const state = trainingState(1);
    await manager.beginCheckpoint(1, { background: true });
    await manager.saveState(state);
    // The caller trains on: its tensors change at once, before anything is written.
    (((state.model as StateDict)["0.weight"] as Tensor).data as Float32Array).fill(99);
    ((state.optimizer as StateDict).param_groups as StateDict[])[0]!.lr = 0.5;
    await manager.commitCheckpoint();
    await manager.waitForPendingSave();

    const loaded = await manager.loadCheckpoint(1);
    assert.equal(firstValue(loaded), 1);
    assert.ok(((loaded.model as StateDict)["0.weight"] as Tensor).data.every((v) => v === 1));
    assert.equal(((loaded.optimizer as StateDict).param_groups as StateDict[])[0]!.lr, 0.01);
    await manager.close();
  });

  it("commitCheckpoint returns before the checkpoint is committed, and waitForPendingSave after", async () => {
    const dir = await tempDir();
    const manager = new FileCheckpointManager({ checkpointDir: dir });
    await manager.beginCheckpoint(5, { background: true });
    await manager.saveState(trainingState(5, 1 << 22));
    await manager.saveScore(0.25, { lowerBetter: true });
    await manager.commitCheckpoint();
    assert.equal(manager.hasPendingSave, true, "the write goes on in the background");
    await manager.waitForPendingSave();
    assert.equal(manager.hasPendingSave, false);
    assert.deepEqual(await manager.getStepNumbers(), [5]);
    assert.deepEqual(await manager.getScores(), [{ stepNr: 5, score: -0.25 }]);
    await manager.close();
  });

  it("never have two saves in flight: the next begin waits by default, or fails when asked to", async () => {
    const dir = await tempDir();
    const manager = new FileCheckpointManager({ checkpointDir: dir });
    await manager.beginCheckpoint(1, { background: true });
    await manager.saveState(trainingState(1, 1 << 22));
    await manager.commitCheckpoint();
    assert.equal(manager.hasPendingSave, true);
    await assert.rejects(manager.beginCheckpoint(2, { whenBusy: "fail" }), (error: unknown) => {
      assert.ok(error instanceof CheckpointSaveError);
      assert.match(error.message, /checkpoint 1 is still being written in the background: await waitForPendingSave\(\)/);
      return true;
    });
    await manager.beginCheckpoint(2, { background: true }); // waits for step 1
    assert.equal(manager.hasPendingSave, false);
    assert.deepEqual(await manager.getStepNumbers(), [1]);
    await manager.saveState(trainingState(2));
    await manager.commitCheckpoint();
    await manager.waitForPendingSave();
    assert.deepEqual(await manager.getStepNumbers(), [1, 2]);
    assert.equal(firstValue(await manager.loadCheckpoint(1)), 1);
    assert.equal(firstValue(await manager.loadCheckpoint(2)), 2);
    await manager.close();
  });

  it("raise a failed background write from waitForPendingSave, once, and leave the manager usable", async () => {
    const dir = await tempDir();
    const fileSystem = new FailingFileSystem();
    const manager = new FileCheckpointManager({ checkpointDir: dir, fileSystem });
    await manager.beginCheckpoint(1);
    await manager.saveState(trainingState(1));
    await manager.commitCheckpoint();

    fileSystem.failing = true;
    await manager.beginCheckpoint(2, { background: true });
    await manager.saveState(trainingState(2));
    await manager.commitCheckpoint(); // returns: the failure happens behind the scenes
    await assert.rejects(manager.waitForPendingSave(), (error: unknown) => {
      assert.ok(error instanceof CheckpointSaveError);
      assert.equal(error.stepNr, 2);
      assert.match(error.message, /ENOSPC/);
      return true;
    });
    await manager.waitForPendingSave(); // reported once

    fileSystem.failing = false;
    assert.deepEqual(await manager.getStepNumbers(), [1]);
    assert.ok(!(await readdir(dir)).some((name) => name.includes(".tmp")), "the failed checkpoint left nothing behind");
    await manager.beginCheckpoint(3);
    await manager.saveState(trainingState(3));
    await manager.commitCheckpoint();
    assert.deepEqual(await manager.getStepNumbers(), [1, 3]);
    await manager.close();
  });

  it("raise a failed background write from the next call when nobody waited for it", async () => {
    const dir = await tempDir();
    const fileSystem = new FailingFileSystem();
    const manager = new FileCheckpointManager({ checkpointDir: dir, fileSystem });
    await manager.beginCheckpoint(1, { background: true });
    fileSystem.failing = true;
    await manager.saveState(trainingState(1)); // fails when written
    await manager.commitCheckpoint();
    await assert.rejects(manager.keepLastNCheckpoints(1), (error: unknown) => {
      assert.ok(error instanceof CheckpointSaveError);
      assert.match(error.message, /ENOSPC/);
      return true;
    });
    fileSystem.failing = false;
    assert.deepEqual(await manager.keepLastNCheckpoints(1), { deleted: [], stripped: [] }, "the error was raised once");
    await manager.close();
  });

  it("abortCheckpoint drops a background checkpoint, and the next beginCheckpoint works", async () => {
    const dir = await tempDir();
    const manager = new FileCheckpointManager({ checkpointDir: dir });
    await manager.beginCheckpoint(1, { background: true });
    await manager.saveState(trainingState(1));
    await manager.abortCheckpoint();
    assert.deepEqual(await readdir(dir), [".ckpt.lock"], "nothing of it is left");
    await manager.beginCheckpoint(2, { background: true });
    await manager.saveState(trainingState(2));
    await manager.commitCheckpoint();
    await manager.waitForPendingSave();
    assert.deepEqual(await manager.getStepNumbers(), [2]);
    await manager.close();
  });

  it("reuse snapshot memory across checkpoints and keep every checkpoint's own values", async () => {
    const dir = await tempDir();
    const manager = new FileCheckpointManager({ checkpointDir: dir });
    const state = trainingState(0);
    for (let step = 1; step <= 4; step++) {
      (((state.model as StateDict)["0.weight"] as Tensor).data as Float32Array).fill(step);
      state.step_nr = step;
      await manager.beginCheckpoint(step, { background: true });
      await manager.saveState(state);
      await manager.saveMetadata({ note: `step ${step}`, weights: Tensor.from(new Float32Array(8).fill(-step)) });
      await manager.commitCheckpoint();
    }
    await manager.waitForPendingSave();
    for (let step = 1; step <= 4; step++) {
      const loaded = await manager.loadCheckpoint(step);
      assert.equal(firstValue(loaded), step);
      assert.equal(loaded.step_nr, step);
      const metadata = (await manager.loadMetadata(step)) as StateDict;
      assert.equal(metadata.note, `step ${step}`);
      assert.ok((metadata.weights as Tensor).data.every((v) => v === -step));
    }
    await manager.close();
  });

  it("killed with SIGKILL during a background save, leaves the previous checkpoint intact and loadable", async () => {
    const dir = await tempDir();
    const script = join(dir, "child.mts");
    const source = new URL("../src/index.ts", import.meta.url).pathname;
    await writeFile(
      script,
      `import { FileCheckpointManager, Tensor } from ${JSON.stringify(source)};
const manager = new FileCheckpointManager({ checkpointDir: ${JSON.stringify(join(dir, "ckpt"))} });
await manager.beginCheckpoint(1);
await manager.saveState({ model: { w: Tensor.from(new Float32Array(1 << 20).fill(1)) }, step_nr: 1 });
await manager.commitCheckpoint();
const big = { model: { w: Tensor.from(new Float32Array(1 << 26).fill(2)) }, step_nr: 2 };
await manager.beginCheckpoint(2, { background: true });
await manager.saveState(big);
await manager.commitCheckpoint();
console.log("saving in the background");
await manager.waitForPendingSave();
console.log("done");
`,
    );
    const output = await new Promise<string>((resolve, reject) => {
      const child = spawn(process.execPath, ["--import", "tsx", script], { stdio: ["ignore", "pipe", "inherit"] });
      let text = "";
      child.stdout.setEncoding("utf8");
      child.stdout.on("data", (chunk: string) => {
        text += chunk;
        if (text.includes("saving in the background")) child.kill("SIGKILL");
      });
      child.on("error", reject);
      child.on("exit", () => resolve(text));
    });
    assert.match(output, /saving in the background/);
    assert.doesNotMatch(output, /done/);
    // The kill landed while the save was still being written: its unfinished directory is there, and
    // only it (a save that finished before the kill would make this test prove nothing).
    const entries = await readdir(join(dir, "ckpt"));
    assert.ok(entries.includes("step_2.tmp") && !entries.includes("step_2"), `the kill came after the save finished: ${entries.join(", ")}`);
    const manager = new FileCheckpointManager({ checkpointDir: join(dir, "ckpt") });
    const steps = await manager.getStepNumbers();
    assert.deepEqual(steps, [1], "the previous checkpoint is still there, and only it");
    const loaded = await manager.loadCheckpoint(1);
    assert.ok(((loaded.model as StateDict).w as Tensor).data.every((v) => v === 1));
    await manager.beginCheckpoint(3); // the dead writer's lock and .tmp do not block
    await manager.saveState(trainingState(3));
    await manager.commitCheckpoint();
    assert.ok(!(await readdir(join(dir, "ckpt"))).some((name) => name.endsWith(".tmp")));
    await manager.close();
  });
});

describe("progress", () => {
  it("is reported per file while saving and loading, ending at the total", async () => {
    const dir = await tempDir();
    const events: { operation: string; stepNr: number; file: string; bytesDone: number; bytesTotal: number }[] = [];
    const manager = new FileCheckpointManager({ checkpointDir: dir, onProgress: (event) => events.push(event) });
    await manager.beginCheckpoint(7, { background: true });
    await manager.saveState(trainingState(7, 1 << 20));
    await manager.commitCheckpoint();
    await manager.waitForPendingSave();
    await manager.loadCheckpoint(7);
    await manager.close();
    for (const operation of ["save", "load"]) {
      const forRank = events.filter((e) => e.operation === operation && e.file === "rank_0.pt");
      assert.ok(forRank.length > 0, `${operation} reported rank_0.pt`);
      const last = forRank.at(-1)!;
      assert.equal(last.stepNr, 7);
      assert.equal(last.bytesDone, last.bytesTotal);
      assert.ok(last.bytesTotal > 0);
      for (let i = 1; i < forRank.length; i++) assert.ok(forRank[i]!.bytesDone >= forRank[i - 1]!.bytesDone, "monotonic");
    }
    const modelSave = events.filter((e) => e.operation === "save" && e.file === "model.pt").at(-1)!;
    assert.ok(modelSave.bytesTotal >= (1 << 20) * 4, "the model's 4 MiB are counted");
  });
});
