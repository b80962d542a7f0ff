import assert from "node:assert/strict";
import { test } from "node:test";
import { runPowerLoss } from "../torture/classes/power-loss.js";
import { useTempDirs } from "./helpers/checkpoint-helpers.js";

const tempDir = useTempDirs("power-loss");

test("every state a power cut can leave during saves, re-saves, deletes and retention recovers to what was committed", async () => {
  const result = await runPowerLoss({ seed: 1, budgetMs: 10 * 60_000, workDir: await tempDir(), quick: true });
  assert.deepEqual(result.failures, []);
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
