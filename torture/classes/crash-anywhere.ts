/**
 * Class 1, "Crash anywhere": writer processes run a random workload (foreground and background
 * saves, re-saves of a step, deletes, retention by last and best, deleting in the foreground or
 * the background) and are SIGKILLed, either by themselves just before a chosen disk-changing call
 * (aimed at renames, at entries halfway through a recursive delete, at prunes, at fsyncs, at
 * writes, at a background save after commitCheckpoint returned) or from outside at a random time;
 * and ranks of a 2-process `ckpt launch` job are killed while saving (torture/lib/launch-crash.ts).
 *
 * After each kill a fresh manager (not the killed process) takes the directory over: every listed
 * checkpoint must load with its checksums and hold the values saved for it, every step must be as it
 * was before the operation under way or as that operation leaves it (so the last committed one is
 * there), and a new checkpoint must save and load. Expected states come from a run of the same
 * workload to the end, which records what is listed after each operation.
 */
import { cp, mkdir, rm, writeFile } from "node:fs/promises";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { FileCheckpointManager } from "../../src/index.js";
import { saveCheckpoint } from "../../test/helpers/crash-scenarios.js";
import { runChild, type ChildRun } from "../lib/child-process.js";
import { describeOp, drawPlan, TEMPLATE_STEPS, type CrashOp } from "../lib/crash-plan.js";
import { checkTakeOver, type Found, type Observation } from "../lib/crash-check.js";
import { launchCrashCase, prepareLaunchTemplate, LAUNCH_KIND } from "../lib/launch-crash.js";
import { countCase, Random } from "../lib/random.js";
import type { ClassFailure, ClassOptions, ClassResult } from "../types.js";

const WRITER = join(dirname(dirname(fileURLToPath(import.meta.url))), "children", "crash-writer.ts");
/** The step the checker saves after each kill (beyond any step a plan uses). */

/** Where a kill can be aimed, by the label of the call it lands before and the operation under way. */
const AIMED = {
  "kill at a rename": (p: Point) => p.label.startsWith("rename "),
  "kill halfway through a recursive delete": (p: Point) => p.label.endsWith("(inside a recursive delete)"),
  "kill during a prune (retention)": (p: Point) => (p.op?.type === "keepLast" || p.op?.type === "keepBest") && /^(rename|remove) /.test(p.label),
  "kill during a background save, after commitCheckpoint returned": (p: Point) => p.afterReturned,
  "kill at an fsync": (p: Point) => p.label.startsWith("fsync "),
  "kill while a file is created or written": (p: Point) => p.label.startsWith("write ") || p.label.startsWith("create "),
} as const;
type AimedKind = keyof typeof AIMED;
const AIMED_KINDS = Object.keys(AIMED) as AimedKind[];
const RANDOM_KIND = "kill at a random time, from outside";
export const CRASH_KINDS = [...AIMED_KINDS, RANDOM_KIND, LAUNCH_KIND];

export interface Point {
  index: number;
  label: string;
  op: CrashOp | undefined;
  afterReturned: boolean;
}

export interface Recording {
  points: Point[];
  states: Map<number, Observation>;
  workMs: number;
}

/** The points of a run, each with the operation under way, from its lines. */
export function pointsOf(lines: string[], plan: CrashOp[]): Point[] {
  const points: Point[] = [];
  let op: CrashOp | undefined;
  let afterReturned = false;
  for (const line of lines) {
    if (line.startsWith("op ")) {
      op = plan[Number(line.slice(3))];
      afterReturned = false;
    } else if (line.startsWith("done-op ")) op = undefined;
    else if (line === "returned") afterReturned = true;
    else if (line.startsWith("point ") || line.startsWith("kill ")) {
      const label = line.slice(line.indexOf(" ") + 1);
      points.push({ index: points.length + 1, label, op, afterReturned: afterReturned && op !== undefined });
    }
  }
  return points;
}

async function prepareTemplate(dir: string): Promise<void> {
  await mkdir(join(dir, "cc"), { recursive: true });
  await writeFile(join(dir, "cc", "tokenizer.txt"), "a carbon copy in every checkpoint\n");
  const manager = new FileCheckpointManager({ checkpointDir: dir });
  for (const stepNr of TEMPLATE_STEPS) await saveCheckpoint(manager, stepNr, stepNr, "small");
  await manager.close();
}

export const parseStates = (lines: string[]): Map<number, Observation> =>
  new Map(
    lines
      .filter((line) => line.startsWith("state "))
      .map((line) => {
        const [, index, json] = /^state (-?\d+) (.*)$/.exec(line)!;
        return [Number(index), new Map(JSON.parse(json!) as [number, Found][])];
      }),
  );

/** What a fresh manager finds after `run`; failures, or none. */
async function checkAfterKill(dir: string, run: ChildRun, recording: Recording, context: string): Promise<ClassFailure[]> {
  const doneOps = run.lines.filter((line) => line.startsWith("done-op ")).length;
  const final = recording.states.get(recording.states.size - 2)!;
  const before = recording.states.get(doneOps - 1)!;
  const after = recording.states.get(doneOps) ?? final;
  const manager = new FileCheckpointManager({ checkpointDir: dir });
  return checkTakeOver(manager, before, after, context);
}

/** The kind a landed kill counts as: the aimed kind when the call it hit is one, else the first that fits. */
function kindOf(point: Point | undefined, aimed: AimedKind | undefined): string {
  if (point === undefined) return "kill while a file is created or written";
  if (aimed !== undefined && AIMED[aimed](point)) return aimed;
  return AIMED_KINDS.find((kind) => AIMED[kind](point)) ?? "kill at another call (mkdir, link, remove)";
}

export async function crashAnywhere(options: ClassOptions): Promise<ClassResult> {
  const random = new Random(options.seed);
  const cases: Record<string, number> = Object.fromEntries(CRASH_KINDS.map((kind) => [kind, 0]));
  const failures: ClassFailure[] = [];
  const deadline = performance.now() + options.budgetMs;
  const template = join(options.workDir, "template");
  await prepareTemplate(template);
  let launchTemplate: string | undefined;
  const missing = (): AimedKind[] => AIMED_KINDS.filter((kind) => cases[kind] === 0);
  const quickDone = (): boolean => CRASH_KINDS.every((kind) => (cases[kind] ?? 0) > 0);
  let dirCount = 0;
  const freshCopy = async (): Promise<string> => {
    const dir = join(options.workDir, `run-${dirCount++}`);
    await cp(template, dir, { recursive: true });
    return dir;
  };

  for (let workload = 0; options.quick ? !quickDone() && workload < 6 : performance.now() < deadline; workload++) {
    const workloadSeed = random.fork();
    const workloadRandom = new Random(workloadSeed);
    // Every fourth workload (and in quick mode, until one kill has landed) kills a rank of a launched job instead.
    if (workload % 4 === 3 || (options.quick && cases[LAUNCH_KIND] === 0 && workload < 3)) {
      launchTemplate ??= await prepareLaunchTemplate(join(options.workDir, "launch-template"));
      const outcome = await launchCrashCase(workloadRandom, launchTemplate, join(options.workDir, `launch-${workload}`), `workload ${workload} (seed ${workloadSeed})`);
      if (outcome.landed) countCase(cases, LAUNCH_KIND);
      failures.push(...outcome.failures);
      if (!options.quick) continue;
    }
    const plan = drawPlan(workloadRandom, workloadRandom.between(4, 7));
    const planText = JSON.stringify(plan);
    const context = (what: string): string => `workload ${workload} (seed ${workloadSeed}; ${plan.map(describeOp).join("; ")}), ${what}`;

    const recordDir = await freshCopy();
    const recorded = await runChild(WRITER, [recordDir, planText], { TORTURE_RECORD: "1" });
    await rm(recordDir, { recursive: true, force: true });
    if (recorded.code !== 0 || recorded.lines.at(-1) !== "done") {
      failures.push({ kind: recorded.hung ? "hang" : "workload failed", detail: context(`run to the end: code ${recorded.code}: ${recorded.stderr.slice(-2000)}`) });
      continue;
    }
    const recording: Recording = { points: pointsOf(recorded.lines, plan), states: parseStates(recorded.lines), workMs: recorded.workMs ?? 1000 };

    const kills = options.quick ? AIMED_KINDS.length + 1 : 8;
    for (let k = 0; k < kills && (options.quick ? !quickDone() : performance.now() < deadline); k++) {
      const dir = await freshCopy();
      let run: ChildRun & { hung: boolean };
      let aimed: AimedKind | undefined;
      // Quick: once every aimed kind has landed, the kill from outside comes next.
      if (k === kills - 1 || (options.quick && missing().length === 0)) {
        run = await runChild(WRITER, [dir, planText], {}, { killAfterMs: workloadRandom.int(Math.max(1, Math.floor(recording.workMs))) });
      } else {
        // Aim at a kind not tried yet when this workload has one, else at any kind it has.
        const available = AIMED_KINDS.filter((kind) => recording.points.some(AIMED[kind]));
        const wanted = missing().filter((kind) => available.includes(kind));
        aimed = workloadRandom.pick(wanted.length > 0 ? wanted : available);
        const target = workloadRandom.pick(recording.points.filter(AIMED[aimed]));
        run = await runChild(WRITER, [dir, planText], { CRASH_AT: String(target.index) });
      }
      if (run.hung) failures.push({ kind: "hang", detail: context(`the writer did not finish`) });
      const killed = run.signal === "SIGKILL" && run.lines.at(-1) !== "done";
      if (!killed && run.code !== 0) failures.push({ kind: "workload failed", detail: context(`exit ${run.code}: ${run.stderr.slice(-2000)}`) });
      if (killed) {
        const points = pointsOf(run.lines, plan);
        const last = points.at(-1);
        const kind = aimed === undefined ? RANDOM_KIND : kindOf(last, aimed);
        countCase(cases, kind);
        failures.push(...(await checkAfterKill(dir, run, recording, context(`${kind}: killed at "${last?.label ?? "(start)"}"`))));
      }
      await rm(dir, { recursive: true, force: true });
    }
  }
  const total = Object.values(cases).reduce((a, b) => a + b, 0);
  return { name: "Crash anywhere", cases, failures, figures: { "kills checked": total } };
}
