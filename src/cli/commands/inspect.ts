import type { Command } from "commander";
import { joinPath } from "../../fs/paths.js";
import { DTYPES, InvalidArgumentError, ShardedTensor, Tensor, listCheckpointDirectory, readTensorFileOutline, tensorStats, type TensorFileOutline } from "../../index.js";
import { classify, filesIn, tensorFilesOf } from "../inputs.js";
import { looseText, treeKeyText } from "../key-path.js";
import { CliError, EXIT_OK, exitCodeOf, formatBytes, formatNumber, print, printJson, shapeText, table, valueText } from "../output.js";
import { MAX_SHOWN_DEPTH, keysOf, nodePath, walkBudget, walkState, type WalkEvent } from "../state-walk.js";

const FORMAT_NAMES = { pt: "PyTorch", safetensors: "safetensors" } as const;

export function inspectCommand(program: Command): void {
  program
    .command("inspect")
    .description("show the keys of a .pt or .safetensors file, a sharded model's index, or every file of a checkpoint step: dtype, shape and bytes of each tensor, and the other values")
    .argument("<path>", "a .pt or .safetensors file, a shard index (model.safetensors.index.json, pytorch_model.bin.index.json), or a checkpoint step directory (step_<N>)")
    .option(
      "--tensor <key>",
      "print statistics of one tensor (min, max, mean, std, NaN and Inf counts); its key path as inspect shows it, e.g. model[\"encoder.weight\"], or the keys joined with '.' when that is unambiguous; prefix FILE: to pick a file of a step",
    )
    .option("--json", "print JSON for scripts")
    .addHelpText(
      "after",
      `
Only the zip directory and the pickle (or the safetensors header) are read, not the tensors' bytes:
a file of any size lists at once, and damaged tensor data shows only with --tensor or verify. A
shard index shows every shard's tensors as one state dict, then what each shard holds.
Key paths: int keys and str keys without dots are joined with '.', other keys are written in
brackets as Python would (model["encoder.weight"], state["0"] for the str "0", [True]).
std is PyTorch's default (unbiased, n - 1).`,
    )
    .action(exitCodeOf(async (path: string, options: { tensor?: string; json?: boolean }) => {
      const files = await outlineTarget(path);
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

export interface NamedFile {
  /** The file's name within the step, or the path given. */
  name: string;
  outline: TensorFileOutline;
}

async function outlineTarget(path: string): Promise<NamedFile[]> {
  const target = await classify(path);
  const { fileSystem } = target;
  if (target.kind === "file") return [{ name: path, outline: await readTensorFileOutline(path, { fileSystem }) }];
  if (target.kind === "directory") {
    const listing = await listCheckpointDirectory(path, { fileSystem });
    if (listing.checkpoints.length > 0) {
      throw new CliError(`${path} is a checkpoint directory: inspect one of its steps, e.g. ${joinPath(path, listing.checkpoints.at(-1)!.name)}`);
    }
  }
  const dir = target.kind === "step" ? target.filesPath : path;
  const names = tensorFilesOf(await filesIn(fileSystem, dir));
  if (names.length === 0) throw new CliError(`${path} holds no .pt or .safetensors files`);
  const outlined: NamedFile[] = [];
  for (const name of names) outlined.push({ name, outline: await readTensorFileOutline(joinPath(dir, name), { fileSystem }) });
  return outlined;
}

/** Walks a file's state with the budget its size allows, naming it in errors. */
function walkFile(file: NamedFile, visit: (event: WalkEvent) => void): void {
  walkState(file.outline.state, { what: file.name, budget: walkBudget(file.outline.size) }, visit);
}

/** An expanded tensor (stride 0, overlapping strides) has more elements than its storage holds. */
function storedBytes(tensor: Tensor): number | undefined {
  return tensor.numel > tensor.storage.numel ? tensor.storage.numel * DTYPES[tensor.dtype].itemSize : undefined;
}

function tensorSummary(tensor: Tensor): { dtype: string; shape: number[]; bytes: number; expandedFrom?: number } {
  const stored = storedBytes(tensor);
  return { dtype: tensor.dtype, shape: [...tensor.shape], bytes: tensor.byteLength, ...(stored === undefined ? {} : { expandedFrom: stored }) };
}

function bytesText(tensor: Tensor): string {
  const stored = storedBytes(tensor);
  return stored === undefined ? formatBytes(tensor.byteLength) : `${formatBytes(tensor.byteLength)} (expanded from ${formatBytes(stored)})`;
}

/** What a place that is not a tensor shows: its value, or a note for a shared or too deep container. */
function placeText(event: WalkEvent, limit: number): string {
  switch (event.kind) {
    case "leaf":
      return valueText(event.value, event.container, event.slot, limit);
    case "container":
      return valueText(event.value, undefined, undefined, limit);
    case "shared":
      return `(the same ${event.type} as ${nodePath(event.first) || "the root"})`;
    case "deep":
      return `(a ${event.type} nested more than ${MAX_SHOWN_DEPTH} levels deep: not shown)`;
  }
}

/** A file's tensors (key, dtype, shape, bytes) and other values, as `inspect --json` and `ckpt serve` show them. */
export function describeFile(file: NamedFile): unknown {
  const tensors: unknown[] = [];
  const values: { key: string; value: string }[] = [];
  let tensorBytes = 0;
  walkFile(file, (event) => {
    if (event.kind === "leaf" && event.value instanceof Tensor) {
      tensors.push({ key: nodePath(event.node), ...tensorSummary(event.value) });
      tensorBytes += event.value.byteLength;
    } else if (event.kind !== "container" || event.size === 0) {
      values.push({ key: nodePath(event.node), value: placeText(event, 1000) });
    }
  });
  const { outline } = file;
  return {
    name: file.name,
    format: outline.format,
    size: outline.size,
    ...(outline.metadata.size > 0 ? { metadata: Object.fromEntries(outline.metadata) } : {}),
    ...(outline.shards === undefined ? {} : { shards: outline.shards.map(({ file: shard, format, size, tensors: names }) => ({ file: shard, format, size, tensors: names.length })) }),
    tensorCount: tensors.length,
    tensorBytes,
    tensors,
    values,
  };
}

/** The tree of keys, tensors in aligned columns. */
function printTree(file: NamedFile): void {
  const rows: string[][] = [];
  let tensorCount = 0;
  let tensorBytes = 0;
  walkFile(file, (event) => {
    const { node } = event;
    if (node.parent === undefined) {
      // The root is reported only when it is not a container.
      if (event.kind === "leaf" && event.value instanceof Tensor) {
        rows.push(["  (the file holds one tensor)", event.value.dtype, shapeText(event.value.shape), bytesText(event.value)]);
        tensorCount++;
        tensorBytes += event.value.byteLength;
      } else {
        rows.push([`  ${placeText(event, 80)}`]);
      }
      return;
    }
    const name = `${"  ".repeat(node.depth)}${treeKeyText(node.key)}`;
    if (event.kind === "leaf" && event.value instanceof Tensor) {
      tensorCount++;
      tensorBytes += event.value.byteLength;
      rows.push([name, event.value.dtype, shapeText(event.value.shape), bytesText(event.value)]);
    } else if (event.kind === "container" && event.size > 0) {
      rows.push([name]);
    } else {
      rows.push([`${name}: ${placeText(event, 80)}`]);
    }
  });
  const { outline } = file;
  print(`${file.name}  (${formatText(outline)}, ${formatBytes(outline.size)})`);
  // Only tensor rows have columns; align them without stretching the value rows.
  const aligned = table(rows.filter((row) => row.length > 1));
  let next = 0;
  for (const row of rows) print(row.length > 1 ? aligned[next++]! : row[0]!);
  if (outline.metadata.size > 0) print(`  metadata: ${[...outline.metadata].map(([k, v]) => `${k}=${v.length > 60 ? `${v.slice(0, 59)}…` : v}`).join(", ")}`);
  for (const shard of outline.shards ?? []) {
    print(`  shard ${shard.file}: ${shard.tensors.length} tensor${shard.tensors.length === 1 ? "" : "s"}, ${formatBytes(shard.size)}`);
  }
  print(`${tensorCount} tensor${tensorCount === 1 ? "" : "s"}, ${formatBytes(tensorBytes)} of tensor data`);
}

/** "PyTorch", "safetensors", or for a shard index "index of 3 safetensors shards". */
function formatText(outline: TensorFileOutline): string {
  if (outline.shards === undefined) return FORMAT_NAMES[outline.format];
  const formats = [...new Set(outline.shards.map((shard) => FORMAT_NAMES[shard.format]))].join(" and ");
  return `index of ${outline.shards.length} ${formats} shard${outline.shards.length === 1 ? "" : "s"}`;
}

interface Place {
  file: NamedFile;
  path: string;
  event: WalkEvent;
}

/**
 * The place `key` names: its exact path as inspect shows it, or else its keys joined with "."
 * (how users write state-dict keys), which must then name one place only.
 */
function findPlace(files: NamedFile[], key: string): { found: Place | undefined; tensorPaths: string[] } {
  const tensorPaths: string[] = [];
  for (const file of files) {
    const exact: Place[] = [];
    const loose: Place[] = [];
    walkFile(file, (event) => {
      if (event.node.parent === undefined) return;
      const path = nodePath(event.node);
      if (event.kind === "leaf" && event.value instanceof Tensor) tensorPaths.push(path);
      if (path === key) exact.push({ file, path, event });
      else if (looseText(keysOf(event.node)) === key) loose.push({ file, path, event });
    });
    if (exact.length > 0) return { found: exact[0], tensorPaths };
    if (loose.length > 1) throw new CliError(`${key} is ambiguous in ${file.name}: it may be ${loose.map((p) => p.path).join(" or ")}; give one of these`);
    if (loose.length === 1) return { found: loose[0], tensorPaths };
  }
  return { found: undefined, tensorPaths };
}

async function showTensor(path: string, files: NamedFile[], key: string, json: boolean): Promise<number> {
  const { file, key: foundPath, tensor, stats } = await tensorStatistics(path, files, key);
  if (json) {
    printJson({ file: file.name, key: foundPath, ...tensorSummary(tensor), stats });
    return EXIT_OK;
  }
  print(`${foundPath}  ${tensor.dtype}  ${shapeText(tensor.shape)}  ${bytesText(tensor)}  (${file.name})`);
  const rows = [
    ["numel", String(stats.numel)],
    ["min", formatNumber(stats.min)],
    ["max", formatNumber(stats.max)],
    ["mean", formatNumber(stats.mean)],
    ["std", formatNumber(stats.std)],
    ["nan", String(stats.nanCount)],
    ["inf", String(stats.infCount)],
  ];
  if (tensor.dtype === "complex64") rows.push(["note", "statistics of |z|"]);
  if (storedBytes(tensor) !== undefined) rows.push(["note", `over the ${tensor.numel} elements of a view of ${tensor.storage.numel} stored ones (stride 0 repeats counted, not re-read)`]);
  for (const line of table(rows)) print(line);
  return EXIT_OK;
}

/**
 * Statistics of the tensor `key` names in `files` (prefix `FILE:` to pick a file): only that
 * tensor's bytes are read. `ckpt inspect --tensor` and `ckpt serve`'s tensor route use it.
 */
export async function tensorStatistics(path: string, files: NamedFile[], key: string): Promise<{ file: NamedFile; key: string; tensor: Tensor; stats: ReturnType<typeof tensorStats>; summary: ReturnType<typeof tensorSummary> }> {
  let candidates = files;
  let inner = key;
  const colon = key.indexOf(":");
  if (colon > 0 && files.some((f) => f.name === key.slice(0, colon))) {
    candidates = files.filter((f) => f.name === key.slice(0, colon));
    inner = key.slice(colon + 1);
  }
  const { found, tensorPaths } = findPlace(candidates, inner);
  if (found === undefined) {
    const last = inner.split(/[.[\]"]+/).filter((part) => part !== "").at(-1) ?? inner;
    const close = tensorPaths.filter((p) => p.includes(last)).slice(0, 5);
    const hint = close.length > 0 ? `; similar keys: ${close.join(", ")}` : tensorPaths.length > 0 ? `; its tensors include ${tensorPaths.slice(0, 5).join(", ")}` : "; it holds no tensors";
    throw new CliError(`no tensor ${inner} in ${path}${hint}`);
  }
  const { file, event } = found;
  // A shard's statistics are those of the part this file holds.
  const tensor = event.kind === "leaf" ? (event.value instanceof ShardedTensor ? event.value.shard : event.value) : undefined;
  if (!(tensor instanceof Tensor)) throw new CliError(`${found.path} in ${file.name} is not a tensor: ${placeText(event, 80)}`);
  await file.outline.readTensorData(tensor);
  let stats;
  try {
    stats = tensorStats(tensor);
  } catch (error) {
    if (error instanceof InvalidArgumentError) throw new CliError(`${found.path} in ${file.name}: ${error.message}`);
    throw error;
  }
  return { file, key: found.path, tensor, stats, summary: tensorSummary(tensor) };
}
