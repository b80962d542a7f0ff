/**
 * The work of a crash-anywhere writer: a list of operations drawn from a seed, and the training
 * state each save writes, whose every number is derived from the step and its save generation
 * (step + 1000 × generation) so a checker knows what a listed step must hold.
 */
import type { FileCheckpointManager, StateDict } from "../../src/index.js";
import { trainingState } from "../../test/helpers/crash-scenarios.js";
import type { Random } from "./random.js";

export type CrashOp =
  | { type: "save"; stepNr: number; content: number; background: boolean }
  | { type: "delete"; stepNr: number; preserveModel: boolean }
  | { type: "keepLast"; n: number; preserveModel: boolean; background: boolean }
  | { type: "keepBest"; n: number; background: boolean };

/** The content of save `generation` of `stepNr` (0 the first, 1 the first re-save...). */
export const contentOf = (stepNr: number, generation: number): number => stepNr + 1000 * generation;

/** The steps the template holds, with content = step. */
export const TEMPLATE_STEPS = [1, 2, 3];

export function drawPlan(random: Random, length: number): CrashOp[] {
  const present = new Map<number, number>(TEMPLATE_STEPS.map((s) => [s, 0])); // step → generation
  let nextStep = 4;
  const plan: CrashOp[] = [];
  while (plan.length < length) {
    const choice = random.int(10);
    const steps = [...present.keys()];
    if (choice < 3 || steps.length === 0) {
      const stepNr = nextStep;
      nextStep += random.between(1, 3);
      present.set(stepNr, 0);
      plan.push({ type: "save", stepNr, content: contentOf(stepNr, 0), background: random.chance(0.5) });
    } else if (choice < 5) {
      const stepNr = random.pick(steps);
      const generation = present.get(stepNr)! + 1;
      present.set(stepNr, generation);
      plan.push({ type: "save", stepNr, content: contentOf(stepNr, generation), background: random.chance(0.5) });
    } else if (choice < 7) {
      const stepNr = random.pick(steps);
      const preserveModel = random.chance(0.3);
      if (!preserveModel) present.delete(stepNr);
      plan.push({ type: "delete", stepNr, preserveModel });
    } else if (choice < 9) {
      // The model is not tracked further by the plan: a later save may re-save any listed step.
      plan.push({ type: "keepLast", n: random.between(1, 3), preserveModel: random.chance(0.3), background: random.chance(0.5) });
    } else plan.push({ type: "keepBest", n: random.between(1, 2), background: random.chance(0.5) });
  }
  return plan;
}

export function describeOp(op: CrashOp): string {
  switch (op.type) {
    case "save":
      return `${op.background ? "background " : ""}save of step ${op.stepNr} (content ${op.content})`;
    case "delete":
      return `delete step ${op.stepNr}${op.preserveModel ? " preserving its model" : ""}`;
    case "keepLast":
      return `keep the last ${op.n}${op.preserveModel ? " preserving models" : ""}${op.background ? ", deleting in the background" : ""}`;
    case "keepBest":
      return `keep the best ${op.n}${op.background ? ", deleting in the background" : ""}`;
  }
}

/**
 * Runs one operation. A background save says `returned` (through `say`) once commitCheckpoint has
 * returned, then waits for the write: the op is over when the checkpoint is committed.
 */
/** The state a save of `content` writes at `stepNr`: the small training state unless a writer needs another. */
export type StateMaker = (stepNr: number, content: number) => StateDict;
const smallState: StateMaker = (stepNr, content) => trainingState(stepNr, content, "small");

export async function runOp(manager: FileCheckpointManager, op: CrashOp, say: (line: string) => void, makeState: StateMaker = smallState): Promise<void> {
  switch (op.type) {
    case "save":
      await manager.beginCheckpoint(op.stepNr, { background: op.background });
      await manager.saveState(makeState(op.stepNr, op.content), { replicatedKeys: ["epoch"] });
      await manager.saveMetadata({ content: op.content });
      await manager.saveScore(op.content);
      await manager.commitCheckpoint();
      if (op.background) {
        say("returned");
        await manager.waitForPendingSave();
      }
      return;
    case "delete":
      await manager.deleteCheckpoint(op.stepNr, { missingOk: true, preserveModel: op.preserveModel });
      return;
    case "keepLast":
      await manager.retain({ keepLast: op.n, preserveModel: op.preserveModel, background: op.background });
      return;
    case "keepBest":
      await manager.retain({ keepBest: op.n, background: op.background });
      return;
  }
}
