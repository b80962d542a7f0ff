// `npm run bench`: our save and load against the limits of this machine and against PyTorch, on the
// same bytes, in one run. See docs/benchmark.md for what each row measures.
//
//   npm run bench [-- --runs N] [--quick] [--no-python] [--write-docs] [--label TEXT]
import { spawnSync } from "node:child_process";
import { mkdirSync, mkdtempSync, rmSync, statfsSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { describeMachine, findTorch, finishLoad, machineLines, type Machine } from "./machine.js";
import { renderTable, tableRows, type Sample, type ScenarioResult, type Series, type Variant } from "./report.js";
import { formatBytes, scenarios, stateBytes, type ScenarioSpec } from "./scenarios.js";
import { hasBackgroundSave } from "./worker.js";

const ROOT = join(import.meta.dirname, "..");
const WORKER = join(import.meta.dirname, "worker.ts");
const PEER = join(import.meta.dirname, "torch_peer.py");
const DOCS = join(ROOT, "docs", "benchmark.md");
/** A run that takes longer than this is stuck, not slow. */
const WORKER_TIMEOUT_MS = 10 * 60_000;

const USAGE = `usage: npm run bench -- [options]
  --runs N       measurements of each operation, interleaved (default 5; 3 with --quick)
  --quick        small states (48 MiB and 2,000 tensors): a smoke run of well under a minute
  --no-python    skip the PyTorch peer
  --write-docs   also write the results to docs/benchmark.md
  --label TEXT   a line saying what the run is (e.g. "after streaming writes"), shown in the docs`;

const VARIANTS: Variant[] = [
  { key: "save-ours", label: "save: TorchTensorDumper.dump (new file, fsync)", runner: "node", op: "save-ours", kind: "save", role: "ours" },
  { key: "save-manager", label: "save: FileCheckpointManager begin/saveState/commit", runner: "node", op: "save-manager", kind: "save", role: "ours" },
  { key: "load-ours", label: "load: TorchTensorLoader.load", runner: "node", op: "load-ours", kind: "load", role: "ours" },
  { key: "load-manager", label: "load: FileCheckpointManager.loadCheckpoint", runner: "node", op: "load-manager", kind: "load", role: "ours" },
  { key: "write-plain", label: "limit: plain write of the tensors' bytes + fsync", runner: "node", op: "write-plain", kind: "save", role: "limit" },
  { key: "read-plain", label: "limit: plain read of that file into fresh memory", runner: "node", op: "read-plain", kind: "load", role: "limit" },
  { key: "copy-memory", label: "limit: memory copy of the state (reused buffers)", runner: "node", op: "copy-memory", kind: "copy", role: "limit" },
  { key: "torch-save", label: "peer: torch.save + fsync", runner: "python", op: "save", kind: "save", role: "peer" },
  { key: "torch-load", label: "peer: torch.load", runner: "python", op: "load", kind: "load", role: "peer" },
];
const ASYNC_VARIANT: Variant = {
  key: "save-async",
  label: "blocked by a background save: begin/saveState/commit",
  runner: "node",
  op: "save-async",
  kind: "blocking",
  role: "ours",
};

const NO_GANG = "not measured: no multi-process gang yet";
const NO_ASYNC = "not measured: no asynchronous save yet";

interface Options {
  runs: number;
  quick: boolean;
  python: boolean;
  writeDocs: boolean;
  label: string | undefined;
}

function parseOptions(argv: string[]): Options {
  const { values } = parseArgs({
    args: argv,
    options: {
      runs: { type: "string" },
      quick: { type: "boolean", default: false },
      "no-python": { type: "boolean", default: false },
      "write-docs": { type: "boolean", default: false },
      label: { type: "string" },
      help: { type: "boolean", default: false },
    },
  });
  if (values.help) {
    console.log(USAGE);
    process.exit(0);
  }
  const runs = values.runs === undefined ? (values.quick ? 3 : 5) : Number(values.runs);
  if (!Number.isSafeInteger(runs) || runs < 1 || runs > 100) throw new Error(`--runs needs a whole number from 1 to 100, got ${values.runs}\n${USAGE}`);
  return { runs, quick: values.quick, python: !values["no-python"], writeDocs: values["write-docs"], label: values.label };
}

function progress(message: string): void {
  process.stderr.write(`${message}\n`);
}

/** Runs one worker (or the Python peer) to the end and returns its last line of JSON. */
function runChild(command: string, args: string[]): { ok: true; value: Sample } | { ok: false; error: string } {
  const result = spawnSync(command, args, { cwd: ROOT, encoding: "utf8", timeout: WORKER_TIMEOUT_MS, maxBuffer: 16 << 20 });
  const lastLine = result.stdout?.trim().split("\n").at(-1) ?? "";
  if (result.status !== 0 || lastLine === "") {
    const why = result.error?.message ?? (result.signal !== null ? `killed by ${result.signal}` : `exit code ${result.status}`);
    const stderr = (result.stderr ?? "").trim().split("\n").filter((l) => /error|Error/.test(l)).at(0) ?? (result.stderr ?? "").trim().split("\n").at(-1) ?? "";
    return { ok: false, error: `${why}${stderr === "" ? "" : `: ${stderr.trim().slice(0, 200)}`}` };
  }
  return { ok: true, value: JSON.parse(lastLine) as Sample };
}

function nodeArgs(op: string, specPath: string, dir: string): string[] {
  return ["--expose-gc", "--import", "tsx", WORKER, op, specPath, dir];
}

function runVariant(variant: Variant, specPath: string, dir: string, python: string | undefined) {
  return variant.runner === "node" ? runChild(process.execPath, nodeArgs(variant.op, specPath, dir)) : runChild(python!, [PEER, variant.op, specPath, dir]);
}

/** The n-th rotation of `items`, so each variant takes each place in the order across runs. */
function rotate<T>(items: T[], n: number): T[] {
  const k = n % items.length;
  return [...items.slice(k), ...items.slice(0, k)];
}

interface Prepared {
  spec: ScenarioSpec;
  specPath: string;
  dir: string;
  variants: Variant[];
  series: Map<string, Series>;
}

function prepare(spec: ScenarioSpec, root: string, variants: Variant[], python: string | undefined): Prepared {
  const dir = join(root, spec.id);
  mkdirSync(dir);
  const specPath = join(dir, "spec.json");
  writeFileSync(specPath, JSON.stringify(spec));
  const series = new Map<string, Series>(variants.map((v) => [v.key, { variant: v, samples: [] }]));
  progress(`(${spec.id}) ${spec.title}: writing the files the loads read`);
  const prepared = runChild(process.execPath, nodeArgs("prepare", specPath, dir));
  if (!prepared.ok) {
    for (const s of series.values()) if (s.variant.runner === "node" && s.variant.kind === "load") s.error = `prepare failed: ${prepared.error}`;
  }
  if (python !== undefined) {
    const torchPrepared = runChild(python, [PEER, "prepare", specPath, dir]);
    if (!torchPrepared.ok) series.get("torch-load")!.error = `prepare failed: ${torchPrepared.error}`;
  }
  return { spec, specPath, dir, variants, series };
}

function checkFreeSpace(dir: string, specs: ScenarioSpec[]): void {
  // Prepared files (ours, the checkpoint, plain, torch) of every scenario, plus one being written.
  const needed = specs.reduce((sum, s) => sum + 4.2 * stateBytes(s), 0) + 1.2 * Math.max(...specs.map(stateBytes));
  const stats = statfsSync(dir);
  const free = stats.bavail * stats.bsize;
  if (free < needed) throw new Error(`the benchmark needs about ${formatBytes(needed)} free in ${dir}, which has ${formatBytes(free)}`);
}

function quoteArg(arg: string): string {
  return /^[\w@%+=:,./-]+$/.test(arg) ? arg : `'${arg.replaceAll("'", "'\\''")}'`;
}

function notes(options: Options, specs: ScenarioSpec[], pythonNote: string | undefined): string[] {
  const lines = [
    `Each operation runs ${options.runs} times in a fresh process, interleaved (the order rotates each round), and the median is shown; Range is the fastest and slowest run.`,
    "GB/s is 10⁹ bytes of tensor data per second. × limit and × torch are speed ratios, median against median: above 1 is faster than the limit (plain write for saves, plain read for loads, memory copy for blocking time) or than PyTorch.",
    "Peak memory is the process's peak resident memory during the operation above its resident memory just before (the peak mark is reset there); loads count the memory of what they return, the memory copy its destination buffers.",
    "Saves write a new file and fsync it, so they reach the disk. Loads read files written moments before: they come from the page cache, not the disk (dropping the cache needs root), so load times measure parsing, checksums and memory, and the plain read is a memory-bandwidth limit.",
    "Each process warms up on a tiny state and builds its state with every buffer already touched, so saves do not pay first touch of fresh memory; loads do pay for allocating what they return, as the plain read into fresh memory does.",
    `The peer builds the same structure (model + Adam's state_dict) with tensors of the same sizes in Python and times torch.save (given the path, then fsync) and torch.load with time.perf_counter.${pythonNote === undefined ? "" : ` ${pythonNote}`}`,
  ];
  if (options.quick) lines.unshift(`QUICK RUN: small states (${specs.map((s) => formatBytes(stateBytes(s))).join(", ")}), for checking the harness, not for numbers.`);
  return lines;
}

function renderDocs(options: Options, machine: Machine, command: string, table: string, noteLines: string[], legend: string[]): string {
  return [
    "# Benchmark",
    "",
    options.label === undefined ? "" : `**${options.label}.**\n`,
    `Produced by \`${command}\` on ${machine.date}; regenerate with the same command. These machines are noisy: compare rows of one run, not against numbers from another run or machine.`,
    "",
    "## Machine",
    "",
    ...machineLines(machine).map((l) => `    ${l}`),
    "",
    "## Results",
    "",
    ...legend.map((l) => `- ${l}`),
    "",
    table,
    "",
    "## How it is measured",
    "",
    ...noteLines.map((l) => `- ${l}`),
    "- The harness is `bench/run.ts`; each measurement is `bench/worker.ts` (Node) or `bench/torch_peer.py` (PyTorch) in its own process.",
    "",
    "## Targets (issue 6)",
    "",
    "- (a) save ≥ 0.9× the plain write and load ≥ 0.9× the plain read, and never slower than torch.",
    "- (b) ≥ 0.5× the plain write, and ≥ 3× faster than torch.save / torch.load.",
    "- Peak memory while saving or loading at most the state's size plus 128 MiB.",
    "- (d) blocking time of an asynchronous save ≤ 1.5× a memory copy of the state (× limit ≥ 0.67).",
    "",
  ].join("\n");
}

function main(): void {
  const started = performance.now();
  const options = parseOptions(process.argv.slice(2));
  const specs = scenarios(options.quick);
  const torch = options.python ? findTorch() : null;
  const pythonNote = !options.python ? "skipped: --no-python" : torch === null ? "skipped: PyTorch not found (set CKPT_PYTHON or apt-get install python3-torch)" : undefined;
  const asyncSave = hasBackgroundSave();

  const tmpRoot = tmpdir();
  checkFreeSpace(tmpRoot, specs);
  const machine = describeMachine(ROOT, tmpRoot, torch, pythonNote ?? "");
  const root = mkdtempSync(join(tmpRoot, "ckpt-bench-"));
  const cleanUp = (): void => rmSync(root, { recursive: true, force: true });
  for (const signal of ["SIGINT", "SIGTERM"] as const) {
    process.on(signal, () => {
      cleanUp();
      process.exit(130);
    });
  }

  let results: ScenarioResult[];
  try {
    const prepared = specs.map((spec) => {
      let variants = VARIANTS.filter((v) => v.runner === "node" || torch !== null);
      if (spec.id === "a" && asyncSave) variants = [...variants, ASYNC_VARIANT];
      return prepare(spec, root, variants, torch?.python);
    });
    for (let run = 0; run < options.runs; run++) {
      for (const p of prepared) {
        for (const variant of rotate(p.variants, run)) {
          const series = p.series.get(variant.key)!;
          if (series.error !== undefined) continue;
          const outcome = runVariant(variant, p.specPath, p.dir, torch?.python);
          if (outcome.ok) series.samples.push(outcome.value);
          else series.error = outcome.error;
          const shown = outcome.ok ? `${outcome.value.seconds.toFixed(3)} s` : `FAILED ${outcome.error}`;
          progress(`run ${run + 1}/${options.runs} (${p.spec.id}) ${variant.key}: ${shown}`);
        }
      }
    }
    results = prepared.map((p) => ({ id: p.spec.id, title: p.spec.title, bytes: stateBytes(p.spec), series: [...p.series.values()].filter((s) => s.variant.kind !== "blocking") }));
    const a = prepared.find((p) => p.spec.id === "a")!;
    results.push({ id: "c", title: "save, 4 ranks × 256 MiB at once, one process each", bytes: 0, series: [], notMeasured: NO_GANG });
    const blocking = a.series.get(ASYNC_VARIANT.key);
    results.push(
      blocking === undefined
        ? { id: "d", title: `asynchronous save of state (a): time training is blocked`, bytes: 0, series: [], notMeasured: NO_ASYNC }
        : { id: "d", title: "asynchronous save of state (a)", bytes: stateBytes(a.spec), series: [blocking, a.series.get("copy-memory")!] },
    );
  } finally {
    cleanUp();
  }

  finishLoad(machine);
  const legend = [
    ...specs.map((s) => `(${s.id}) ${s.title}`),
    `(c) ${results.find((r) => r.id === "c")!.title}`,
    `(d) asynchronous save of state (a): how long training is blocked`,
  ];
  const table = renderTable(tableRows(results));
  const noteLines = notes(options, specs, pythonNote);
  console.log(["", ...machineLines(machine), "", ...legend, "", table, "", ...noteLines.map((l) => `* ${l}`), ""].join("\n"));

  if (options.writeDocs) {
    const args = process.argv.slice(2);
    const command = args.length === 0 ? "npm run bench" : ["npm run bench --", ...args.map(quoteArg)].join(" ");
    writeFileSync(DOCS, renderDocs(options, machine, command, table, noteLines, legend));
    progress(`wrote ${DOCS}`);
  }
  progress(`benchmark finished in ${((performance.now() - started) / 1000).toFixed(0)} s`);
  const failed = results.some((r) => r.series.some((s) => s.error !== undefined));
  if (failed) {
    progress("some measurements failed: see the table");
    process.exitCode = 1;
  }
}

main();
