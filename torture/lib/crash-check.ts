/**
 * What a checker finds in a directory after a kill, and whether it is allowed: each listed step
 * must load whole with its checksums and hold one save's values (test/helpers/crash-scenarios.ts
 * loadContent); each step must be as it was before the operation under way when the kill came, or as
 * that operation leaves it.
 */
import type { FileCheckpointManager } from "../../src/index.js";
import { loadContent } from "../../test/helpers/crash-scenarios.js";

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
