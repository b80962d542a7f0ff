/**
 * Crash-anywhere cases for several processes: a 2-process `ckpt launch` job (dp = 2) that saves
 * step 200 over a committed step 100 has one rank SIGKILLed before a random one of its
 * disk-changing calls. The launch must fail; then a fresh launch must resume from a step whose
 * values are those saved (step 100, or 200 when the kill came after its commit), every listed
 * checkpoint must verify, and a further launch must save step 300.
 */
import { cp, rm } from "node:fs/promises";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { verifyCheckpoints } from "../../src/index.js";
import { launch, type Launch } from "../../test/helpers/launch-job.js";
import type { Random } from "./random.js";
import type { ClassFailure } from "../types.js";

export const LAUNCH_KIND = "kill a rank of a 2-process ckpt launch while it saves";
const WRITER = join(dirname(dirname(fileURLToPath(import.meta.url))), "children", "launched-writer.ts");
const FLAGS = ["--nproc", "2"];

/** The number of kill points of a rank in a save of step 200, measured once per template and rank. */
const pointCounts = new Map<string, number>();

function launchProblem(run: Launch, ranks: number): string | undefined {
  if (run.code !== 0) return `exit ${run.code}: ${run.stdout.slice(-1500)} ${run.stderr.slice(-1500)}`;
  if (run.results.size !== ranks) return `only ${run.results.size} ranks reported: ${run.stdout.slice(-1500)}`;
  return undefined;
}

export async function prepareLaunchTemplate(dir: string): Promise<string> {
  const run = await launch(FLAGS, [dir, "save", "100"]);
  const problem = launchProblem(run, 2);
  if (problem !== undefined) throw new Error(`the launch template could not be saved: ${problem}`);
  return dir;
}

async function countPoints(template: string, scratch: string, rank: number): Promise<number> {
  const key = `${template}#${rank}`;
  const known = pointCounts.get(key);
  if (known !== undefined) return known;
  const dir = `${scratch}-count-${rank}`;
  await cp(template, dir, { recursive: true });
  const run = await launch(FLAGS, [dir, "save", "200"], { worker: WRITER, env: { TORTURE_KILL_RANK: String(rank) } });
  const problem = launchProblem(run, 2);
  if (problem !== undefined) throw new Error(`a launch without a kill failed: ${problem}`);
  const count = [...run.stdout.matchAll(new RegExp(`^\\[rank ${rank}\\] point `, "gm"))].length;
  await rm(dir, { recursive: true, force: true });
  pointCounts.set(key, count);
  return count;
}

export async function launchCrashCase(random: Random, template: string, dir: string, context: string): Promise<{ landed: boolean; failures: ClassFailure[] }> {
  const failures: ClassFailure[] = [];
  const fail = (kind: string, detail: string): { landed: boolean; failures: ClassFailure[] } => {
    failures.push({ kind, detail: `${context}: ${detail}` });
    return { landed: true, failures };
  };
  try {
    const rank = random.int(2);
    const count = await countPoints(template, dir, rank);
    const at = random.between(1, count);
    await cp(template, dir, { recursive: true });
    const killed = await launch(FLAGS, [dir, "save", "200"], { worker: WRITER, env: { TORTURE_KILL_RANK: String(rank), CRASH_AT: String(at) } });
    const where = new RegExp(`^\\[rank ${rank}\\] kill (.*)$`, "m").exec(killed.stdout)?.[1];
    if (where === undefined) return { landed: false, failures };
    const what = `rank ${rank} killed before point ${at} of ${count} ("${where}")`;
    if (killed.code === 0) return fail("a killed rank went unnoticed", `${what}: the launch exited 0`);

    const report = await verifyCheckpoints(dir);
    const damaged = report.checkpoints.filter((c) => c.status === "damaged" || c.problems.length > 0);
    if (damaged.length > 0) return fail("listed checkpoint does not load", `${what}: verify: ${JSON.stringify(damaged.map((c) => [c.name, c.problems]))}`);
    const resumed = await launch(FLAGS, [dir, "resume", "0"]);
    const problem = launchProblem(resumed, 2);
    if (problem !== undefined) return fail("loss", `${what}: the next launch cannot resume: ${problem}`);
    for (const [resumedRank, result] of resumed.results) {
      if (result.last !== 100 && result.last !== 200) fail("loss", `${what}: rank ${resumedRank} resumed from step ${String(result.last)}`);
      else if (result.matches !== true) fail("wrong state", `${what}: rank ${resumedRank} resumed step ${String(result.last)} with other values than were saved`);
    }
    const again = await launch(FLAGS, [dir, "save", "300"]);
    const saveProblem = launchProblem(again, 2);
    if (saveProblem !== undefined) fail("cannot save after a kill", `${what}: ${saveProblem}`);
    return { landed: true, failures };
  } catch (error) {
    return fail(/hung/.test((error as Error).message) ? "hang" : "workload failed", (error as Error).message);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}
