import type { Command } from "commander";
import { readdir, stat } from "node:fs/promises";
import { join } from "node:path";
import { Tensor, listCheckpointDirectory, tensorStats, type StateValue } from "../../index.js";
import { classify, loadFile, tensorFilesOf, type LoadedFile } from "../inputs.js";
import {
  CliError,
  EXIT_OK,
  childrenOf,
  exitCodeOf,
  findKey,
  formatBytes,
  formatNumber,
  isScalarList,
  leaves,
  print,
  printJson,
  shapeText,
  table,
  valueText,
} from "../output.js";
import { progressBar } from "../progress.js";

const FORMAT_NAMES = { pt: "PyTorch", safetensors: "safetensors" } as const;

export function inspectCommand(program: Command): void {
  program
    .command("inspect")
    .description("show the keys of a .pt or .safetensors file, or of every file of a checkpoint step: dtype, shape and bytes of each tensor, and the other values")
    .argument("<path>", "a .pt or .safetensors file, or a checkpoint step directory (step_<N>)")
    .option("--tensor <key>", "print statistics of one tensor (min, max, mean, std, NaN and Inf counts); keys are joined with '.', e.g. model.encoder.weight; prefix FILE: to pick a file of a step")
    .option("--json", "print JSON for scripts")
    .action(exitCodeOf(async (path: string, options: { tensor?: string; json?: boolean }) => {
      const files = await loadTarget(path);
      if (options.tensor !== undefined) return showTensor(path, files, options.tensor, options.json === true);
      if (options.json === true) {
        printJson({ path, files: files.map(describeFile) });
        return EXIT_OK;
      }
      files.forEach((file, index) => {
        if (index > 0) print();
        printTree(file);
      });
      return EXIT_OK;
    }));
}

interface NamedFile extends LoadedFile {
  /** The file's name within the step, or the path given. */
  name: string;
  size: number;
}

async function loadTarget(path: string): Promise<NamedFile[]> {
  const target = await classify(path);
  if (target.kind === "file") return [await loadNamed(path, path, target.size)];
  if (target.kind === "directory") {
    const listing = await listCheckpointDirectory(path);
    if (listing.checkpoints.length > 0) {
      throw new CliError(`${path} is a checkpoint directory: inspect one of its steps, e.g. ${join(path, listing.checkpoints.at(-1)!.name)}`);
    }
  }
  const names = tensorFilesOf(await filesIn(path));
  if (names.length === 0) throw new CliError(`${path} holds no .pt or .safetensors files`);
  const loaded: NamedFile[] = [];
  for (const name of names) loaded.push(await loadNamed(join(path, name), name, undefined));
  return loaded;
}

async function filesIn(path: string): Promise<string[]> {
  return (await readdir(path, { withFileTypes: true })).filter((e) => e.isFile()).map((e) => e.name);
}

async function loadNamed(path: string, name: string, size: number | undefined): Promise<NamedFile> {
  const progress = progressBar(`reading ${name}`);
  try {
    const file = await loadFile(path, progress);
    return { ...file, name, size: size ?? (await stat(path)).size };
  } finally {
    progress.stop();
  }
}

function tensorSummary(tensor: Tensor): { dtype: string; shape: number[]; bytes: number } {
  return { dtype: tensor.dtype, shape: [...tensor.shape], bytes: tensor.byteLength };
}

function describeFile(file: NamedFile): unknown {
  const all = leaves(file.state);
  const tensors = all.filter((leaf) => leaf.value instanceof Tensor);
  return {
    name: file.name,
    format: file.format,
    size: file.size,
    ...(file.metadata.size > 0 ? { metadata: Object.fromEntries(file.metadata) } : {}),
    tensorCount: tensors.length,
    tensorBytes: tensors.reduce((sum, leaf) => sum + (leaf.value as Tensor).byteLength, 0),
    tensors: tensors.map((leaf) => ({ key: leaf.key, ...tensorSummary(leaf.value as Tensor) })),
    values: all.filter((leaf) => !(leaf.value instanceof Tensor)).map((leaf) => ({ key: leaf.key, value: valueText(leaf.value, leaf.container, leaf.slot, 1000) })),
  };
}

/** The tree of keys, tensors in aligned columns. */
function printTree(file: NamedFile): void {
  const rows: string[][] = [];
  let tensorCount = 0;
  let tensorBytes = 0;
  const walk = (value: StateValue, depth: number): void => {
    for (const [name, child, slot] of childrenOf(value) ?? []) {
      const indent = "  ".repeat(depth + 1);
      if (child instanceof Tensor) {
        tensorCount++;
        tensorBytes += child.byteLength;
        rows.push([`${indent}${name}`, child.dtype, shapeText(child.shape), formatBytes(child.byteLength)]);
      } else if (childrenOf(child) === undefined || isScalarList(child)) {
        rows.push([`${indent}${name}: ${valueText(child, value as object, slot)}`]);
      } else {
        const count = childrenOf(child)!.length;
        rows.push([`${indent}${name}${count === 0 ? ": {}" : ""}`]);
        walk(child, depth + 1);
      }
    }
  };
  print(`${file.name}  (${FORMAT_NAMES[file.format]}, ${formatBytes(file.size)})`);
  if (file.state instanceof Tensor) {
    rows.push(["  (the file holds one tensor)", file.state.dtype, shapeText(file.state.shape), formatBytes(file.state.byteLength)]);
    tensorCount = 1;
    tensorBytes = file.state.byteLength;
  } else if (childrenOf(file.state) === undefined) {
    rows.push([`  ${valueText(file.state)}`]);
  } else {
    walk(file.state, 0);
  }
  // Only tensor rows have columns; align them without stretching the value rows.
  const tensorRows = rows.filter((row) => row.length > 1);
  const aligned = table(tensorRows);
  let next = 0;
  for (const row of rows) print(row.length > 1 ? aligned[next++]! : row[0]!);
  if (file.metadata.size > 0) print(`  metadata: ${[...file.metadata].map(([k, v]) => `${k}=${v.length > 60 ? `${v.slice(0, 59)}…` : v}`).join(", ")}`);
  print(`${tensorCount} tensor${tensorCount === 1 ? "" : "s"}, ${formatBytes(tensorBytes)} of tensor data`);
}

function showTensor(path: string, files: NamedFile[], key: string, json: boolean): number {
  let candidates = files;
  let inner = key;
  const colon = key.indexOf(":");
  if (colon > 0 && files.some((f) => f.name === key.slice(0, colon))) {
    candidates = files.filter((f) => f.name === key.slice(0, colon));
    inner = key.slice(colon + 1);
  }
  for (const file of candidates) {
    const value = findKey(file.state, inner);
    if (value === undefined) continue;
    if (!(value instanceof Tensor)) throw new CliError(`${inner} in ${file.name} is not a tensor: ${valueText(value)}`);
    const stats = tensorStats(value);
    if (json) {
      printJson({ file: file.name, key: inner, ...tensorSummary(value), stats });
      return EXIT_OK;
    }
    print(`${inner}  ${value.dtype}  ${shapeText(value.shape)}  ${formatBytes(value.byteLength)}  (${file.name})`);
    const rows = [
      ["numel", String(stats.numel)],
      ["min", formatNumber(stats.min)],
      ["max", formatNumber(stats.max)],
      ["mean", formatNumber(stats.mean)],
      ["std", formatNumber(stats.std)],
      ["nan", String(stats.nanCount)],
      ["inf", String(stats.infCount)],
    ];
    if (value.dtype === "complex64") rows.push(["note", "statistics of |z|"]);
    for (const line of table(rows)) print(line);
    return EXIT_OK;
  }
  const known = files.flatMap((f) => leaves(f.state).filter((l) => l.value instanceof Tensor).map((l) => l.key));
  const close = known.filter((k) => k.includes(inner.split(".").at(-1)!)).slice(0, 5);
  const hint = close.length > 0 ? `; similar keys: ${close.join(", ")}` : known.length > 0 ? `; its tensors include ${known.slice(0, 5).join(", ")}` : "; it holds no tensors";
  throw new CliError(`no tensor ${inner} in ${path}${hint}`);
}
