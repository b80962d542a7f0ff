/**
 * What a checker finds in a directory after a kill, and whether it is allowed: each listed step
 * must load whole with its checksums and hold one save's values (test/helpers/crash-scenarios.ts
 * loadContent); each step must be as it was before the operation under way when the kill came, or as
 * that operation leaves it.
 */
import type { FileCheckpointManager } from "../../src/index.js";
import { loadContent } from "../../test/helpers/crash-scenarios.js";
import type { ClassFailure } from "../types.js";
import { runOp } from "./crash-plan.js";

/** The step the check saves after a kill: above any step a workload uses. */
export const CHECK_STEP = 99_999;

export interface Found {
  content: number;
  modelOnly: boolean;
}

/** Step → what it holds, as [step, found] pairs (JSON-friendly). */
export type Observation = Map<number, Found>;

export async function observeCheckpoints(manager: FileCheckpointManager): Promise<Observation> {
  const observed: Observation = new Map();
  for (const info of await manager.listCheckpoints()) {
    observed.set(info.stepNr, { modelOnly: info.modelOnly, content: await loadContent(manager, info.stepNr, info.modelOnly) });
  }
  return observed;
}

const same = (a: Found | undefined, b: Found | undefined): boolean =>
  a === undefined || b === undefined ? a === b : a.content === b.content && a.modelOnly === b.modelOnly;

const show = (found: Found | undefined): string => (found === undefined ? "absent" : `content ${found.content}${found.modelOnly ? ", model only" : ""}`);

export interface Mismatch {
  /** "loss": a step that had to be there is not, or holds older values; else "wrong state". */
  kind: "loss" | "wrong state";
  detail: string;
}

/** How `observed` differs from what is allowed: each step as in `before` or as in `after`. */
export function mismatches(observed: Observation, before: Observation, after: Observation): Mismatch[] {
  const problems: Mismatch[] = [];
  const steps = new Set([...observed.keys(), ...before.keys(), ...after.keys()]);
  for (const stepNr of [...steps].sort((a, b) => a - b)) {
    const found = observed.get(stepNr);
    if (same(found, before.get(stepNr)) || same(found, after.get(stepNr))) continue;
    const wasThere = before.get(stepNr) !== undefined && after.get(stepNr) !== undefined;
    problems.push({
      kind: wasThere && found === undefined ? "loss" : "wrong state",
      detail: `step ${stepNr} is ${show(found)}; allowed: ${show(before.get(stepNr))} (before) or ${show(after.get(stepNr))} (after)`,
    });
  }
  return problems;
}

export const canonical = (observation: Observation): string =>
  [...observation].sort(([a], [b]) => a - b).map(([step, found]) => `${step}:${found.content}:${found.modelOnly}`).join(",");

/**
 * The checks of a fresh manager taking a directory over after a kill (the same on every back end):
 * what it lists must be allowed (see mismatches), a new checkpoint must save, and that save's
 * recovery must leave every committed checkpoint as it was. Closes the manager.
 */
export async function checkTakeOver(manager: FileCheckpointManager, before: Observation, after: Observation, context: string): Promise<ClassFailure[]> {
  const failures: ClassFailure[] = [];
  try {
    let observed: Observation;
    try {
      observed = await observeCheckpoints(manager);
    } catch (error) {
      return [{ kind: "listed checkpoint does not load", detail: `${context}: ${(error as Error).message}` }];
    }
    for (const problem of mismatches(observed, before, after)) failures.push({ kind: problem.kind, detail: `${context}: ${problem.detail}` });
    try {
      await runOp(manager, { type: "save", stepNr: CHECK_STEP, content: CHECK_STEP, background: false }, () => undefined);
      const again = await observeCheckpoints(manager);
      const expected = new Map(observed).set(CHECK_STEP, { content: CHECK_STEP, modelOnly: false });
      if (canonical(again) !== canonical(expected)) {
        failures.push({ kind: "recovery changed committed checkpoints", detail: `${context}: ${JSON.stringify([...observed])} became ${JSON.stringify([...again])}` });
      }
    } catch (error) {
      failures.push({ kind: "cannot save after a kill", detail: `${context}: ${(error as Error).message}` });
    }
  } finally {
    await manager.close().catch(() => undefined);
  }
  return failures;
}
