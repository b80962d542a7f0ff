import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { readFile } from "node:fs/promises";
import { dirname, join } from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";

import { useTempDirs } from "./helpers/checkpoint-helpers.js";

const tempDir = useTempDirs("dist-example");
const ROOT = dirname(dirname(fileURLToPath(import.meta.url)));
const CLI = join(ROOT, "dist", "cli", "main.js");
const TRAIN = join(ROOT, "examples", "train-distributed.ts");
const STEPS = 60;
const EVERY = 10;
/** A run still going after this long hangs. */
const RUN_LIMIT_MS = 120_000;

/**
 * Runs the distributed example through `ckpt launch --nproc 2`; with `killAt`, SIGKILLs rank 1 as
 * soon as rank 0 reports finishing that step. Resolves with the launcher's exit code and output.
 */
function runExample(dir: string, killAt?: number): Promise<{ code: number | null; output: string }> {
  return new Promise((resolve, reject) => {
    const args = [CLI, "launch", "--nproc", "2", "--", process.execPath, "--import", "tsx", TRAIN, "--dir", dir, "--steps", String(STEPS), "--checkpoint-every", String(EVERY), "--log-every", "1"];
    const child = spawn(process.execPath, args, { cwd: ROOT, stdio: ["ignore", "pipe", "pipe"] });
    let output = "";
    let rank1Pid: number | undefined;
    let killed = false;
    const timer = setTimeout(() => {
      child.kill("SIGKILL");
      reject(new Error(`the example hung:\n${output}`));
    }, RUN_LIMIT_MS);
    const watch = (chunk: string): void => {
      output += chunk;
      rank1Pid ??= Number(/^\[rank 1\] pid (\d+)$/m.exec(output)?.[1] ?? Number.NaN) || undefined;
      if (killAt === undefined || killed || rank1Pid === undefined) return;
      const steps = [...output.matchAll(/^\[rank 0\] step (\d+)\//gm)].map((m) => Number(m[1]));
      if (steps.length > 0 && Math.max(...steps) >= killAt) {
        killed = true;
        try {
          process.kill(rank1Pid, "SIGKILL");
        } catch (error) {
          child.kill("SIGKILL");
          reject(new Error(`rank 1 (pid ${rank1Pid}) was gone before the kill at step ${killAt}: ${(error as Error).message}\n${output}`));
        }
      }
    };
    child.stdout.setEncoding("utf8").on("data", watch);
    child.stderr.setEncoding("utf8").on("data", watch);
    child.on("error", reject);
    child.on("close", (code) => {
      clearTimeout(timer);
      if (killAt !== undefined && !killed) reject(new Error(`the run ended before step ${killAt}:\n${output}`));
      else resolve({ code, output });
    });
  });
}

const FILES = ["model.pt", "replicated.pt", "rank_0.pt", "rank_1.pt"];

test("the distributed example killed (one rank SIGKILLed) and resumed ends with the same files, bit for bit, as an uninterrupted run", async () => {
  const [straight, interrupted] = [await tempDir(), await tempDir()];
  const reference = await runExample(straight);
  assert.equal(reference.code, 0, reference.output);

  // Kill points drawn at random, away from the checkpoint steps, so resuming has work to redo, and
  // at least 14 steps before the end: rank 1 is still training when rank 0's report of the step
  // reaches this process through the launcher.
  const draws = [1 + Math.floor(Math.random() * 25), 31 + Math.floor(Math.random() * 15)].map((step) => (step % EVERY === 0 ? step + 1 : step));
  for (const killAt of draws) {
    const run = await runExample(interrupted, killAt);
    assert.notEqual(run.code, 0, `the launch fails when a rank is killed (at step ${killAt})`);
    assert.match(run.output, /rank 1\b.*SIGKILL/, run.output);
  }
  const finish = await runExample(interrupted);
  assert.equal(finish.code, 0, finish.output);
  assert.match(finish.output, /resuming from step \d+/);

  for (const file of FILES) {
    const [a, b] = await Promise.all([readFile(join(straight, `step_${STEPS}`, file)), readFile(join(interrupted, `step_${STEPS}`, file))]);
    assert.ok(a.equals(b), `${file} differs from the uninterrupted run's (killed at steps ${draws.join(", ")})`);
  }
});
