/**
 * Class 6, "Concurrency".
 *
 * Two managers, two processes: a manager in a child process (test/helpers/lock-holder.ts) holds
 * the directory mid-save; a second manager here must be refused every mutating call with a
 * CheckpointError saying the directory is in use (naming the holder's pid) and change nothing on
 * disk; once the holder is SIGKILLed, the second must save, commit and load, and the holder's
 * unfinished step must not be listed.
 *
 * Readers while a writer saves and prunes: a writer process (children/concurrent-writer.ts) saves
 * and prunes; meanwhile a reader process loads every listed checkpoint in a loop
 * (children/concurrent-reader.ts, which defines an ok load, a race and a failure), and `ckpt ls
 * --json` and `ckpt verify --json` run again and again in processes of their own. A failure is:
 * - ls: a non-zero exit, output that is not its JSON, or a checkpoint shown as damaged or with a
 *   step the writer never saved;
 * - verify: a problem reported for a step listed, in the same form (whole or model only), just
 *   before and just after that verify: a checkpoint that stayed as it was must verify sound (one
 *   saved, pruned or stripped meanwhile may show missing files; the writer never re-saves a step,
 *   and a step only goes from whole to model only to absent, so same form means untouched);
 * - the loading reader: any load it reports as a failure.
 * At the end the directory must verify sound and every listed checkpoint load.
 */
import { spawn } from "node:child_process";
import { once } from "node:events";
import { readdir, writeFile } from "node:fs/promises";
import { dirname, join } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import { CheckpointError, FileCheckpointManager, listCheckpointDirectory, verifyCheckpoints } from "../../src/index.js";
import { loadContent, saveCheckpoint } from "../../test/helpers/crash-scenarios.js";
import { bundledOnce } from "../lib/bundle-child.js";
import { diskSnapshot, snapshotDifference } from "../lib/disk-snapshot.js";
import { countCase, Random } from "../lib/random.js";
import type { ClassFailure, ClassOptions, ClassResult } from "../types.js";

const ROOT = dirname(dirname(dirname(fileURLToPath(import.meta.url))));
const LOCK_HOLDER = join(ROOT, "test", "helpers", "lock-holder.ts");
const WRITER = join(ROOT, "torture", "children", "concurrent-writer.ts");
const READER = join(ROOT, "torture", "children", "concurrent-reader.ts");
const CLI = join(ROOT, "dist", "cli", "main.js");

const REFUSED = "second manager refused while the first lives, proceeds after it is killed";
const LS = "ckpt ls while a writer saves and prunes";
const VERIFY = "ckpt verify while a writer saves and prunes";
const LOAD = "loadCheckpoint in another process while a writer saves and prunes";
const KINDS = [REFUSED, LS, VERIFY, LOAD];

function runCli(args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [CLI, ...args], { stdio: ["ignore", "pipe", "pipe"], env: { ...process.env, CKPT_NO_PROGRESS: "1" } });
    let stdout = "";
    let stderr = "";
    child.stdout.setEncoding("utf8").on("data", (chunk: string) => (stdout += chunk));
    child.stderr.setEncoding("utf8").on("data", (chunk: string) => (stderr += chunk));
    child.on("error", reject);
    child.on("close", (code) => resolve({ code, stdout, stderr }));
  });
}

/** Each step's form: "whole" or "model only" (absent when not there). */
async function forms(dir: string): Promise<Map<number, string>> {
  const listing = await listCheckpointDirectory(dir);
  return new Map(listing.checkpoints.filter((c) => c.status === "committed").map((c) => [c.stepNr, c.modelOnly ? "model only" : "whole"]));
}

async function refusalCase(random: Random, dir: string, context: string): Promise<ClassFailure[]> {
  const failures: ClassFailure[] = [];
  const fail = (kind: string, detail: string): void => void failures.push({ kind, detail: `${context}: ${detail}` });
  const seeder = new FileCheckpointManager({ checkpointDir: dir });
  await saveCheckpoint(seeder, 1, 1, "small");
  await seeder.close();
  const heldStep = random.between(2, 50);
  const holder = spawn(process.execPath, [await bundledOnce(LOCK_HOLDER), dir, String(heldStep)], { stdio: ["pipe", "pipe", "pipe"] });
  const lines = createInterface({ input: holder.stdout! })[Symbol.asyncIterator]();
  const intruder = new FileCheckpointManager({ checkpointDir: dir });
  try {
    const first = await lines.next();
    if (first.value !== "open") return [{ kind: "setup", detail: `${context}: the lock holder said ${String(first.value)}` }];
    const before = await diskSnapshot(dir);
    const attempts: [string, () => Promise<unknown>][] = [
      ["beginCheckpoint", () => intruder.beginCheckpoint(heldStep + random.int(2))],
      ["background beginCheckpoint", () => intruder.beginCheckpoint(heldStep + 1, { background: true })],
      ["keepLastNCheckpoints", () => intruder.keepLastNCheckpoints(1)],
      ["deleteCheckpoint", () => intruder.deleteCheckpoint(1)],
      ["retain", () => intruder.retain({ keepLast: 1, background: true })],
    ];
    const [name, attempt] = random.pick(attempts);
    try {
      await attempt();
      fail("second manager not refused", `${name} succeeded while process ${holder.pid} held the directory`);
    } catch (error) {
      if (!(error instanceof CheckpointError) || !/is in use by another manager/.test(error.message) || !error.message.includes(`process ${holder.pid}`)) {
        fail("unclear refusal", `${name}: ${String(error)}`);
      }
    }
    const changed = snapshotDifference(before, await diskSnapshot(dir));
    if (changed.length > 0) fail("the refused manager changed the disk", `${name}: ${changed.join(", ")}`);
    holder.kill("SIGKILL");
    if (holder.exitCode === null && holder.signalCode === null) await once(holder, "exit");
    const next = heldStep + 100;
    try {
      await saveCheckpoint(intruder, next, next, "small");
      const steps = await intruder.getStepNumbers();
      if (steps.includes(heldStep)) fail("listed checkpoint never committed", `the killed holder's step ${heldStep} is listed`);
      if ((await loadContent(intruder, next, false)) !== next || (await loadContent(intruder, 1, false)) !== 1) fail("wrong state", "values");
    } catch (error) {
      fail("cannot proceed after the holder is killed", (error as Error).message);
    }
  } finally {
    await intruder.close().catch(() => undefined);
    if (holder.exitCode === null && holder.signalCode === null) holder.kill("SIGKILL");
  }
  return failures;
}

interface RaceTally {
  cases: Record<string, number>;
  failures: ClassFailure[];
  raced: number;
}

async function raceCase(random: Random, dir: string, steps: number, context: string, tally: RaceTally, quick: boolean): Promise<void> {
  const fail = (kind: string, detail: string): void => void tally.failures.push({ kind, detail: `${context}: ${detail}` });
  const stopFile = `${dir}.stop`;
  // Both bundled first, so the reader starts alongside the writer, not a bundling later.
  const [writerScript, readerScript] = await Promise.all([bundledOnce(WRITER), bundledOnce(READER)]);
  const writer = spawn(process.execPath, [writerScript, dir, String(steps), String(random.fork())], { stdio: ["ignore", "pipe", "pipe"] });
  const reader = spawn(process.execPath, [readerScript, dir, stopFile], { stdio: ["ignore", "pipe", "pipe"] });
  let writerErr = "";
  let readerErr = "";
  writer.stderr.setEncoding("utf8").on("data", (c: string) => (writerErr += c));
  reader.stderr.setEncoding("utf8").on("data", (c: string) => (readerErr += c));
  let readerOut = "";
  reader.stdout.setEncoding("utf8").on("data", (c: string) => (readerOut += c));
  const writerDone = once(writer, "close");
  let writerExited = false;
  void writerDone.then(() => (writerExited = true));
  // The CLI readers run in turns while the writer works (a quick run that was faster than both
  // readers runs each once more on the finished directory, so every kind is tried).
  const bothTried = (): boolean => (tally.cases[LS] ?? 0) > 0 && (tally.cases[VERIFY] ?? 0) > 0;
  for (let turn = 0; !writerExited || (quick && !bothTried() && turn < 8); turn++) {
    const useVerify = turn % 2 === 1;
    const before = await forms(dir).catch(() => new Map<number, string>());
    const run = await runCli(useVerify ? ["verify", "--json", dir] : ["ls", "--json", dir]);
    const after = await forms(dir).catch(() => new Map<number, string>());
    let parsed: { checkpoints?: { stepNr: number; status: string; problem?: string; problems?: { file: string; problem: string }[] }[]; error?: { code: string; message: string } };
    try {
      parsed = JSON.parse(run.stdout) as typeof parsed;
    } catch {
      parsed = {};
    }
    // Before the first commit there is nothing to list: an error then is the right answer.
    if (parsed.error !== undefined && before.size === 0) continue;
    countCase(tally.cases, useVerify ? VERIFY : LS);
    if (!Array.isArray(parsed.checkpoints)) {
      fail(useVerify ? "verify failed" : "ls failed", `exit ${run.code}: ${run.stdout.slice(0, 500)} ${run.stderr.slice(0, 500)}`);
      continue;
    }
    if (!useVerify) {
      if (run.code !== 0) fail("ls failed", `exit ${run.code}: ${run.stderr.slice(0, 500)}`);
      for (const c of parsed.checkpoints ?? []) {
        if (c.status === "damaged") fail("reader saw a half-written or half-deleted checkpoint", `ckpt ls showed step ${c.stepNr} as damaged: ${c.problem ?? ""}`);
        if (c.stepNr < 1 || c.stepNr > steps) fail("listed checkpoint never committed", `ckpt ls showed step ${c.stepNr}`);
      }
    } else {
      for (const c of parsed.checkpoints ?? []) {
        if ((c.problems ?? []).length === 0) continue;
        if (before.get(c.stepNr) === undefined || before.get(c.stepNr) !== after.get(c.stepNr)) tally.raced++;
        else fail("reader saw a half-written or half-deleted checkpoint", `ckpt verify reported step ${c.stepNr} (${before.get(c.stepNr) ?? "absent"} before and after): ${JSON.stringify(c.problems)}`);
      }
    }
  }
  const [writerCode] = (await writerDone) as [number | null];
  if (writerCode !== 0) fail("writer failed", writerErr.slice(-2000));
  await writeFile(stopFile, "");
  const [readerCode] = (await once(reader, "close")) as [number | null];
  if (readerCode !== 0) fail("reader failed", readerErr.slice(-2000));
  for (const line of readerOut.split("\n")) {
    if (!line.startsWith("load ")) continue;
    const { step, outcome, detail } = JSON.parse(line.slice(5)) as { step: number; outcome: string; detail: string };
    countCase(tally.cases, LOAD);
    if (outcome === "raced") tally.raced++;
    else if (outcome !== "ok") fail("reader saw a half-written or half-deleted checkpoint", `loadCheckpoint of step ${step}: ${detail}`);
  }
  // Afterwards: everything listed is sound and loads.
  const report = await verifyCheckpoints(dir).catch((error: Error) => ({ sound: false, checkpoints: [], error }));
  if (!report.sound) fail("damaged after the race", JSON.stringify(report).slice(0, 1000));
  const manager = new FileCheckpointManager({ checkpointDir: dir });
  for (const info of await manager.listCheckpoints()) {
    const content = await loadContent(manager, info.stepNr, info.modelOnly).catch((error: Error) => error.message);
    if (content !== info.stepNr) fail("wrong state", `step ${info.stepNr} holds ${content} after the race`);
  }
  await manager.close();
  if ((await readdir(dir)).includes(".ckpt.lock")) fail("lock left behind", "the writer closed but .ckpt.lock is there");
}

export async function concurrency(options: ClassOptions): Promise<ClassResult> {
  const random = new Random(options.seed);
  const cases: Record<string, number> = Object.fromEntries(KINDS.map((kind) => [kind, 0]));
  const failures: ClassFailure[] = [];
  const tally: RaceTally = { cases, failures, raced: 0 };
  const deadline = performance.now() + options.budgetMs;
  for (let round = 0; options.quick ? round < 1 : performance.now() < deadline; round++) {
    const roundSeed = random.fork();
    const roundRandom = new Random(roundSeed);
    const context = `round ${round} (seed ${roundSeed})`;
    failures.push(...(await refusalCase(roundRandom, join(options.workDir, `refusal-${round}`), context)));
    countCase(cases, REFUSED);
    await raceCase(roundRandom, join(options.workDir, `race-${round}`), options.quick ? 8 : 16, context, tally, options.quick);
  }
  return { name: "Concurrency", cases, failures, figures: { "reads that raced with a prune (allowed)": tally.raced } };
}
