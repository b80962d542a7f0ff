import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { cp, mkdir, mkdtemp, readdir, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { FileCheckpointManager } from "../src/index.js";
import {
  CRASH_SCENARIOS,
  loadContent,
  saveCheckpoint,
  type CrashScenario,
  type CrashScenarioName,
  type StepExpectation,
} from "./helpers/crash-scenarios.js";
import { bundledOnce } from "../torture/lib/bundle-child.js";

/**
 * Real writers in child processes, killed with SIGKILL: by themselves at the points where they
 * are about to change the disk (test/helpers/crash-child.ts enumerates them, selectKillPoints
 * picks), and from outside at random times while they write large states. After each kill a fresh manager must find every
 * committed checkpoint whole, see nothing half-done, take over the dead child's lock, save again
 * and leave no leftovers.
 */

const CHILD = join(import.meta.dirname, "helpers", "crash-child.ts");
/** CHILD bundled into plain JavaScript (torture/lib/bundle-child.ts): it is started once per kill point. */
let bundledChild: string;
/** The issue asks for at least this many kill points over the suite. */
const MIN_KILL_POINTS = 50;
/** Kills at random times in the large-state scenario. */
const RANDOM_KILLS = 8;
/** Kills aimed at random renames, and at random points of the pruning, in the large-state scenario. */
const AIMED_AT_RENAMES = 4;
const AIMED_AT_PRUNING = 6;
/** The step the run after a kill saves, with this content. */
const NEXT_STEP = 100;
const LEFTOVER_DIR = /^step_\d+\.(tmp|deleting|replaced)$/;

let root: string;
let killPoints = 0;
before(async () => {
  root = await mkdtemp(join(tmpdir(), "ckpt-crash-"));
  bundledChild = await bundledOnce(CHILD);
});
after(async () => {
  await rm(root, { recursive: true, force: true });
});

interface ChildRun {
  signal: NodeJS.Signals | null;
  code: number | null;
  /** stdout lines: `ready`, `point <label>`…, then `kill <label>` or `done`. */
  lines: string[];
  stderr: string;
  /** From `ready` to `done`, when the child finished. */
  workMs: number | undefined;
}

/** Runs the crash child on `dir`; it kills itself at point `killAt`, or is killed `killAfterMs` after `ready`. */
function runChild(dir: string, scenario: CrashScenarioName, kill: { at?: number; afterMs?: number } = {}): Promise<ChildRun> {
  return new Promise((resolve, reject) => {
    const env = { ...process.env };
    delete env.CRASH_AT;
    if (kill.at !== undefined) env.CRASH_AT = String(kill.at);
    const child = spawn(process.execPath, [bundledChild, dir, scenario], { env, stdio: ["ignore", "pipe", "pipe"] });
    const lines: string[] = [];
    let pending = "";
    let stderr = "";
    let readyAt: number | undefined;
    let workMs: number | undefined;
    child.stdout.setEncoding("utf8");
    child.stderr.setEncoding("utf8");
    child.stderr.on("data", (chunk: string) => (stderr += chunk));
    child.stdout.on("data", (chunk: string) => {
      pending += chunk;
      const complete = pending.split("\n");
      pending = complete.pop()!;
      for (const line of complete) {
        lines.push(line);
        if (line === "ready") {
          readyAt = performance.now();
          if (kill.afterMs !== undefined) setTimeout(() => child.kill("SIGKILL"), kill.afterMs);
        }
        if (line === "done" && readyAt !== undefined) workMs = performance.now() - readyAt;
      }
    });
    child.on("error", reject);
    child.on("close", (code, signal) => resolve({ signal, code, lines, stderr, workMs }));
  });
}

const pointsOf = (run: ChildRun): string[] => run.lines.filter((line) => line.startsWith("point ")).map((line) => line.slice("point ".length));

interface Observed {
  modelOnly: boolean;
  content: number;
}

/** Every listed checkpoint, loaded with its checksums verified. */
async function observe(manager: FileCheckpointManager): Promise<Map<number, Observed>> {
  const observed = new Map<number, Observed>();
  for (const info of await manager.listCheckpoints()) {
    observed.set(info.stepNr, { modelOnly: info.modelOnly, content: await loadContent(manager, info.stepNr, info.modelOnly) });
  }
  return observed;
}

/** How `observed` differs from what the scenario allows; empty when it fits. */
function mismatches(observed: Map<number, Observed>, expected: Map<number, StepExpectation>): string[] {
  const problems: string[] = [];
  for (const [stepNr, found] of observed) {
    const allowed = expected.get(stepNr);
    if (allowed === undefined) problems.push(`step ${stepNr} is listed but was never committed or was deleted`);
    else if (!allowed.contents.includes(found.content)) problems.push(`step ${stepNr} holds ${found.content}, expected one of ${allowed.contents.join(", ")}`);
    else if (allowed.modelOnly !== found.modelOnly) problems.push(`step ${stepNr} is ${found.modelOnly ? "" : "not "}stripped to its model`);
  }
  for (const [stepNr, allowed] of expected) if (allowed.required && !observed.has(stepNr)) problems.push(`step ${stepNr} is missing`);
  return problems;
}

/**
 * What the next run must find after a kill: the listing fits the scenario for one of the
 * `alternatives` (sets of completed kill points), every listed checkpoint loads, the last one
 * resumes, and a new checkpoint can be saved; after that, recovery has changed nothing
 * committed and no leftover is there.
 */
async function checkAfterKill(dir: string, scenario: CrashScenario, alternatives: ReadonlySet<string>[], context: string): Promise<void> {
  const manager = new FileCheckpointManager({ checkpointDir: dir });
  const observed = await observe(manager).catch((error: Error) => assert.fail(`${context}: a listed checkpoint does not load: ${error.message}`));
  const fits = alternatives.map((done) => mismatches(observed, scenario.expect(done)));
  assert.ok(fits.some((problems) => problems.length === 0), `${context}: ${fits[0]!.join("; ")}`);

  const resumable = [...observed].filter(([, found]) => !found.modelOnly).map(([stepNr]) => stepNr);
  if (resumable.length > 0) {
    const last = await manager.loadLastCheckpoint();
    assert.equal(last.stepNr, Math.max(...resumable), `${context}: the last checkpoint`);
  }

  await saveCheckpoint(manager, NEXT_STEP, NEXT_STEP, "small").catch((error: Error) => assert.fail(`${context}: the next run cannot save: ${error.message}`));
  const afterSave = await observe(manager);
  assert.deepEqual(afterSave, new Map([...observed, [NEXT_STEP, { modelOnly: false, content: NEXT_STEP }]]), `${context}: recovery changed what is committed`);
  const entries = await readdir(dir);
  assert.deepEqual(entries.filter((name) => LEFTOVER_DIR.test(name)), [], `${context}: leftovers after the next run took the directory`);
  assert.deepEqual(entries.filter((name) => !/^(step_\d+|cc|\.ckpt\.lock)$/.test(name)), [], `${context}: junk after the next run took the directory`);
  await manager.close();
  assert.ok(!(await readdir(dir)).includes(".ckpt.lock"), `${context}: the lock was not released`);
}

/** Where a scenario's directories go: `<root>/<scenario index>-<what>`. */
const scenarioPath = (name: CrashScenarioName, what: string): string => join(root, `${Object.keys(CRASH_SCENARIOS).indexOf(name)}-${what}`);

async function prepareTemplate(name: CrashScenarioName, what = "template"): Promise<string> {
  const template = scenarioPath(name, what);
  await mkdir(template);
  await CRASH_SCENARIOS[name].prepare(template);
  return template;
}

/** A run to the end: its kill points, each key point among them, and a final state that fits. */
async function runToTheEnd(name: CrashScenarioName, template: string): Promise<ChildRun & { points: string[] }> {
  const scenario: CrashScenario = CRASH_SCENARIOS[name];
  const dir = scenarioPath(name, "uninterrupted");
  await cp(template, dir, { recursive: true });
  const run = await runChild(dir, name);
  assert.equal(run.code, 0, run.stderr);
  assert.equal(run.lines.at(-1), "done");
  const points = pointsOf(run);
  for (const key of scenario.keyPoints) assert.ok(points.includes(key), `the child never reached "${key}"; its points: ${points.join(", ")}`);
  await checkAfterKill(dir, scenario, [new Set(points)], `${name}, not killed`);
  await rm(dir, { recursive: true });
  return { ...run, points };
}

/**
 * The points to kill at: all of them, except that of the files a save writes into its `.tmp`
 * directory only the first and the manifest are tried. The files between are written the same
 * way into the same unlisted directory, so killing there shows nothing new and costs a process
 * each.
 */
function selectKillPoints(points: string[]): number[] {
  const selected: number[] = [];
  let skipping = false;
  points.forEach((point, index) => {
    if (/^create step_\d+\.tmp\/\.(?!model\.pt\.|manifest\.json\.)/.test(point)) skipping = true;
    if (!skipping) selected.push(index + 1);
    // A file's last point is the fsync of its directory.
    else if (point.startsWith("fsync directory ")) skipping = false;
  });
  return selected;
}

const ENUMERATED: CrashScenarioName[] = [
  "save a new step",
  "re-save an existing step",
  "delete and keep the last with preserveModel",
  "prune by several rules, deleting in the background",
  "recover from an earlier crash, then save",
];

/** Scenarios that remove whole directories (a pruned step, a dead run's leftovers). */
const DELETES_TREES = new Set<CrashScenarioName>([
  "delete and keep the last with preserveModel",
  "prune by several rules, deleting in the background",
  "recover from an earlier crash, then save",
]);
const INSIDE_A_TREE = "(inside a recursive delete)";

describe("a writer killed with SIGKILL", () => {
  for (const name of ENUMERATED) {
    it(`never loses a committed checkpoint, killed point by point while it does: ${name}`, async (t) => {
      const scenario: CrashScenario = CRASH_SCENARIOS[name];
      const template = await prepareTemplate(name);
      const { points } = await runToTheEnd(name, template);
      const selected = selectKillPoints(points);
      assert.ok(selected.length >= 10, `only ${selected.length} kill points`);
      if (DELETES_TREES.has(name)) {
        // A recursive delete is several points: kills land halfway through removing a directory.
        const inside = selected.filter((k) => points[k - 1]!.endsWith(INSIDE_A_TREE));
        assert.ok(inside.length >= 3, `only ${inside.length} kill points inside recursive deletes: ${points.join(", ")}`);
      }
      t.diagnostic(`killed at ${selected.length} of its ${points.length} points`);
      for (const k of selected) {
        const dir = scenarioPath(name, `kill-${k}`);
        await cp(template, dir, { recursive: true });
        const run = await runChild(dir, name, { at: k });
        const context = `${name}, killed before point ${k} (${points[k - 1]})`;
        assert.equal(run.signal, "SIGKILL", `${context}: the child was not killed (code ${run.code}): ${run.stderr}`);
        // The same points in the same order: the kill landed where it was meant to.
        assert.deepEqual(run.lines, ["ready", ...points.slice(0, k - 1).map((p) => `point ${p}`), `kill ${points[k - 1]}`], context);
        await checkAfterKill(dir, scenario, [new Set(points.slice(0, k - 1))], context);
        await rm(dir, { recursive: true });
        killPoints++;
      }
    });
  }

  it("never loses a committed checkpoint, killed at random times while writing large states", async (t) => {
    const name = "save, re-save and prune large states";
    const scenario: CrashScenario = CRASH_SCENARIOS[name];
    const template = await prepareTemplate(name);
    let { workMs } = await runToTheEnd(name, template);
    assert.ok(workMs !== undefined);
    let landed = 0;
    const where = new Set<string>();
    // Disk speed varies from run to run: a child that finishes first narrows the window.
    for (let attempt = 0; landed < RANDOM_KILLS && attempt < 3 * RANDOM_KILLS; attempt++) {
      const dir = scenarioPath(name, `random-${attempt}`);
      await cp(template, dir, { recursive: true });
      const delay = Math.floor(Math.random() * 0.9 * workMs);
      const run = await runChild(dir, name, { afterMs: delay });
      const points = pointsOf(run);
      const finished = run.lines.at(-1) === "done";
      if (finished) {
        assert.ok(run.code === 0 || run.signal === "SIGKILL", run.stderr);
        workMs = Math.min(workMs, run.workMs ?? workMs);
      } else {
        assert.equal(run.signal, "SIGKILL", run.stderr);
        landed++;
        where.add(points.at(-1) ?? "(start)");
      }
      // The last point printed may be in progress: its call counts as done or not done.
      const alternatives = finished ? [new Set(points)] : [new Set(points.slice(0, -1)), new Set(points)];
      await checkAfterKill(dir, scenario, alternatives, `${name}, killed after ${delay} ms, at or after "${points.at(-1) ?? "(start)"}"`);
      await rm(dir, { recursive: true });
    }
    assert.equal(landed, RANDOM_KILLS, `only ${landed} random kills landed before the child finished`);
    t.diagnostic(`killed at random inside: ${[...where].join("; ")}`);
  });

  it("never loses a committed checkpoint, killed at random renames, and at random points of its pruning, while handling large states", async (t) => {
    const name = "save, re-save and prune large states";
    const scenario: CrashScenario = CRASH_SCENARIOS[name];
    const template = await prepareTemplate(name, "aimed-template");
    const { points } = await runToTheEnd(name, template);
    // Pruning starts after the re-save of step 2 is committed.
    const pruneStart = points.indexOf("rename step_2.tmp → step_2") + 1;
    const renames = points.flatMap((point, index) => (point.startsWith("rename ") ? [index + 1] : []));
    const prunes = points.flatMap((point, index) => (index >= pruneStart && /^(rename|remove) /.test(point) ? [index + 1] : []));
    assert.ok(renames.length >= 4 && prunes.length >= 3, `renames ${renames.length}, prune points ${prunes.length}: ${points.join(", ")}`);
    // Distinct points, drawn at random: AIMED_AT_RENAMES renames, AIMED_AT_PRUNING points of the pruning.
    const draw = (from: number[], count: number): number[] => [...from].sort(() => Math.random() - 0.5).slice(0, count);
    const aimed = [...draw(renames, AIMED_AT_RENAMES), ...draw(prunes, AIMED_AT_PRUNING)];
    for (const [attempt, k] of aimed.entries()) {
      const dir = scenarioPath(name, `aimed-${attempt}`);
      await cp(template, dir, { recursive: true });
      const run = await runChild(dir, name, { at: k });
      const context = `${name}, killed before point ${k} (${points[k - 1]})`;
      assert.equal(run.signal, "SIGKILL", `${context}: the child was not killed (code ${run.code}): ${run.stderr}`);
      assert.equal(run.lines.at(-1), `kill ${points[k - 1]}`, `${context}: the kill landed elsewhere`);
      await checkAfterKill(dir, scenario, [new Set(points.slice(0, k - 1))], context);
      await rm(dir, { recursive: true });
    }
    t.diagnostic(`killed at: ${aimed.map((k) => points[k - 1]).join("; ")}`);
  });

  it(`was killed at ${MIN_KILL_POINTS} or more distinct points`, () => {
    assert.ok(killPoints >= MIN_KILL_POINTS, `only ${killPoints} kill points were exercised`);
  });
});
