/**
 * A FIFO (or another file that is not a regular file) where a checkpoint has `score.txt` or
 * `manifest.json` used to hang listing forever: opening a FIFO for reading waits for a writer.
 * Every operation here runs as a child process with a timeout, so a hang fails the test instead of
 * hanging it.
 */
import assert from "node:assert/strict";
import { execFileSync, spawnSync } from "node:child_process";
import { closeSync, constants, existsSync, openSync } from "node:fs";
import { mkdir, rm } from "node:fs/promises";
import { join } from "node:path";
import { before, describe, test } from "node:test";

import { FileCheckpointManager, LocalFileSystem, TorchTensorLoader } from "../src/index.js";
import { saveStep, useTempDirs } from "./helpers/checkpoint-helpers.js";
import { bundledOnce } from "../torture/lib/bundle-child.js";

const tempDir = useTempDirs("fifo");
const ROOT = join(import.meta.dirname, "..");
const CLI = join(ROOT, "dist", "cli", "main.js");
const LISTING_CHILD = join(import.meta.dirname, "helpers", "listing-child.ts");
/** LISTING_CHILD bundled into plain JavaScript (torture/lib/bundle-child.ts), made before the tests that run it. */
let listingChild: string;
/** Far longer than any of these operations takes on a loaded machine; only a hang reaches it. */
const HANG_TIMEOUT_MS = 30_000;

interface Run {
  status: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

function run(args: string[]): Run {
  const result = spawnSync(process.execPath, args, {
    encoding: "utf8",
    timeout: HANG_TIMEOUT_MS,
    killSignal: "SIGKILL",
    env: { ...process.env, CKPT_DEBUG: "" },
  });
  assert.notEqual(result.signal, "SIGKILL", `${args.join(" ")} hung (killed after ${HANG_TIMEOUT_MS / 1000} s)`);
  return { status: result.status, signal: result.signal, stdout: result.stdout, stderr: result.stderr };
}

function ckpt(...args: string[]): Run {
  return run([CLI, ...args]);
}

function listing<T>(operation: string, dir: string): T {
  const result = run([listingChild, operation, dir]);
  assert.equal(result.status, 0, `${operation} failed:\n${result.stderr}`);
  return JSON.parse(result.stdout) as T;
}

function mkfifo(path: string): void {
  execFileSync("mkfifo", [path]);
}

/**
 * Opens `fifo` for writing and closes it again, twice a second, until stopped: a reader stuck
 * opening it (the bug) is let go and sees an empty file, so an in-process test fails instead of
 * hanging. Without a stuck reader the open fails (ENXIO) and nothing happens.
 */
function releaseStuckReaders(fifo: string): () => void {
  const timer = setInterval(() => {
    try {
      closeSync(openSync(fifo, constants.O_WRONLY | constants.O_NONBLOCK));
    } catch {
      // no reader waiting
    }
  }, 500);
  return () => clearInterval(timer);
}

/**
 * Steps 1-4 saved by the manager, with scores; step 2's score.txt and step 3's manifest.json
 * replaced by FIFOs.
 */
async function directoryWithFifos(): Promise<string> {
  const dir = await tempDir();
  const manager = new FileCheckpointManager({ checkpointDir: dir });
  for (const stepNr of [1, 2, 3, 4]) await saveStep(manager, stepNr, { score: stepNr });
  await manager.close();
  await rm(join(dir, "step_2", "score.txt"));
  mkfifo(join(dir, "step_2", "score.txt"));
  await rm(join(dir, "step_3", "manifest.json"));
  mkfifo(join(dir, "step_3", "manifest.json"));
  return dir;
}

const SCORE_FIFO = /step_2\/score\.txt is not a regular file \(a FIFO\)/;
const MANIFEST_FIFO = /step_3\/manifest\.json is not a regular file \(a FIFO\)/;

describe("a FIFO named score.txt or manifest.json in a committed step", () => {
  let dir: string;
  before(async () => {
    assert.ok(existsSync(CLI), "dist/cli/main.js is missing: run `npm run build` (npm test does) first");
    dir = await directoryWithFifos();
    listingChild = await bundledOnce(LISTING_CHILD);
  });

  test("getStepNumbers() finishes, leaves out the step whose manifest is a FIFO, keeps the one whose score is (unscored)", () => {
    assert.deepEqual(listing<number[]>("getStepNumbers", dir), [1, 2, 4]);
  });

  test("listCheckpoints() lists every step: a FIFO manifest makes it damaged, a FIFO score unscored with a warning, naming the file", () => {
    const listed = listing<{ stepNr: number; damaged: string | null; warning: string | null; score: number | null }[]>("listCheckpoints", dir);
    assert.deepEqual(listed.map((c) => c.stepNr), [1, 2, 3, 4]);
    assert.equal(listed[0]!.damaged, null);
    assert.equal(listed[1]!.damaged, null);
    assert.equal(listed[1]!.score, null);
    assert.match(listed[1]!.warning ?? "", SCORE_FIFO);
    assert.match(listed[2]!.damaged ?? "", MANIFEST_FIFO);
    assert.equal(listed[3]!.damaged, null);
  });

  test("listCheckpointDirectory() lists the step with a FIFO manifest as damaged, the one with a FIFO score with a warning", () => {
    const listed = listing<{ stepNr: number; status: string; problem: string | null; warning: string | null }[]>("listCheckpointDirectory", dir);
    assert.deepEqual(listed.map((c) => [c.stepNr, c.status]), [[1, "committed"], [2, "committed"], [3, "damaged"], [4, "committed"]]);
    assert.match(listed[1]!.warning ?? "", SCORE_FIFO);
    assert.match(listed[2]!.problem ?? "", MANIFEST_FIFO);
  });

  test("verifyCheckpoints() finds the steps with FIFOs damaged and the others sound", () => {
    const report = listing<{ sound: boolean; checkpoints: { stepNr: number; status: string; problems: { file: string; problem: string }[] }[] }>("verifyCheckpoints", dir);
    assert.equal(report.sound, false);
    assert.deepEqual(report.checkpoints.map((c) => [c.stepNr, c.status]), [[1, "sound"], [2, "damaged"], [3, "damaged"], [4, "sound"]]);
    assert.ok(report.checkpoints[1]!.problems.some((p) => p.file === "score.txt"), JSON.stringify(report.checkpoints[1]));
    assert.ok(report.checkpoints[2]!.problems.some((p) => p.file === "manifest.json" && /is not a regular file \(a FIFO\)/.test(p.problem)), JSON.stringify(report.checkpoints[2]));
  });

  test("ckpt ls finishes and shows the step with a FIFO manifest as damaged, the other with a warning", () => {
    const result = ckpt("ls", dir, "--json");
    assert.equal(result.status, 0, result.stderr);
    const { checkpoints, lastStepNr } = JSON.parse(result.stdout) as { checkpoints: { stepNr: number; status: string; problem: string | null; warning: string | null }[]; lastStepNr: number };
    assert.deepEqual(checkpoints.map((c) => [c.stepNr, c.status]), [[1, "committed"], [2, "committed"], [3, "damaged"], [4, "committed"]]);
    assert.match(checkpoints[1]!.warning ?? "", SCORE_FIFO);
    assert.match(checkpoints[2]!.problem ?? "", MANIFEST_FIFO);
    assert.equal(lastStepNr, 4);
  });

  test("ckpt verify finishes and exits 1, naming the steps with FIFOs", () => {
    const result = ckpt("verify", dir);
    assert.equal(result.status, 1, `${result.stdout}\n${result.stderr}`);
    assert.match(result.stdout, /step_2/);
    assert.match(result.stdout, /step_3/);
    assert.match(result.stdout, /is not a regular file \(a FIFO\)/);
  });

  test("ckpt prune --dry-run finishes and never plans to delete a damaged step", () => {
    const result = ckpt("prune", dir, "--keep-last", "1", "--dry-run", "--json");
    assert.equal(result.status, 0, result.stderr);
    const plan = JSON.parse(result.stdout) as { dryRun: boolean; deleted: number[]; kept: number[] };
    assert.equal(plan.dryRun, true);
    assert.deepEqual(plan.deleted, [1, 2]);
    assert.deepEqual(plan.kept, [4]);
  });
});

describe("LocalFileSystem reads only regular files", () => {
  const fileSystem = new LocalFileSystem();

  test("readFile, openReader and loading refuse a FIFO at once, naming it", async () => {
    const dir = await tempDir();
    const fifo = join(dir, "model.pt");
    mkfifo(fifo);
    const stop = releaseStuckReaders(fifo);
    try {
      await assert.rejects(fileSystem.readFile(fifo), { code: "EFTYPE", message: `${fifo} is not a regular file (a FIFO)` });
      await assert.rejects(fileSystem.openReader(fifo), { code: "EFTYPE", message: `${fifo} is not a regular file (a FIFO)` });
      await assert.rejects(new TorchTensorLoader().load(fifo), { message: /model\.pt: cannot open the file: .*is not a regular file \(a FIFO\)/ });
    } finally {
      stop();
    }
  });

  test("a directory and a character device are refused by what they are", async () => {
    const dir = await tempDir();
    await mkdir(join(dir, "sub"));
    await assert.rejects(fileSystem.readFile(join(dir, "sub")), { code: "EISDIR", message: /sub is not a regular file \(a directory\)/ });
    await assert.rejects(fileSystem.readFile("/dev/null"), { code: "EFTYPE", message: "/dev/null is not a regular file (a character device)" });
  });
});
