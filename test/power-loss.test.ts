import assert from "node:assert/strict";
import { writeFile } from "node:fs/promises";
import { hostname } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { FileCheckpointManager } from "../src/index.js";
import { runPowerLoss } from "../torture/classes/power-loss.js";
import { useTempDirs } from "./helpers/checkpoint-helpers.js";

const tempDir = useTempDirs("power-loss");

test("every state a power cut can leave during saves, re-saves, deletes and retention recovers to what was committed", async () => {
  const result = await runPowerLoss({ seed: 1, budgetMs: 10 * 60_000, workDir: await tempDir(), quick: true });
  assert.deepEqual(result.failures, []);
  assert.equal(result.figures["direct opens traced"], 0); // this run writes through the page cache only
  // The trace must hold the workload's fsyncs and give many distinct states, all of them checked.
  assert.ok(Number(result.figures["fsyncs traced"]) >= 30, `fsyncs traced: ${result.figures["fsyncs traced"]}`);
  assert.ok(Number(result.figures["distinct crash states"]) >= 100, `states: ${result.figures["distinct crash states"]}`);
  assert.equal(result.figures["crash states checked"], result.figures["distinct crash states"]);
  assert.ok((result.cases["reordered cut"] ?? 0) > 0 && (result.cases["entries kept, unsynced data torn"] ?? 0) > 0, JSON.stringify(result.cases));
});

test("a disk that skips the manager's directory fsyncs loses committed checkpoints in some crash state", async () => {
  const result = await runPowerLoss({ seed: 1, budgetMs: 10 * 60_000, workDir: await tempDir(), quick: true }, { skipDirectorySync: true, stopAtFailure: true });
  assert.ok(
    result.failures.some((failure) => failure.kind === "committed checkpoint lost"),
    `expected a lost committed checkpoint, got: ${result.failures.slice(0, 3).map((f) => f.detail).join("; ")}`,
  );
});

test("a lock left by a power cut is taken over after the reboot, even when its pid now belongs to a live process", async () => {
  const checkpointDir = await tempDir();
  // What a cut leaves: a durable lock naming this host and a pid that runs again after the reboot
  // (here this very process), written during an earlier boot.
  const stale = { pid: process.pid, host: hostname(), token: "0123456789abcdef", since: "2026-01-01T00:00:00.000Z", bootId: "an-earlier-boot" };
  await writeFile(join(checkpointDir, ".ckpt.lock"), JSON.stringify(stale));
  const manager = new FileCheckpointManager({ checkpointDir });
  await manager.beginCheckpoint(1);
  await manager.saveState({ step: 1 });
  await manager.commitCheckpoint();
  assert.deepEqual(await manager.getStepNumbers(), [1]);
  await manager.close();
});

test("with large files written around the page cache (O_DIRECT blocks), every power-cut state still recovers to what was committed", async () => {
  const result = await runPowerLoss({ seed: 1, budgetMs: 10 * 60_000, workDir: await tempDir(), quick: true }, { directWrites: true });
  assert.deepEqual(result.failures, []);
  // The tensor files must really have gone through direct writes, or this run shows nothing new:
  // each of the quick workload's five saves writes a model.pt past 4 KiB.
  assert.ok(Number(result.figures["direct opens traced"]) >= 5, `direct opens: ${result.figures["direct opens traced"]}`);
  assert.ok(Number(result.figures["distinct crash states"]) >= 100, `states: ${result.figures["distinct crash states"]}`);
  assert.equal(result.figures["crash states checked"], result.figures["distinct crash states"]);
});
