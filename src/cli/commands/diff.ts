import type { Command } from "commander";
import { joinPath } from "../../fs/paths.js";
import { InvalidArgumentError, MAX_READS_PER_STORED_ELEMENT, ShardedTensor, Tensor, tensorDifference, type FileSystem, type StateValue, type TensorDifference } from "../../index.js";
import { classify, filesIn, loadCheckpointModel, loadFile, tensorFilesOf, unwrapModel, type Target } from "../inputs.js";
import { CliError, EXIT_NEGATIVE, EXIT_OK, exitCodeOf, formatNumber, print, printJson, shapeText, valueText } from "../output.js";
import { progressBar } from "../progress.js";
import { MAX_SHOWN_DEPTH, MIN_WALK_ENTRIES, PathIds, childrenOf, containerType, isScalarList, nodePath, walkBudget, walkState, type WalkEvent } from "../state-walk.js";
import { parseTolerance } from "./arguments.js";

/** One side of a diff: a file's state, or a step's tensor files by name. */
export type Side = { kind: "file"; file: DiffSide } | { kind: "step"; files: Map<string, DiffSide>; checkpointDir: string; stepNr: number };

export type Change =
  | { key: string; change: "only-in-a" | "only-in-b"; what: string }
  | { key: string; change: "dtype-or-shape"; a: string; b: string }
  | { key: string; change: "values"; maxAbsDiff: number; differing: number; numel: number; dtype: string; shape: number[] }
  | { key: string; change: "value"; a: string; b: string };

export function diffCommand(program: Command): void {
  program
    .command("diff")
    .description("compare two state files or checkpoints key by key: missing keys, dtype/shape changes, max absolute difference of values")
    .argument("<a>", "a .pt or .safetensors file, a shard index (*.index.json), or a checkpoint step directory")
    .argument("<b>", "the same kinds")
    .option("--atol <x>", "values that differ by at most x count as equal (default 0)", parseTolerance)
    .option("--json", "print JSON for scripts")
    .addHelpText(
      "after",
      `
Two files are compared whole (a checkpoint's model file as its model, a shard index as the state
dict of all its shards). Two steps are compared file
by file (keys prefixed "FILE:"). A file and a step: the file against the step's model. Places pair
up by their key paths, keys typed as in Python (the str "0" is not the int 0; "b.c" is not b -> c);
paths are shown as inspect shows them. Values are read as float64 (two int64 tensors exactly), so
.pt and .safetensors copies of a model compare equal.
Exit code: 0 when nothing differs, 1 when something does, 2 on bad input.`,
    )
    .action(exitCodeOf(async (a: string, b: string, options: { atol?: number; json?: boolean }) => {
      const tolerance = options.atol ?? 0;
      const { changes, same } = await compareSides(await loadSide(a), await loadSide(b), a, b, tolerance);
      const identical = changes.length === 0;
      if (options.json === true) {
        printJson({ a, b, atol: tolerance, identical, same, changes });
        return identical ? EXIT_OK : EXIT_NEGATIVE;
      }
      for (const c of changes) {
        switch (c.change) {
          case "only-in-a":
            print(`only in A: ${c.key}  ${c.what}`);
            break;
          case "only-in-b":
            print(`only in B: ${c.key}  ${c.what}`);
            break;
          case "dtype-or-shape":
            print(`changed:   ${c.key}  ${c.a} -> ${c.b}`);
            break;
          case "values":
            print(`differs:   ${c.key}  ${c.dtype} ${shapeText(c.shape)}  max |a-b| = ${formatNumber(c.maxAbsDiff)}  (${c.differing} of ${c.numel} elements)`);
            break;
          case "value":
            print(`differs:   ${c.key}  ${c.a} -> ${c.b}`);
            break;
        }
      }
      if (!identical) print();
      print(identical ? `identical: ${same} entries` : `${changes.length} difference${changes.length === 1 ? "" : "s"}, ${same} entries equal`);
      return identical ? EXIT_OK : EXIT_NEGATIVE;
    }));
}

/**
 * Compares two sides: two steps file by file (keys prefixed "FILE:"), anything else model against
 * model. `ckpt diff` and `ckpt serve`'s /api/diff both answer with this.
 */
export async function compareSides(sideA: Side, sideB: Side, a: string, b: string, tolerance: number): Promise<{ changes: Change[]; same: number }> {
  const changes: Change[] = [];
  let same = 0;
  const compare = (x: DiffSide, y: DiffSide, prefix: string): void => {
    const result = diffStates(x, y, prefix, tolerance);
    changes.push(...result.changes);
    same += result.same;
  };
  if (sideA.kind === "step" && sideB.kind === "step") {
    for (const name of new Set([...sideA.files.keys(), ...sideB.files.keys()])) {
      const x = sideA.files.get(name);
      const y = sideB.files.get(name);
      if (x === undefined) changes.push({ key: name, change: "only-in-b", what: "file" });
      else if (y === undefined) changes.push({ key: name, change: "only-in-a", what: "file" });
      else compare(x, y, `${name}:`);
    }
  } else {
    compare(await modelOf(sideA, a), await modelOf(sideB, b), "");
  }
  return { changes, same };
}

/** A tensor file, or a step directory's tensor files, loaded for comparing. */
export async function loadSide(path: string): Promise<Side> {
  const target: Target = await classify(path);
  if (target.kind === "file") return { kind: "file", file: await loadDiffSide(path, path, target.fileSystem) };
  if (target.kind === "directory") throw new CliError(`${path} is a directory but not a checkpoint step (step_<N>): give a step or a file`);
  const names = tensorFilesOf(await filesIn(target.fileSystem, target.filesPath));
  if (names.length === 0) throw new CliError(`${path} holds no .pt or .safetensors files`);
  const files = new Map<string, DiffSide>();
  for (const name of names) files.set(name, await loadDiffSide(joinPath(target.filesPath, name), name, target.fileSystem));
  return { kind: "step", files, checkpointDir: target.checkpointDir, stepNr: target.stepNr };
}

async function loadDiffSide(path: string, what: string, fileSystem: FileSystem): Promise<DiffSide> {
  const progress = progressBar(`reading ${what}`);
  try {
    const file = await loadFile(path, fileSystem, progress);
    return { state: unwrapModel(file.state), what, size: file.size };
  } finally {
    progress.stop();
  }
}

/** A file's state, or a step's model (checked against its manifest by the manager). */
async function modelOf(side: Side, path: string): Promise<DiffSide> {
  if (side.kind === "file") return side.file;
  try {
    const { model, size } = await loadCheckpointModel(side.checkpointDir, side.stepNr);
    return { state: model, what: path, size };
  } catch (error) {
    throw new CliError(`${path}: comparing a step with a file compares its model, but ${(error as Error).message}`);
  }
}

function tensorText(tensor: Tensor): string {
  return `${tensor.dtype} ${shapeText(tensor.shape)}`;
}

/** One side of a comparison: the places of a state by path id, in order. */
interface Places {
  what: string;
  events: WalkEvent[];
  byId: Map<number, WalkEvent>;
  /** Elements stored in the distinct storages of its tensors. */
  storedElements: number;
}

function places(state: StateValue, what: string, size: number, ids: PathIds): Places {
  const events: WalkEvent[] = [];
  const byId = new Map<number, WalkEvent>();
  const storages = new Set<Tensor["storage"]>();
  walkState(state, { what, budget: walkBudget(size), ids }, (event) => {
    events.push(event);
    byId.set(event.node.id, event);
    const tensor = event.kind === "leaf" ? tensorOf(event.value) : undefined;
    if (tensor !== undefined) storages.add(tensor.storage);
  });
  let storedElements = 0;
  for (const storage of storages) storedElements += storage.numel;
  return { what, events, byId, storedElements };
}

/** What a place holds, in a few words. */
function placeText(event: WalkEvent): string {
  switch (event.kind) {
    case "leaf":
      return event.value instanceof Tensor ? tensorText(event.value) : valueText(event.value, event.container, event.slot);
    case "container":
      return event.type === "dict" ? `dict of ${event.size} entr${event.size === 1 ? "y" : "ies"}` : `${event.type} of ${event.size} item${event.size === 1 ? "" : "s"}`;
    case "shared":
      return `(the same ${event.type} as ${nodePath(event.first) || "the root"})`;
    case "deep":
      return `(a ${event.type} nested more than ${MAX_SHOWN_DEPTH} levels deep)`;
  }
}

export interface DiffSide {
  state: StateValue;
  /** Names the file in errors. */
  what: string;
  /** The file's size, which bounds the walk over its state. */
  size: number;
}

/**
 * Compares two states place by place: places pair up by their key paths (typed keys, so the str
 * key "0" and the int key 0, or "b.c" and "b" → "c", are different places), never by their text.
 */
export function diffStates(sideA: DiffSide, sideB: DiffSide, prefix: string, tolerance: number): { changes: Change[]; same: number } {
  const ids = new PathIds();
  const left = places(sideA.state, sideA.what, sideA.size, ids);
  const right = places(sideB.state, sideB.what, sideB.size, ids);
  // Work on tensor elements is bounded by what the two files store (see MAX_READS_PER_STORED_ELEMENT).
  const elementBudget = MAX_READS_PER_STORED_ELEMENT * (left.storedElements + right.storedElements) + MIN_ELEMENT_READS;
  let elementsRead = 0;
  const changes: Change[] = [];
  let same = 0;
  // Below a place reported as missing or changed in kind, every place would repeat the news.
  const quietA = new Set<number>();
  const quietB = new Set<number>();
  const quieted = (event: WalkEvent, quiet: Set<number>): boolean => {
    const parent = event.node.parent;
    if (parent === undefined || !quiet.has(parent.id)) return false;
    quiet.add(event.node.id);
    return true;
  };
  for (const x of left.events) {
    if (quieted(x, quietA)) continue;
    const name = `${prefix}${nodePath(x.node)}`;
    const y = right.byId.get(x.node.id);
    if (y === undefined) {
      changes.push({ key: name, change: "only-in-a", what: placeText(x) });
      quietA.add(x.node.id);
      continue;
    }
    const tx = x.kind === "leaf" ? tensorOf(x.value) : undefined;
    const ty = y.kind === "leaf" ? tensorOf(y.value) : undefined;
    if (tx !== undefined && ty !== undefined) {
      // A shard is compared as its tensor once its place in the full tensor is the same.
      const [layoutA, layoutB] = [placeText(x), placeText(y)];
      if (layoutA !== layoutB || tx.dtype !== ty.dtype || tx.shape.length !== ty.shape.length || tx.shape.some((size, d) => size !== ty.shape[d])) {
        changes.push({ key: name, change: "dtype-or-shape", a: layoutA, b: layoutB });
        continue;
      }
      elementsRead += Math.min(tx.numel, MAX_READS_PER_STORED_ELEMENT * (tx.storage.numel + ty.storage.numel));
      if (elementsRead > elementBudget) {
        throw new CliError(`${name}: the tensors of ${left.what} and ${right.what} view their stored elements more than ${MAX_READS_PER_STORED_ELEMENT} times over; ckpt stops comparing here`);
      }
      const { maxAbsDiff, differing } = compareTensors(name, tx, ty, tolerance);
      if (differing > 0) changes.push({ key: name, change: "values", maxAbsDiff, differing, numel: tx.numel, dtype: tx.dtype, shape: [...tx.shape] });
      else same++;
      continue;
    }
    if (samePlace(x, y, tolerance)) {
      if (x.kind !== "container") same++;
      continue;
    }
    changes.push({ key: name, change: "value", a: placeText(x), b: placeText(y) });
    if (x.kind === "container" || y.kind === "container") {
      quietA.add(x.node.id);
      quietB.add(y.node.id);
    }
  }
  for (const y of right.events) {
    if (quieted(y, quietB)) continue;
    if (!left.byId.has(y.node.id)) {
      changes.push({ key: `${prefix}${nodePath(y.node)}`, change: "only-in-b", what: placeText(y) });
      quietB.add(y.node.id);
    }
  }
  return { changes, same };
}

/** The tensor a leaf holds: a tensor, or a shard's tensor; undefined for other values. */
function tensorOf(value: StateValue): Tensor | undefined {
  return value instanceof Tensor ? value : value instanceof ShardedTensor ? value.shard : undefined;
}

/** Element reads every comparison may make, however little the files store. */
const MIN_ELEMENT_READS = 1 << 24;

function compareTensors(name: string, x: Tensor, y: Tensor, tolerance: number): TensorDifference {
  try {
    return tensorDifference(x, y, tolerance);
  } catch (error) {
    if (error instanceof InvalidArgumentError) throw new CliError(`${name}: ${error.message}`);
    throw error;
  }
}

/**
 * Two places that are not both tensors: containers of one type (their contents are compared
 * place by place), the same shared container, equal values, or equal subtrees too deep to show.
 */
function samePlace(x: WalkEvent, y: WalkEvent, tolerance: number): boolean {
  if (x.kind !== y.kind) return false;
  if (x.kind === "container" && y.kind === "container") return x.type === y.type;
  if (x.kind === "shared" && y.kind === "shared") return x.type === y.type && x.first.id === y.first.id;
  if (x.kind === "deep" && y.kind === "deep") return sameTree(x.value, y.value, tolerance);
  if (x.kind === "leaf" && y.kind === "leaf") return sameValue(x.value, x.container, x.slot, y.value, y.container, y.slot);
  return false;
}

/** Equal Python values: compared by their full rendering (which tells 1 from 1.0), bytes by content. */
function sameValue(x: StateValue, xContainer: object | undefined, xSlot: unknown, y: StateValue, yContainer: object | undefined, ySlot: unknown): boolean {
  if (x instanceof Tensor || y instanceof Tensor) return false;
  if (x instanceof Uint8Array && y instanceof Uint8Array) return Buffer.from(x.buffer, x.byteOffset, x.byteLength).equals(y);
  const whole = Number.MAX_SAFE_INTEGER;
  return valueText(x, xContainer, xSlot, whole) === valueText(y, yContainer, ySlot, whole);
}

/** Pairs of subtrees compared below MAX_SHOWN_DEPTH before giving up: as many as a walk may visit. */
const MAX_DEEP_PAIRS = 10 * MIN_WALK_ENTRIES;

/**
 * Compares two subtrees that nest too deep to list, without recursion: each pair of containers
 * once (shared ones are not compared again), with a bounded number of pairs.
 */
function sameTree(a: StateValue, b: StateValue, tolerance: number): boolean {
  const compared = new Map<object, Set<object>>();
  const pending: [StateValue, object | undefined, unknown, StateValue, object | undefined, unknown][] = [[a, undefined, undefined, b, undefined, undefined]];
  let pairs = 0;
  while (pending.length > 0) {
    const [x, xContainer, xSlot, y, yContainer, ySlot] = pending.pop()!;
    if (++pairs > MAX_DEEP_PAIRS) throw new CliError(`comparing subtrees nested more than ${MAX_SHOWN_DEPTH} levels deep took more than ${MAX_DEEP_PAIRS} steps; ckpt stops here`);
    if (x instanceof Tensor || y instanceof Tensor) {
      if (!(x instanceof Tensor && y instanceof Tensor) || x.dtype !== y.dtype || x.shape.join() !== y.shape.join()) return false;
      if (tensorDifference(x, y, tolerance).differing > 0) return false;
      continue;
    }
    const xs = isScalarList(x) ? undefined : childrenOf(x);
    const ys = isScalarList(y) ? undefined : childrenOf(y);
    if (xs === undefined || ys === undefined) {
      if (xs !== ys || !sameValue(x, xContainer, xSlot, y, yContainer, ySlot)) return false;
      continue;
    }
    if (containerType(x) !== containerType(y) || xs.length !== ys.length) return false;
    const seen = compared.get(x as object) ?? new Set<object>();
    if (seen.has(y as object)) continue;
    seen.add(y as object);
    compared.set(x as object, seen);
    for (let i = 0; i < xs.length; i++) {
      const [kx, vx] = xs[i]!;
      const [ky, vy] = ys[i]!;
      if (kx !== ky) return false;
      pending.push([vx, x as object, kx, vy, y as object, ky]);
    }
  }
  return true;
}
