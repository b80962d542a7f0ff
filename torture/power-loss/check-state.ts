/**
 * Checks one crash state: materialised as a real directory, a fresh manager must list only
 * checkpoints whose values are exactly those saved, keep every checkpoint whose commit had
 * returned (unless its deletion had begun), recover, and save again.
 */
import { mkdir, readFile, writeFile } from "node:fs/promises";
import { isDeepStrictEqual } from "node:util";
import { join } from "node:path";
import { FileCheckpointManager, type StateDict } from "../../src/index.js";
import { plainValues } from "../plain-values.js";
import type { DirectoryState } from "./crash-states.js";
import { expectedState } from "./expected-state.js";
import type { FileOperation } from "./file-operations.js";

/** What the workload had promised at a cut, from the markers before it. */
export interface Promises {
  /** Steps whose commit had returned (and no deletion begun): the least version each must show. */
  mustExist: Map<number, number>;
  /** Versions of each step whose save had begun: a listed step must hold one of them. */
  begun: Map<number, Set<number>>;
  /** Steps retention may have stripped to their model. */
  mayStrip: Set<number>;
  modelCardWritten: boolean;
}

export function promisesAt(ops: FileOperation[], cut: number): Promises {
  const promises: Promises = { mustExist: new Map(), begun: new Map(), mayStrip: new Set(), modelCardWritten: false };
  for (const op of ops.slice(0, cut)) {
    if (op.op !== "mark") continue;
    const [what, ...numbers] = op.text.split(" ");
    const [a, b] = numbers.map(Number) as [number, number];
    if (what === "begin") promises.begun.set(a, new Set([...(promises.begun.get(a) ?? []), b]));
    if (what === "committed") promises.mustExist.set(a, b);
    if (what === "may-delete") for (const step of numbers.map(Number)) promises.mustExist.delete(step);
    if (what === "may-strip") for (const step of numbers.map(Number)) promises.mayStrip.add(step);
    if (what === "model-card") promises.modelCardWritten = true;
  }
  return promises;
}

export async function materialise(tree: DirectoryState, dir: string): Promise<void> {
  await mkdir(dir, { recursive: true });
  for (const [path, content] of tree) {
    if (content === "dir") await mkdir(join(dir, path), { recursive: true });
    else await writeFile(join(dir, path), content);
  }
}

/** A step no workload save uses: the check's own save after recovery. */
const CHECK_STEP = 100;

/** Returns what is wrong with the state, or an empty list. */
export async function checkState(root: string, promises: Promises): Promise<string[]> {
  const problems: string[] = [];
  const checkpointDir = join(root, "checkpoints");
  if (promises.modelCardWritten) {
    const card = await readFile(join(checkpointDir, "model.yaml"), "utf8").catch(() => "");
    if (!card.includes("family: toy")) problems.push(`model.yaml lost or damaged after saveModelMetadata returned: ${JSON.stringify(card.slice(0, 80))}`);
  }
  const manager = new FileCheckpointManager({ checkpointDir });
  try {
    await checkListing(manager, promises, "before recovery", problems);
    // Saving takes the directory (lock, recovery of leftovers); it must work in every state.
    try {
      await manager.beginCheckpoint(CHECK_STEP);
      await manager.saveState(expectedState(CHECK_STEP, 1));
      await manager.commitCheckpoint();
      if (!matches(await manager.loadCheckpoint(CHECK_STEP), CHECK_STEP, 1)) problems.push("the save after recovery loads different values");
    } catch (error) {
      problems.push(`saving after the cut failed: ${(error as Error).message}`);
    }
    await checkListing(manager, promises, "after recovery", problems, CHECK_STEP);
  } finally {
    await manager.close().catch(() => undefined);
  }
  return problems;
}

async function checkListing(manager: FileCheckpointManager, promises: Promises, when: string, problems: string[], ownStep?: number): Promise<void> {
  let steps: number[];
  try {
    steps = await manager.getStepNumbers({ includeModelOnly: true });
  } catch (error) {
    problems.push(`${when}: listing failed: ${(error as Error).message}`);
    return;
  }
  for (const [step, version] of promises.mustExist) {
    if (!steps.includes(step)) problems.push(`${when}: step ${step} (version ${version}) was committed but is not listed (listed: ${steps.join(",")})`);
  }
  for (const step of steps) {
    if (step === ownStep) continue;
    const begun = promises.begun.get(step);
    if (begun === undefined) {
      problems.push(`${when}: step ${step} is listed but was never saved`);
      continue;
    }
    const least = promises.mustExist.get(step) ?? 0;
    const versions = [...begun].filter((v) => v >= least);
    try {
      const state = await manager.loadCheckpoint(step);
      if (!versions.some((v) => matches(state, step, v))) problems.push(`${when}: step ${step} loads values of no save of it since version ${least} (version field: ${String(state.version)})`);
    } catch (error) {
      if (!promises.mayStrip.has(step)) {
        problems.push(`${when}: step ${step} is listed but does not load: ${(error as Error).message}`);
        continue;
      }
      // A checkpoint retention stripped to its model: the model must load, and be one that was saved.
      try {
        const model = await manager.loadModel(step);
        if (!versions.some((v) => isDeepStrictEqual(plainValues(model), plainValues(expectedState(step, v).model!)))) problems.push(`${when}: step ${step}'s model loads values of no save of it`);
      } catch (modelError) {
        problems.push(`${when}: step ${step} (being stripped) loads neither whole (${(error as Error).message}) nor as a model (${(modelError as Error).message})`);
      }
    }
  }
}

function matches(state: StateDict, step: number, version: number): boolean {
  return isDeepStrictEqual(plainValues(state), plainValues(expectedState(step, version)));
}
