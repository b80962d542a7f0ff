import assert from "node:assert/strict";
import { mkdir, rename, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { FileCheckpointManager, Tensor, type StateDict, type StateValue } from "../../src/index.js";

/**
 * The work a crash-test child does on a checkpoint directory, and what a later run must find there
 * however far that work got. Shared by test/crash-safety.test.ts (which prepares the directory and
 * checks it after the kill) and test/helpers/crash-child.ts (which does the work and is killed).
 */
export interface CrashScenario {
  /** Builds the directory the child starts from. */
  prepare(dir: string): Promise<void>;
  /** What the child does with a manager on that directory. */
  run(manager: FileCheckpointManager): Promise<void>;
  /**
   * What must be listed after a kill, given the kill points (see crash-child.ts) whose calls had
   * completed. A step missing from the map must not be listed at all.
   */
  expect(done: ReadonlySet<string>): Map<number, StepExpectation>;
  /** The kill points `expect` looks for: a run to the end must pass every one of them. */
  keyPoints: string[];
}

export interface StepExpectation {
  /** It must be listed (else it may be). */
  required: boolean;
  /** The content values it may hold: every tensor is filled with one of them. */
  contents: number[];
  /** Whether it must be stripped to its model (else it must be whole). */
  modelOnly: boolean;
}

export type StateSize = "small" | "large";

/** Elements per tensor: small states keep the enumerated kills fast; large ones take many writes. */
const ELEMENTS: Record<StateSize, number> = { small: 16, large: 1 << 19 };

/**
 * A training state of a step whose every number is `content` (the step number, or the step
 * number + 1000 for a re-save of that step), so a mix of two saves cannot pass for either.
 */
export function trainingState(stepNr: number, content: number, size: StateSize): StateDict {
  const n = ELEMENTS[size];
  return {
    model: {
      "linear.weight": Tensor.from(new Float32Array(n).fill(content), { shape: [n / 4, 4] }),
      "linear.bias": Tensor.from(new Float32Array(4).fill(content)),
    },
    optimizer: {
      state: new Map<number, StateValue>([[0, { step: content, exp_avg: Tensor.from(new Float32Array(n).fill(content)) }]]),
      param_groups: [{ lr: 0.001, params: [0] }],
    },
    step_nr: stepNr,
    epoch: content,
  };
}

/** Commits checkpoint `stepNr` with its training state, metadata and score, all holding `content`. */
export async function saveCheckpoint(manager: FileCheckpointManager, stepNr: number, content: number, size: StateSize): Promise<void> {
  await manager.beginCheckpoint(stepNr);
  await manager.saveState(trainingState(stepNr, content, size), { replicatedKeys: ["epoch"] });
  await manager.saveMetadata({ content });
  await manager.saveScore(content);
  await manager.commitCheckpoint();
}

/** Every tensor of `model` holds `content` and nothing else; returns `content`. */
function checkModel(model: StateValue | undefined, stepNr: number): number {
  assert.ok(model !== null && typeof model === "object" && !Array.isArray(model) && !(model instanceof Map), `step ${stepNr}: the model is not a dict`);
  const weight = (model as StateDict)["linear.weight"];
  const bias = (model as StateDict)["linear.bias"];
  assert.ok(weight instanceof Tensor && bias instanceof Tensor, `step ${stepNr}: the model's tensors are missing`);
  const content = bias.data[0] as number;
  for (const tensor of [weight, bias]) {
    const data = tensor.data as Float32Array;
    for (let i = 0; i < data.length; i++) if (data[i] !== content) assert.fail(`step ${stepNr}: element ${i} is ${data[i]}, not ${content}: two saves are mixed`);
  }
  return content;
}

/**
 * Loads step `stepNr` in full (or only its model when it was stripped to it) with checksums
 * verified, and returns the one content value all of it holds.
 */
export async function loadContent(manager: FileCheckpointManager, stepNr: number, modelOnly: boolean): Promise<number> {
  if (modelOnly) return checkModel(await manager.loadModel(stepNr), stepNr);
  const state = await manager.loadCheckpoint(stepNr);
  const content = checkModel(state.model, stepNr);
  assert.equal(state.step_nr, stepNr, `step ${stepNr}: step_nr`);
  assert.equal(state.epoch, content, `step ${stepNr}: the replicated epoch`);
  const optimizer = state.optimizer as StateDict;
  const slot = (optimizer.state as Map<number, StateValue>).get(0) as StateDict;
  assert.equal(slot.step, content, `step ${stepNr}: optimizer step`);
  const expAvg = (slot.exp_avg as Tensor).data as Float32Array;
  assert.ok(expAvg.every((x) => x === content), `step ${stepNr}: exp_avg is not all ${content}`);
  assert.deepEqual(await manager.loadMetadata(stepNr), { content }, `step ${stepNr}: metadata`);
  return content;
}

async function commitSteps(dir: string, contents: [number, number][], size: StateSize): Promise<void> {
  await mkdir(join(dir, "cc"), { recursive: true });
  await writeFile(join(dir, "cc", "tokenizer.txt"), "a carbon copy in every checkpoint\n");
  const manager = new FileCheckpointManager({ checkpointDir: dir });
  for (const [stepNr, content] of contents) await saveCheckpoint(manager, stepNr, content, size);
  await manager.close();
}

const kept = (contents: number[], modelOnly = false): StepExpectation => ({ required: true, contents, modelOnly });

/** The enumerated scenarios: small states, every kill point tried. */
export const CRASH_SCENARIOS = {
  /** A new step is saved after three committed ones; it exists exactly from its rename on. */
  "save a new step": {
    prepare: (dir) => commitSteps(dir, [[1, 1], [2, 2], [3, 3]], "small"),
    run: (manager) => saveCheckpoint(manager, 4, 4, "small"),
    keyPoints: ["rename step_4.tmp → step_4"],
    expect: (done) =>
      new Map([
        [1, kept([1])],
        [2, kept([2])],
        [3, kept([3])],
        ...(done.has("rename step_4.tmp → step_4") ? [[4, kept([4])] as const] : []), // not listed before its rename
      ]),
  },
  /** Step 3 is saved again with new content: the old one until the new one's rename, then the new. */
  "re-save an existing step": {
    prepare: (dir) => commitSteps(dir, [[1, 1], [2, 2], [3, 3]], "small"),
    run: (manager) => saveCheckpoint(manager, 3, 1003, "small"),
    keyPoints: ["rename step_3.tmp → step_3"],
    expect: (done) =>
      new Map([
        [1, kept([1])],
        [2, kept([2])],
        [3, kept(done.has("rename step_3.tmp → step_3") ? [1003] : [3])],
      ]),
  },
  /** Step 1 is deleted, then step 2 stripped to its model (keepLastN with preserveModel). */
  "delete and keep the last with preserveModel": {
    prepare: (dir) => commitSteps(dir, [[1, 1], [2, 2], [3, 3]], "small"),
    run: async (manager) => {
      await manager.deleteCheckpoint(1);
      await manager.keepLastNCheckpoints(1, { preserveModel: true });
    },
    keyPoints: ["rename step_1 → step_1.deleting", "rename step_2/.manifest.json.partial → step_2/manifest.json"],
    expect: (done) => {
      const expected = new Map([
        [2, kept([2], done.has("rename step_2/.manifest.json.partial → step_2/manifest.json"))],
        [3, kept([3])],
      ]);
      if (!done.has("rename step_1 → step_1.deleting")) expected.set(1, kept([1]));
      return expected;
    },
  },
  /**
   * Retention by several rules with background deletion: steps 1 and 3 are pruned (renamed away,
   * then removed in the background), then, once those removals are done, 2 and 4 are stripped to
   * their models (manifest rewritten, then training state removed in the background); close()
   * waits for the last removals. Every step is sequential, so the kill points come in one order.
   */
  "prune by several rules, deleting in the background": {
    prepare: (dir) => commitSteps(dir, [[1, 1], [2, 2], [3, 3], [4, 4], [5, 5]], "small"),
    run: async (manager) => {
      await manager.retain({ keepLast: 1, keepEvery: 2, background: true });
      await manager.retain({ keepLast: 1, preserveModel: true, background: true });
    },
    keyPoints: [
      "rename step_1 → step_1.deleting",
      "rename step_3 → step_3.deleting",
      "remove step_1.deleting",
      "rename step_2/.manifest.json.partial → step_2/manifest.json",
      "rename step_4/.manifest.json.partial → step_4/manifest.json",
      "remove step_4/rank_0.pt",
    ],
    expect: (done) => {
      const expected = new Map([
        [2, kept([2], done.has("rename step_2/.manifest.json.partial → step_2/manifest.json"))],
        [4, kept([4], done.has("rename step_4/.manifest.json.partial → step_4/manifest.json"))],
        [5, kept([5])],
      ]);
      for (const stepNr of [1, 3]) if (!done.has(`rename step_${stepNr} → step_${stepNr}.deleting`)) expected.set(stepNr, kept([stepNr]));
      return expected;
    },
  },
  /**
   * A crashed run left a lock it had not finished writing, an unfinished save, a half-deleted
   * step and a re-save cut off after moving the old step 3 aside; the child recovers and saves.
   */
  "recover from an earlier crash, then save": {
    prepare: async (dir) => {
      await commitSteps(dir, [[1, 1], [2, 2], [3, 3], [5, 5]], "small");
      await rename(join(dir, "step_3"), join(dir, "step_3.replaced"));
      await rename(join(dir, "step_5"), join(dir, "step_5.deleting"));
      await mkdir(join(dir, "step_4.tmp"));
      await writeFile(join(dir, "step_4.tmp", "rank_0.pt"), "half a file");
      await writeFile(join(dir, ".ckpt.lock"), "");
    },
    run: (manager) => saveCheckpoint(manager, 6, 6, "small"),
    keyPoints: ["rename step_6.tmp → step_6"],
    expect: (done) =>
      new Map([
        [1, kept([1])],
        [2, kept([2])],
        [3, kept([3])],
        ...(done.has("rename step_6.tmp → step_6") ? [[6, kept([6])] as const] : []), // not listed before its rename
      ]),
  },
  /**
   * Large states, for kills at random times from outside: a new step, a re-save, then pruning.
   * The kill can land inside any call, so a point in progress counts as done or not done.
   */
  "save, re-save and prune large states": {
    prepare: (dir) => commitSteps(dir, [[1, 1], [2, 2]], "large"),
    run: async (manager) => {
      await saveCheckpoint(manager, 3, 3, "large");
      await saveCheckpoint(manager, 2, 1002, "large");
      await manager.keepLastNCheckpoints(1, { preserveModel: true });
    },
    keyPoints: [
      "rename step_3.tmp → step_3",
      "rename step_2.tmp → step_2",
      "rename step_1/.manifest.json.partial → step_1/manifest.json",
      "rename step_2/.manifest.json.partial → step_2/manifest.json",
    ],
    expect: (done) =>
      new Map([
        [1, kept([1], done.has("rename step_1/.manifest.json.partial → step_1/manifest.json"))],
        [
          2,
          kept(
            done.has("rename step_2.tmp → step_2") ? [1002] : [2],
            done.has("rename step_2/.manifest.json.partial → step_2/manifest.json"),
          ),
        ],
        ...(done.has("rename step_3.tmp → step_3") ? [[3, kept([3])] as const] : []), // not listed before its rename
      ]),
  },
} satisfies Record<string, CrashScenario>;

export type CrashScenarioName = keyof typeof CRASH_SCENARIOS;
