import type { Command } from "commander";
import { readdir } from "node:fs/promises";
import { join } from "node:path";
import { Tensor, tensorDifference, type StateValue } from "../../index.js";
import { classify, loadCheckpointModel, loadFile, tensorFilesOf, unwrapModel, type Target } from "../inputs.js";
import { CliError, EXIT_NEGATIVE, EXIT_OK, exitCodeOf, formatNumber, leaves, print, printJson, shapeText, valueText, type Leaf } from "../output.js";
import { progressBar } from "../progress.js";
import { parseTolerance } from "./arguments.js";

/** One side of a diff: a file's state, or a step's tensor files by name. */
type Side = { kind: "file"; state: StateValue } | { kind: "step"; files: Map<string, StateValue>; checkpointDir: string; stepNr: number };

type Change =
  | { key: string; change: "only-in-a" | "only-in-b"; what: string }
  | { key: string; change: "dtype-or-shape"; a: string; b: string }
  | { key: string; change: "values"; maxAbsDiff: number; differing: number; numel: number; dtype: string; shape: number[] }
  | { key: string; change: "value"; a: string; b: string };

export function diffCommand(program: Command): void {
  program
    .command("diff")
    .description("compare two state files or checkpoints key by key: missing keys, dtype/shape changes, max absolute difference of values")
    .argument("<a>", "a .pt or .safetensors file, or a checkpoint step directory")
    .argument("<b>", "the same kinds")
    .option("--atol <x>", "values that differ by at most x count as equal (default 0)", parseTolerance)
    .option("--json", "print JSON for scripts")
    .addHelpText(
      "after",
      `
Two files are compared whole (a checkpoint's model file as its model). Two steps are compared file
by file (keys prefixed "FILE:"). A file and a step: the file against the step's model. Values are
read as float64 (int64 beyond 2^53 rounds), so .pt and .safetensors copies of a model compare equal.
Exit code: 0 when nothing differs, 1 when something does, 2 on bad input.`,
    )
    .action(exitCodeOf(async (a: string, b: string, options: { atol?: number; json?: boolean }) => {
      const tolerance = options.atol ?? 0;
      const [sideA, sideB] = [await loadSide(a), await loadSide(b)];
      const changes: Change[] = [];
      let same = 0;
      const compare = (x: StateValue, y: StateValue, prefix: string): void => {
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

async function loadSide(path: string): Promise<Side> {
  const target: Target = await classify(path);
  if (target.kind === "file") {
    const progress = progressBar(`reading ${path}`);
    try {
      return { kind: "file", state: unwrapModel((await loadFile(path, progress)).state) };
    } finally {
      progress.stop();
    }
  }
  if (target.kind === "directory") throw new CliError(`${path} is a directory but not a checkpoint step (step_<N>): give a step or a file`);
  const names = tensorFilesOf((await readdir(path, { withFileTypes: true })).filter((e) => e.isFile()).map((e) => e.name));
  if (names.length === 0) throw new CliError(`${path} holds no .pt or .safetensors files`);
  const files = new Map<string, StateValue>();
  for (const name of names) {
    const progress = progressBar(`reading ${name}`);
    try {
      files.set(name, unwrapModel((await loadFile(join(path, name), progress)).state));
    } finally {
      progress.stop();
    }
  }
  return { kind: "step", files, checkpointDir: target.checkpointDir, stepNr: target.stepNr };
}

/** A file's state, or a step's model (checked against its manifest by the manager). */
async function modelOf(side: Side, path: string): Promise<StateValue> {
  if (side.kind === "file") return side.state;
  try {
    return (await loadCheckpointModel(side.checkpointDir, side.stepNr)).model;
  } catch (error) {
    throw new CliError(`${path}: comparing a step with a file compares its model, but ${(error as Error).message}`);
  }
}

function tensorText(tensor: Tensor): string {
  return `${tensor.dtype} ${shapeText(tensor.shape)}`;
}

function leafText(leaf: Leaf): string {
  return leaf.value instanceof Tensor ? tensorText(leaf.value) : valueText(leaf.value, leaf.container, leaf.slot);
}

export function diffStates(a: StateValue, b: StateValue, prefix: string, tolerance: number): { changes: Change[]; same: number } {
  const index = (state: StateValue): Map<string, Leaf> => {
    const map = new Map<string, Leaf>();
    for (const leaf of leaves(state)) if (!map.has(leaf.key)) map.set(leaf.key, leaf);
    return map;
  };
  const left = index(a);
  const right = index(b);
  const changes: Change[] = [];
  let same = 0;
  for (const [key, x] of left) {
    const name = `${prefix}${key}`;
    const y = right.get(key);
    if (y === undefined) {
      changes.push({ key: name, change: "only-in-a", what: leafText(x) });
      continue;
    }
    if (x.value instanceof Tensor && y.value instanceof Tensor) {
      const [tx, ty] = [x.value, y.value];
      if (tx.dtype !== ty.dtype || tx.shape.length !== ty.shape.length || tx.shape.some((s, d) => s !== ty.shape[d])) {
        changes.push({ key: name, change: "dtype-or-shape", a: tensorText(tx), b: tensorText(ty) });
        continue;
      }
      const { maxAbsDiff, differing } = tensorDifference(tx, ty, tolerance);
      if (differing > 0) changes.push({ key: name, change: "values", maxAbsDiff, differing, numel: tx.numel, dtype: tx.dtype, shape: [...tx.shape] });
      else same++;
      continue;
    }
    if (x.value instanceof Tensor || y.value instanceof Tensor || !sameValue(x, y)) changes.push({ key: name, change: "value", a: leafText(x), b: leafText(y) });
    else same++;
  }
  for (const [key, y] of right) if (!left.has(key)) changes.push({ key: `${prefix}${key}`, change: "only-in-b", what: leafText(y) });
  return { changes, same };
}

/** Equal Python values: compared by their full rendering (which tells 1 from 1.0), bytes by content. */
function sameValue(x: Leaf, y: Leaf): boolean {
  if (x.value instanceof Uint8Array && y.value instanceof Uint8Array) return Buffer.from(x.value).equals(y.value);
  const whole = Number.MAX_SAFE_INTEGER;
  return valueText(x.value, x.container, x.slot, whole) === valueText(y.value, y.container, y.slot, whole);
}
