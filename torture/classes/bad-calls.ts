/**
 * Class 7, "Bad calls": the manager is called with wrong types, negative or non-integer steps and
 * n, non-finite scores, reserved key names and values that cannot be saved (functions, symbols,
 * sparse arrays, a tuple inside itself, class instances), drawn at random. Each must be refused at
 * the call with an InvalidArgumentError, or a CheckpointSaveError caused by one, whose message names
 * the problem; the directory must be byte for byte what it was before the case (nothing written,
 * an open checkpoint dropped); and the manager must save again afterwards.
 *
 * Dict and list cycles are not in the list: pickle records them through its memo and they load back
 * as the same cycle (in PyTorch too), so they are values that can be saved.
 */
import {
  CheckpointSaveError,
  FileCheckpointManager,
  InvalidArgumentError,
  Tensor,
  tuple,
  type StateDict,
  type StateValue,
} from "../../src/index.js";
import { diskSnapshot, snapshotDifference } from "../lib/disk-snapshot.js";
import { countCase, Random } from "../lib/random.js";
import type { ClassFailure, ClassOptions, ClassResult } from "../types.js";

interface BadCall {
  kind: string;
  what: string;
  /** Opens a checkpoint first (the call is refused inside it, which drops it). */
  inCheckpoint: boolean;
  call(manager: FileCheckpointManager): Promise<unknown>;
  /** What the error message must say. */
  message: RegExp;
}

const goodState = (stepNr: number): StateDict => ({ model: { w: Tensor.from(new Float32Array(8).fill(stepNr)) }, step_nr: stepNr });

/** Every kind of case this class tries: each is counted from zero, so a kind never tried shows. */
const KINDS = ["negative, non-integer or huge step", "wrong type", "bad n", "non-finite or non-number score", "reserved key name", "value that cannot be saved"];

function badStep(random: Random): number {
  return random.pick([-random.between(1, 1e6), random.between(0, 1000) + random.pick([0.5, 0.25, 1e-9]), Number.NaN, Infinity, -Infinity, 2 ** 53 + random.between(1, 1e6) * 2, -0.5]);
}

function badN(random: Random): number {
  return random.pick([0, -random.between(1, 100), random.between(1, 10) + 0.5, Number.NaN, Infinity]);
}

function wrongType(random: Random): unknown {
  return random.pick<unknown>([String(random.between(1, 99)), null, undefined, true, {}, [3], 3n, Symbol("step"), () => 3]);
}

const escape = (text: string): string => text.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");

/** A state with `value` buried at a random depth; returns the key path the error must name. */
function buried(random: Random, value: unknown): { state: StateDict; path: string } {
  const state = goodState(2);
  let holder: Record<string, unknown> = state as Record<string, unknown>;
  let path = "state";
  for (let depth = random.int(4); depth > 0; depth--) {
    const key = `k${random.int(100)}`;
    const next: Record<string, unknown> = {};
    holder[key] = next;
    holder = next;
    path += `.${key}`;
  }
  const key = `v${random.int(100)}`;
  holder[key] = value;
  return { state, path: `${path}.${key}` };
}

function unsaveable(random: Random): { value: unknown; index: number | undefined; says: string } {
  const choice = random.int(6);
  if (choice === 0) return { value: () => 1, index: undefined, says: "a function cannot be saved" };
  if (choice === 1) return { value: Symbol("s"), index: undefined, says: "a symbol cannot be saved" };
  if (choice === 2) {
    const length = random.between(2, 6);
    const hole = random.int(length);
    const sparse: unknown[] = [];
    sparse.length = length;
    for (let i = 0; i < length; i++) if (i !== hole) sparse[i] = i;
    return { value: sparse, index: hole, says: "undefined cannot be saved" };
  }
  if (choice === 3) {
    const inner = tuple(1, 2) as unknown as unknown[];
    inner[random.int(2)] = inner;
    return { value: inner, index: undefined, says: "tuple" };
  }
  if (choice === 4) return { value: new Date(0), index: undefined, says: "a Date cannot be saved" };
  return { value: new (class Optimizer {})(), index: undefined, says: "cannot be saved" };
}

function drawCall(random: Random): BadCall {
  const choice = random.int(9);
  if (choice === 0) {
    const step = badStep(random);
    const op = random.pick(["beginCheckpoint", "loadCheckpoint", "deleteCheckpoint", "loadMetadata", "hasCheckpoint"] as const);
    return { kind: "negative, non-integer or huge step", what: `${op}(${step})`, inCheckpoint: false, message: /step number must be a non-negative integer/, call: (m) => (m[op] as (s: number) => Promise<unknown>)(step) };
  }
  if (choice === 1) {
    const value = wrongType(random);
    const op = random.pick(["beginCheckpoint", "loadCheckpoint", "deleteCheckpoint"] as const);
    return { kind: "wrong type", what: `${op}(${typeof value})`, inCheckpoint: false, message: /step number must be a non-negative integer/, call: (m) => (m[op] as (s: unknown) => Promise<unknown>)(value) };
  }
  if (choice === 2) {
    const n = random.chance(0.8) ? badN(random) : wrongType(random);
    const op = random.pick(["keepLastNCheckpoints", "keepBestNCheckpoints"] as const);
    return { kind: "bad n", what: `${op}(${String(n)})`, inCheckpoint: false, message: /n must be a positive integer/, call: (m) => m[op](n as number) };
  }
  if (choice === 3) {
    const rule = random.pick(["keepLast", "keepBest", "keepEvery"] as const);
    const n = badN(random);
    return { kind: "bad n", what: `retain({ ${rule}: ${n} })`, inCheckpoint: false, message: new RegExp(`${rule} must be a positive integer`), call: (m) => m.retain({ [rule]: n }) };
  }
  if (choice === 4) {
    const score = random.chance(0.7) ? random.pick([Number.NaN, Infinity, -Infinity]) : wrongType(random);
    return { kind: "non-finite or non-number score", what: `saveScore(${String(score)})`, inCheckpoint: true, message: /score must be a finite number/, call: (m) => m.saveScore(score as number) };
  }
  if (choice === 5) {
    const flag = random.pick<unknown>(["yes", 1, 0, null, {}]);
    return { kind: "wrong type", what: `saveScore(1, { lowerBetter: ${String(flag)} })`, inCheckpoint: true, message: /lowerBetter must be true or false/, call: (m) => m.saveScore(1, { lowerBetter: flag as boolean }) };
  }
  if (choice === 6) {
    const given = random.pick<unknown>(["epoch", 5, {}, true]);
    return { kind: "wrong type", what: `saveState(state, { replicatedKeys: ${JSON.stringify(given)} })`, inCheckpoint: true, message: /replicatedKeys must be an array of key names/, call: (m) => m.saveState(goodState(2), { replicatedKeys: given as string[] }) };
  }
  if (choice === 7) {
    const state = random.pick<unknown>([42, "state", null, [goodState(2)], new Map([["model", 1]]), Tensor.from(new Float32Array(2))]);
    if (random.chance(0.5)) {
      return { kind: "reserved key name", what: "saveState({ model_key })", inCheckpoint: true, message: /"model_key" is reserved/, call: (m) => m.saveState({ ...goodState(2), model_key: "model" }) };
    }
    return { kind: "wrong type", what: `saveState(${state instanceof Map ? "a Map" : JSON.stringify(state) ?? typeof state})`, inCheckpoint: true, message: /saveState needs a plain object/, call: (m) => m.saveState(state as StateDict) };
  }
  const { value, index, says } = unsaveable(random);
  const { state, path } = buried(random, value);
  const where = index === undefined ? path : `${path}[${index}]`;
  const inMetadata = random.chance(0.3);
  const shownPath = inMetadata ? where.replace(/^state/, "metadata") : where;
  return {
    kind: "value that cannot be saved",
    what: `${inMetadata ? "saveMetadata" : "saveState"} with ${says} at ${shownPath}`,
    inCheckpoint: true,
    message: new RegExp(`${escape(shownPath)}.*${escape(says)}`),
    call: (m) => (inMetadata ? m.saveMetadata(state as StateValue) : m.saveState(state)),
  };
}

/** Why `error` is not the clear refusal `bad` asks for; undefined when it is. */
function refusalProblem(error: unknown, bad: BadCall): string | undefined {
  const clear = error instanceof InvalidArgumentError || (error instanceof CheckpointSaveError && error.cause instanceof InvalidArgumentError);
  if (!clear) return `expected an InvalidArgumentError (or a CheckpointSaveError caused by one), got ${String(error)}`;
  if (!bad.message.test((error as Error).message)) return `the message "${(error as Error).message}" does not match ${bad.message}`;
  return undefined;
}

export async function badCalls(options: ClassOptions): Promise<ClassResult> {
  const random = new Random(options.seed);
  const cases: Record<string, number> = Object.fromEntries(KINDS.map((kind) => [kind, 0]));
  const failures: ClassFailure[] = [];
  const manager = new FileCheckpointManager({ checkpointDir: options.workDir });
  await manager.beginCheckpoint(1);
  await manager.saveState(goodState(1));
  await manager.commitCheckpoint();
  const deadline = performance.now() + options.budgetMs;
  let nextStep = 10;
  // Quick: until every kind was tried at least 3 times (and 40 cases at least), at most 400.
  const more = (index: number): boolean =>
    options.quick ? index < 400 && (index < 40 || Object.values(cases).some((count) => count < 3)) : performance.now() < deadline;
  for (let index = 0; more(index); index++) {
    const bad = drawCall(random);
    const fail = (detail: string): void => void failures.push({ kind: "unclear refusal", detail: `case ${index} (seed ${options.seed}): ${bad.what}: ${detail}` });
    const before = await diskSnapshot(options.workDir);
    const listed = await manager.getStepNumbers();
    if (bad.inCheckpoint) await manager.beginCheckpoint(2);
    let outcome: unknown = "no error";
    await bad.call(manager).then(
      () => undefined,
      (error: unknown) => (outcome = error),
    );
    countCase(cases, bad.kind);
    const problem = refusalProblem(outcome, bad);
    if (problem !== undefined) fail(problem);
    // A refusal outside saveState/saveMetadata leaves the checkpoint open: drop it as a caller would.
    if (bad.inCheckpoint) await manager.abortCheckpoint().catch(() => undefined);
    const changed = snapshotDifference(before, await diskSnapshot(options.workDir));
    if (changed.length > 0) failures.push({ kind: "something written", detail: `case ${index} (seed ${options.seed}): ${bad.what}: ${changed.join(", ")}` });
    if (JSON.stringify(await manager.getStepNumbers()) !== JSON.stringify(listed)) failures.push({ kind: "something written", detail: `case ${index}: ${bad.what}: the listing changed` });
    // Every few cases the manager must still save (and the new step joins the "before" of the next).
    if (index % 10 === 9) {
      const step = nextStep++;
      try {
        await manager.beginCheckpoint(step);
        await manager.saveState(goodState(step));
        await manager.commitCheckpoint();
        const loaded = await manager.loadCheckpoint(step);
        if (!((loaded.model as StateDict).w as Tensor).data.every((x) => x === step)) throw new Error("wrong values");
        await manager.keepLastNCheckpoints(2);
      } catch (error) {
        failures.push({ kind: "unusable after a refusal", detail: `after case ${index}: ${(error as Error).message}` });
      }
    }
  }
  await manager.close();
  return { name: "Bad calls", cases, failures, figures: {} };
}
