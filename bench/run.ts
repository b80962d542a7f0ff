// `npm run bench`: our save and load against the limits of this machine and against PyTorch, on the
// same bytes, in one run. See docs/benchmark.md for what each row measures.
//
//   npm run bench [-- --runs N] [--quick] [--no-python] [--write-docs] [--label TEXT]
import { spawnSync } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statfsSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { STEADY_SUFFIX } from "./worker-protocol.js";
import { measureDistributed } from "./distributed.js";
import { measureS3 } from "./s3.js";
import { describeMachine, findTorch, finishLoad, machineLines, type Machine } from "./machine.js";
import {
  DIAGNOSTIC_HEADER,
  RUNS_HEADER,
  STEADY_WRITE_LIMIT,
  TARGET_HEADER,
  evaluateTargets,
  renderTable,
  runRows,
  tableRows,
  targetRows,
  type Sample,
  type ScenarioResult,
  type Series,
  type TargetResult,
  type Variant,
} from "./report.js";
import { formatBytes, scenarios, stateBytes, tensorCount, type ScenarioSpec } from "./scenarios.js";
import { SCALING_HEADER, flatness, measureScaling, scalingRows, scalingSpaceNeeded, scalingSvg, type ScalingPoint } from "./scaling.js";

const ROOT = join(import.meta.dirname, "..");
const WORKER = join(import.meta.dirname, "worker.ts");
const PEER = join(import.meta.dirname, "torch_peer.py");
const DOCS = join(ROOT, "docs", "benchmark.md");
const CHART = join(ROOT, "docs", "benchmark-scaling.svg");
/** A run that takes longer than this is stuck, not slow. */
const WORKER_TIMEOUT_MS = 10 * 60_000;

const USAGE = `usage: npm run bench -- [options]
  --runs N       measurements of each operation, interleaved (default 3; the scaling sweep: 1)
  --quick        small states (48 MiB and 2,000 tensors), the Node operations of a scenario in one
                 process per round: a smoke run of the harness, not numbers
  --no-python    skip the PyTorch peer
  --write-docs   also write the results to docs/benchmark.md (between its bench:begin/end markers;
                 the rest of the file is kept)
  --label TEXT   a line saying what the run is (e.g. "after streaming writes"), shown in the docs`;

const VARIANTS: Variant[] = [
  { key: "save-ours", label: "save: TorchTensorDumper.dump (new file, fsync)", runner: "node", op: "save-ours", kind: "save", role: "ours" },
  { key: "save-manager", label: "save: FileCheckpointManager begin/saveState/commit", runner: "node", op: "save-manager", kind: "save", role: "ours" },
  { key: "load-ours", label: "load: TorchTensorLoader.load", runner: "node", op: "load-ours", kind: "load", role: "ours" },
  { key: "load-manager", label: "load: FileCheckpointManager.loadCheckpoint", runner: "node", op: "load-manager", kind: "load", role: "ours" },
  { key: "load-into-ours", label: "load-into: TorchTensorLoader.load(path, { into })", runner: "node", op: "load-into-ours", kind: "load", role: "ours" },
  { key: "load-into-manager", label: "load-into: FileCheckpointManager.loadCheckpoint(step, { into })", runner: "node", op: "load-into-manager", kind: "load", role: "ours" },
  { key: "load-torchfile", label: "load: TorchTensorLoader.load of the torch.save file", runner: "node", op: "load-torchfile", kind: "load", role: "ours", needsTorch: true },
  { key: "load-into-torchfile", label: "load-into: TorchTensorLoader.load(torch.save file, { into })", runner: "node", op: "load-into-torchfile", kind: "load", role: "ours", needsTorch: true },
  { key: "write-plain", label: "limit: plain write of the tensors' bytes + fsync", runner: "node", op: "write-plain", kind: "save", role: "limit" },
  { key: "write-best", label: "limit: best plain write: 4 positioned writev streams at once + fsync", runner: "node", op: "write-best", kind: "save", role: "limit" },
  { key: "write-direct", label: "limit: O_DIRECT write (around the page cache), 16 MiB aligned blocks, two at once + fsync", runner: "node", op: "write-direct", kind: "save", role: "limit" },
  { key: "read-plain", label: "limit: plain read of that file into fresh memory", runner: "node", op: "read-plain", kind: "load", role: "limit" },
  { key: "read-best", label: "limit: best plain read: 4 positioned reads at once into fresh memory", runner: "node", op: "read-best", kind: "load", role: "limit" },
  { key: "copy-memory", label: "limit: memory copy of the state (reused buffers)", runner: "node", op: "copy-memory", kind: "copy", role: "limit" },
  { key: "torch-save", label: "peer: torch.save + fsync", runner: "python", op: "save", kind: "save", role: "peer" },
  { key: "torch-load", label: "peer: torch.load", runner: "python", op: "load", kind: "load", role: "peer" },
];
/**
 * Steady state: the same operations timed after two untimed runs of the same size in the process
 * (a training job's later saves; a process that loads several checkpoints), where the rows above
 * time the first of a fresh process (a resume). (b) has them all; (a) its saves, whose first in a
 * process also makes the direct-write blocks that the O_DIRECT write limit makes beforehand.
 */
const STEADY_VARIANTS: Variant[] = VARIANTS.filter((v) => ["save-ours", "save-manager", "load-ours", "load-torchfile", "load-into-ours", "write-direct"].includes(v.key)).map((v) => ({
  ...v,
  key: `${v.key}${STEADY_SUFFIX}`,
  op: `${v.op}${STEADY_SUFFIX}`,
  label: v.label.replace(/^(save|load-into|load|limit): /, `$1, steady state (3rd run in one process): `),
  // A steady save is the third write of the state in a row, and so is its limit: on this VM the
  // third O_DIRECT write of 1 GiB in a row took ~1.24× as long as a fresh process's first.
  ...(v.kind === "save" && v.role === "ours" ? { limit: STEADY_WRITE_LIMIT } : {}),
}));
/** Measurements that explain the others: where the time goes, and what bounds it on this machine. */
const DIAGNOSTICS: Variant[] = [
  { key: "crc-memory", label: "zlib crc32 of the state's bytes in memory (one pass)", runner: "node", op: "crc-memory", kind: "checksum", role: "diagnostic" },
  { key: "write-plain-crc", label: "plain write + fsync, a CRC-32 pass overlapped with it", runner: "node", op: "write-plain-crc", kind: "save", role: "diagnostic" },
  { key: "read-plain-crc", label: "plain read, a CRC-32 pass overlapped with it", runner: "node", op: "read-plain-crc", kind: "load", role: "diagnostic" },
  { key: "dump-discard", label: "TorchTensorDumper.dump to a writer that discards (no I/O)", runner: "node", op: "dump-discard", kind: "save", role: "diagnostic" },
  { key: "load-ours-nocrc", label: "TorchTensorLoader.load, verifyCrc: false", runner: "node", op: "load-ours-nocrc", kind: "load", role: "diagnostic" },
  { key: "load-into-nocrc", label: "TorchTensorLoader.load(path, { into }), verifyCrc: false", runner: "node", op: "load-into-nocrc", kind: "load", role: "diagnostic" },
  { key: "load-floor", label: "floor of a load: best read of the bare bytes, then a CRC-32, view and Tensor per tensor", runner: "node", op: "load-floor", kind: "load", role: "diagnostic" },
];
/** (d)'s limit: the memory copy in a snapshot's conditions (its memory last written a second before). */
const IDLE_COPY_VARIANT: Variant = {
  key: "copy-memory-idle",
  label: "limit: memory copy of the state into buffers last written 1 s before, as a snapshot's are (reused buffers)",
  runner: "node",
  op: "copy-memory-idle",
  kind: "copy",
  role: "limit",
};
/** (d): one measurement gives three rows (see backgroundRows). */
const ASYNC_VARIANT: Variant = {
  key: "save-async",
  label: "blocked: beginCheckpoint(…, { background: true }) → saveState → commitCheckpoint returned",
  runner: "node",
  op: "save-async",
  kind: "blocking",
  role: "ours",
};

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
  // 3 runs keep the whole benchmark (with its scaling sweep) to about 5 minutes.
  const runs = values.runs === undefined ? 3 : Number(values.runs);
  if (!Number.isSafeInteger(runs) || runs < 1 || runs > 100) throw new Error(`--runs needs a whole number from 1 to 100, got ${values.runs}\n${USAGE}`);
  return { runs, quick: values.quick, python: !values["no-python"], writeDocs: values["write-docs"], label: values.label };
}

function progress(message: string): void {
  process.stderr.write(`${message}\n`);
}

/**
 * Runs one worker (or the Python peer) to the end. Each line of JSON it printed is one measurement
 * (tagged with its op when the worker ran several); `error` says why the rest are missing.
 */
function runChild(command: string, args: string[]): { samples: (Sample & { op?: string })[]; error?: string } {
  // Every measurement starts with nothing dirty in the page cache: otherwise a save pays for the
  // writeback of whatever ran before it (prepared files, the previous point of the sweep).
  spawnSync("sync");
  const result = spawnSync(command, args, { cwd: ROOT, encoding: "utf8", timeout: WORKER_TIMEOUT_MS, maxBuffer: 16 << 20 });
  const samples = (result.stdout ?? "")
    .split("\n")
    .filter((line) => line.startsWith("{"))
    .map((line) => JSON.parse(line) as Sample & { op?: string });
  if (result.status !== 0 || samples.length === 0) {
    const why = result.error?.message ?? (result.signal !== null ? `killed by ${result.signal}` : `exit code ${result.status}`);
    const stderr = (result.stderr ?? "").trim().split("\n").filter((l) => /error|Error/.test(l)).at(0) ?? (result.stderr ?? "").trim().split("\n").at(-1) ?? "";
    return { samples, error: `${why}${stderr === "" ? "" : `: ${stderr.trim().slice(0, 200)}`}` };
  }
  return { samples };
}

function nodeArgs(op: string, specPath: string, dir: string): string[] {
  return ["--expose-gc", "--import", "tsx", WORKER, op, specPath, dir];
}

/**
 * Runs variants of one runner in one process (the worker runs them one after the other; the
 * harness gives it several only in --quick runs) and files each measurement, or the failure.
 */
function runVariants(variants: Variant[], p: Prepared, python: string | undefined, round: string): void {
  const ops = variants.map((v) => v.op).join(",");
  const outcome = variants[0]!.runner === "node" ? runChild(process.execPath, nodeArgs(ops, p.specPath, p.dir)) : runChild(python!, [PEER, ops, p.specPath, p.dir]);
  for (const variant of variants) {
    const series = p.series.get(variant.key)!;
    // The peer prints one untagged line.
    const sample = outcome.samples.find((x) => x.op === variant.op) ?? (variants.length === 1 && outcome.error === undefined ? outcome.samples[0] : undefined);
    if (sample !== undefined) series.samples.push(sample);
    else series.error = outcome.error ?? "no measurement printed";
    const shown = sample !== undefined ? `${sample.seconds.toFixed(3)} s` : `FAILED ${series.error}`;
    progress(`${round} (${p.spec.id}) ${variant.key}: ${shown}`);
  }
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
  if (prepared.error !== undefined) {
    for (const s of series.values()) if (s.variant.runner === "node" && s.variant.kind === "load") s.error = `prepare failed: ${prepared.error}`;
  }
  if (python !== undefined) {
    const torchPrepared = runChild(python, [PEER, "prepare", specPath, dir]);
    if (torchPrepared.error !== undefined) series.get("torch-load")!.error = `prepare failed: ${torchPrepared.error}`;
  }
  return { spec, specPath, dir, variants, series };
}

function checkFreeSpace(dir: string, specs: ScenarioSpec[], quick: boolean): void {
  // Prepared files (ours, the checkpoint, plain, torch) of every scenario, plus what one operation
  // writes (the background save: two checkpoints).
  const needed = specs.reduce((sum, s) => sum + 4.2 * stateBytes(s), 0) + 2.2 * Math.max(...specs.map(stateBytes)) + scalingSpaceNeeded(quick);
  const stats = statfsSync(dir);
  const free = stats.bavail * stats.bsize;
  if (free < needed) throw new Error(`the benchmark needs about ${formatBytes(needed)} free in ${dir}, which has ${formatBytes(free)}`);
}

function quoteArg(arg: string): string {
  return /^[\w@%+=:,./-]+$/.test(arg) ? arg : `'${arg.replaceAll("'", "'\\''")}'`;
}

function notes(options: Options, specs: ScenarioSpec[], pythonNote: string | undefined): string[] {
  const lines = [
    options.quick
      ? `Each operation runs ${options.runs} times; in each round the Node operations of a scenario share one process (--quick), in an order that rotates each round; the median is shown; Range is the fastest and slowest run.`
      : `Each operation runs ${options.runs} times in a fresh process, interleaved (the order rotates each round), and the median is shown; Range is the fastest and slowest run.`,
    "GB/s is 10⁹ bytes of tensor data per second. × limit and × torch are speed ratios, median against median: above 1 is faster than the limit (plain write for saves and for the whole background checkpoint, plain read for loads, memory copy for blocking time) or than PyTorch.",
    "CPU is the process's CPU time during the operation (user + system, every thread: the main thread and libuv's pool, which does the file system calls): CPU above the time means two cores worked at once, CPU near the time that one did at a time.",
    "Peak memory is the process's peak resident memory during the operation above its resident memory just before (the peak mark is reset there); loads count the memory of what they return, the memory copy its destination buffers.",
    "Saves write a new file and fsync it, so they reach the disk. Ours write a file past its first 16 MiB around the page cache (O_DIRECT), as they do by default; torch.save and the plain writes (but the O_DIRECT one) go through it. Loads read files written moments before through the page cache: they come from memory, not the disk (dropping the cache needs root), so load times measure parsing, checksums and memory, and the plain read is a memory-bandwidth limit.",
    "Each process warms up on a tiny state and builds its state with every buffer already touched, so saves do not pay first touch of fresh memory; loads do pay for allocating what they return, as the plain read into fresh memory does.",
    "Steady state ((a) saves, (b) all): the same operation timed in a process that has just run it twice at full size, untimed (a training job's second and later saves; a process that loads several checkpoints), where every other row times the first operation of a fresh process after the tiny warm-up (a resume's load). V8 has then optimized the per-tensor code, which the first operation of a process runs partly before it is optimized, and a save reuses the blocks of its direct writes (48 MiB for a file of 128 MiB or more, 12 MiB for a smaller one, which the first save of a process allocates and touches). The steady manager save keeps one FileCheckpointManager for the three runs, as a training loop does (each run a new step; the last one deleted, untimed, before the next), where its first-run row makes a new manager and closes it inside the timed part.",
    "load-into: the process first builds the state it loads into and overwrites every byte of it (so its memory is touched, as a training process's live model and optimizer are), then times the load; the harness checks that every tensor was filled in place and returned, none allocated anew. Peak memory is only what the load adds.",
    "(d) is a training loop's checkpoint after the first: the manager keeps the snapshot memory of the last background checkpoint and copies into it, so each run first makes one background checkpoint (untimed) and waits for it, then times beginCheckpoint(step, { background: true }) → saveState → commitCheckpoint returning (the time training is blocked). \"Until waitForPendingSave()\" is from the same beginCheckpoint until the checkpoint is written, fsynced and committed. The event loop's delay is the worst lateness of a setInterval(…, 1) timer between commitCheckpoint returning and waitForPendingSave resolving. Peak memory of (d) counts from before the first checkpoint, so it includes the snapshot memory: at commit's return on the blocked row, at the end on the row after it. The blocked time is compared with a memory copy in the same conditions: into buffers written once (as the snapshot's were by the first checkpoint) and left 1 s (as long as that checkpoint's write, the CPU mostly idle meanwhile), a fresh process's copy each run; the copy right after another, (a)'s row, is shown too. On this VM a copy after a second's rest took 81–146 ms, one right after another 65–97 ms (design.md).",
    `The peer builds the same structure (model + Adam's state_dict) with tensors of the same sizes in Python and times torch.save (given the path, then fsync) and torch.load with time.perf_counter.${pythonNote === undefined ? "" : ` ${pythonNote}`}`,
  ];
  if (options.quick) lines.unshift(`QUICK RUN: small states (${specs.map((s) => formatBytes(stateBytes(s))).join(", ")}), for checking the harness, not for numbers.`);
  return lines;
}

const DIAGNOSTIC_NOTES = [
  "Diagnostics run like the operations above (same runs, same processes, same state) and are there to explain them; Per tensor is the median divided by the number of tensors.",
  "zlib crc32: Node's zlib.crc32 over every tensor's bytes, in memory: the speed of the CRC-32 that zip entries (and so .pt files) carry, on this CPU.",
  "plain write + CRC-32: the plain write, with each batch's CRC-32 computed on the main thread while the previous batch is written: what a save that checksums every byte once can reach here, the checksum and the kernel's copy into the page cache sharing the cores.",
  "plain read + CRC-32: the plain read in 16 MiB pieces, each piece's CRC-32 computed on the main thread while the next is read (as the loader reads a whole file): what a load that checks every byte once can reach here.",
  "dump to a writer that discards: TorchTensorDumper.dump with a file system whose writer throws the bytes away: pickling, zip headers, CRC-32 and batching, no system calls.",
  "floor of a load: the best plain read of the tensors' bytes alone (no file format around them), then for each tensor a CRC-32 pass, a view of the read bytes, a Storage, a Tensor and an entry in one dict: the least any load that returns checksummed tensors does in Node.js here, with no pickle, zip directory or headers to parse. × limit against the best plain read is then the most a load can reach.",
  "verifyCrc: false: the same loads without checking the CRC-32 of the entries (a loader option; the manager always checks), to show what the checksum costs.",
  "(d) event loop: from the same runs as (d) above; the idle row runs the same 1 ms timer right after the checkpoint is written, for as long as the write took (at most 5 s), with nothing else to do: the delay that the machine itself (other processes on its cores) adds.",
];

/** Markers around what --write-docs writes in docs/benchmark.md; the rest of the file is kept. */
const DOCS_BEGIN = "<!-- bench:begin — written by `npm run bench -- --write-docs`; edit outside these markers -->";
const DOCS_END = "<!-- bench:end -->";

interface Rendered {
  machine: Machine;
  legend: string[];
  table: string;
  targets: string;
  diagnostics: string;
  runs: string;
  scaling: string;
  flatness: string[];
  noteLines: string[];
}

/** Per tensor and per byte, the largest point's cost over the smallest's, for our save and load. */
function flatnessLines(points: ScalingPoint[]): string[] {
  const lines: string[] = [];
  for (const [axis, unit] of [["tensors", "per tensor"], ["bytes", "per byte"]] as const) {
    for (const op of ["save-ours", "load-ours", "torch-save", "torch-load"] as const) {
      const ratio = flatness(points, axis, op);
      if (ratio !== undefined) lines.push(`${op}: time ${unit} at the largest point is ${ratio.toFixed(2)}× that at the smallest (1 is flat)`);
    }
  }
  return lines;
}

function renderDocs(options: Options, command: string, r: Rendered): string {
  return [
    DOCS_BEGIN,
    "",
    options.label === undefined ? "" : `**${options.label}.**\n`,
    `Produced by \`${command}\` on ${r.machine.date}; regenerate with the same command. These machines are noisy: compare rows of one run, not against numbers from another run or machine.`,
    "",
    "## Machine",
    "",
    ...machineLines(r.machine).map((l) => `    ${l}`),
    "",
    "## Results",
    "",
    ...r.legend.map((l) => `- ${l}`),
    "",
    r.table,
    "",
    "## Targets",
    "",
    "The targets of issues 6, 10 (c) and 14, as speed ratios (the other's median time over ours, unrounded in the verdict) and peak memory from the table above. The limit of a save is the fastest of the plain write, the best plain write and the O_DIRECT write, of a load the faster of the plain read and the best plain read, all measured in this run; a steady save's is the O_DIRECT write measured the same way, as the third in a row of one process (on this VM the third 1 GiB write in a row took about 1.24× as long as a fresh process's first). (d)'s memory copy is the one in a snapshot's conditions (the (d) rows).",
    "",
    r.targets,
    "",
    "## Diagnostics",
    "",
    r.diagnostics,
    "",
    ...DIAGNOSTIC_NOTES.map((l) => `- ${l}`),
    "",
    "## How cost grows",
    "",
    "Each point is a state of its own (its files prepared first), every operation in a fresh process, one run each (a sweep of many points; the tables above have the repeated runs). Tensors: N tensors of 4 KiB; bytes: tensors of 16 MiB. In brackets, time per tensor or per MiB: flat means no step that grows faster than the work.",
    "",
    r.scaling,
    "",
    ...r.flatness.map((l) => `- ${l}`),
    "",
    "![Save and load time against the number of tensors and the state's size](benchmark-scaling.svg)",
    "",
    "<details><summary>Every run</summary>",
    "",
    r.runs,
    "",
    "</details>",
    "",
    "## How it is measured",
    "",
    ...r.noteLines.map((l) => `- ${l}`),
    "- The library measured is the build in dist/ (what users install and run; `npm run bench` builds it first, and a dist/ older than src/ is refused). CKPT_BENCH_SOURCE=1 measures src/ through tsx instead, whose transform wraps every closure in a __name() call.",
    "- The harness is `bench/run.ts`; each measurement is `bench/worker.ts` (Node) or `bench/torch_peer.py` (PyTorch) in its own process.",
    "",
    DOCS_END,
  ].join("\n");
}

/** Puts the generated part between the markers of docs/benchmark.md, keeping what is outside them. */
function writeDocs(generated: string): void {
  const old = existsSync(DOCS) ? readFileSync(DOCS, "utf8") : "";
  const begin = old.indexOf(DOCS_BEGIN);
  const end = old.indexOf(DOCS_END);
  const text = begin >= 0 && end > begin ? `${old.slice(0, begin)}${generated}${old.slice(end + DOCS_END.length)}` : `# Benchmark\n\n${generated}\n`;
  writeFileSync(DOCS, text);
}

/** (d) from the save-async measurements of (a): blocked time, time to finish, event-loop delay. */
function backgroundRows(a: Prepared): ScenarioResult {
  const measured = a.series.get(ASYNC_VARIANT.key)!;
  const derived = (key: string, label: string, kind: Variant["kind"], pick: (x: Sample) => Sample | undefined, role: Variant["role"] = "ours"): Series => {
    const samples = measured.samples.map(pick).filter((x): x is Sample => x !== undefined);
    const series: Series = { variant: { ...ASYNC_VARIANT, key, label, kind, role }, samples };
    if (measured.error !== undefined) series.error = measured.error;
    else if (samples.length < measured.samples.length) series.error = "the worker did not report it";
    return series;
  };
  const total = derived("save-async-total", "until waitForPendingSave() resolved: written, fsynced, committed", "total", (x) =>
    x.totalSeconds === undefined ? undefined : { seconds: x.totalSeconds, peakBytes: x.totalPeakBytes ?? Number.NaN, ...(x.totalCpuSeconds === undefined ? {} : { cpuSeconds: x.totalCpuSeconds }) },
  );
  const loop = derived("save-async-loop", "event loop's worst delay while it is written (1 ms timer)", "delay", (x) =>
    x.loopDelaySeconds === undefined ? undefined : { seconds: x.loopDelaySeconds, peakBytes: Number.NaN },
  );
  const loopP99 = derived("save-async-loop-p99", "event loop: 99th percentile of that timer's delay while it is written", "delay", (x) =>
    x.loopP99Seconds === undefined ? undefined : { seconds: x.loopP99Seconds, peakBytes: Number.NaN }, "diagnostic");
  const idle = derived("save-async-loop-idle", "event loop: the same timer's worst delay for as long with nothing written", "delay", (x) =>
    x.idleLoopDelaySeconds === undefined ? undefined : { seconds: x.idleLoopDelaySeconds, peakBytes: Number.NaN }, "diagnostic");
  return {
    id: "d",
    title: "background checkpoint of state (a)",
    bytes: stateBytes(a.spec),
    tensors: tensorCount(a.spec),
    series: [measured, total, loop, a.series.get(IDLE_COPY_VARIANT.key)!, a.series.get("copy-memory")!, loopP99, idle],
    references: ["write-plain", "torch-save"].flatMap((key) => a.series.get(key) ?? []),
  };
}

function main(): void {
  const started = performance.now();
  const options = parseOptions(process.argv.slice(2));
  const specs = scenarios(options.quick);
  const torch = options.python ? findTorch() : null;
  const pythonNote = !options.python ? "skipped: --no-python" : torch === null ? "skipped: PyTorch not found (set CKPT_PYTHON or apt-get install python3-torch)" : undefined;

  const tmpRoot = tmpdir();
  checkFreeSpace(tmpRoot, specs, options.quick);
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
  let scaling: ScalingPoint[] = [];
  try {
    const prepared = specs.map((spec) => {
      let variants = [...VARIANTS.filter((v) => (v.runner === "node" && v.needsTorch !== true) || torch !== null), ...DIAGNOSTICS];
      if (spec.id === "a") variants = [...variants, ASYNC_VARIANT, IDLE_COPY_VARIANT, ...STEADY_VARIANTS.filter((v) => v.kind === "save")];
      if (spec.id === "b") variants = [...variants, ...STEADY_VARIANTS.filter((v) => v.needsTorch !== true || torch !== null)];
      return prepare(spec, root, variants, torch?.python);
    });
    for (let run = 0; run < options.runs; run++) {
      const round = `run ${run + 1}/${options.runs}`;
      for (const p of prepared) {
        const order = rotate(p.variants, run).filter((v) => p.series.get(v.key)!.error === undefined);
        if (options.quick) {
          // A smoke run: the Node operations of a scenario in one process (process start-up dominates).
          const node = order.filter((v) => v.runner === "node");
          if (node.length > 0) runVariants(node, p, torch?.python, round);
          for (const v of order.filter((v) => v.runner === "python")) runVariants([v], p, torch?.python, round);
        } else {
          for (const v of order) runVariants([v], p, torch?.python, round);
        }
      }
    }
    results = prepared.map((p) => ({
      id: p.spec.id,
      title: p.spec.title,
      bytes: stateBytes(p.spec),
      tensors: tensorCount(p.spec),
      series: [...p.series.values()].filter((s) => s.variant.key !== ASYNC_VARIANT.key && s.variant.key !== IDLE_COPY_VARIANT.key),
    }));
    progress("(c): 4 ranks under ckpt launch");
    results.push(measureDistributed(root, options.runs, options.quick ? 16 * 2 ** 20 : 256 * 2 ** 20));
    progress("(e): S3 on loopback");
    results.push(measureS3(options.runs, options.quick ? 16 * 2 ** 20 : 256 * 2 ** 20));
    results.push(backgroundRows(prepared.find((p) => p.spec.id === "a")!));
    // The prepared files of (a) and (b) are not needed any more: the sweep's largest point needs the room.
    for (const p of prepared) rmSync(p.dir, { recursive: true, force: true });
    progress("how cost grows: the scaling sweep");
    scaling = measureScaling(
      root,
      {
        node: (ops, specPath, dir) => runChild(process.execPath, nodeArgs(ops.join(","), specPath, dir)),
        python: (op, specPath, dir) => runChild(torch!.python, [PEER, op, specPath, dir]),
      },
      { quick: options.quick, runs: 1, python: torch !== null, progress },
    );
  } finally {
    cleanUp();
  }

  finishLoad(machine);
  const legend = [
    ...specs.map((s) => `(${s.id}) ${s.title}`),
    `(c) ${results.find((r) => r.id === "c")!.title}`,
    `(d) ${results.find((r) => r.id === "d")!.title}: how long training is blocked, how long until it is written, how late the event loop runs meanwhile`,
    `(e) ${results.find((r) => r.id === "e")!.title}: ours against a plain PutObject / GetObject of the same bytes through the same SDK and server`,
  ];
  const targets: TargetResult[] = evaluateTargets(results);
  const rendered: Rendered = {
    machine,
    legend,
    table: renderTable(tableRows(results)),
    targets: renderTable(targetRows(targets), TARGET_HEADER, 3),
    diagnostics: renderTable(tableRows(results, { diagnostics: true }), DIAGNOSTIC_HEADER),
    runs: renderTable(runRows(results), RUNS_HEADER, 3),
    scaling: renderTable(scalingRows(scaling), SCALING_HEADER),
    flatness: flatnessLines(scaling),
    noteLines: notes(options, specs, pythonNote),
  };
  console.log(
    [
      "",
      ...machineLines(machine),
      "",
      ...legend,
      "",
      rendered.table,
      "",
      "Targets (issues 6, 10 and 14):",
      "",
      rendered.targets,
      "",
      "How cost grows:",
      "",
      rendered.scaling,
      "",
      ...rendered.flatness,
      "",
      "Diagnostics:",
      "",
      rendered.diagnostics,
      "",
      ...[...rendered.noteLines, ...DIAGNOSTIC_NOTES].map((l) => `* ${l}`),
      "",
    ].join("\n"),
  );

  if (options.writeDocs) {
    const args = process.argv.slice(2);
    const command = args.length === 0 ? "npm run bench" : ["npm run bench --", ...args.map(quoteArg)].join(" ");
    writeDocs(renderDocs(options, command, rendered));
    writeFileSync(CHART, scalingSvg(scaling, `${command}, ${machine.date}, commit ${machine.code}; log-log; solid: ckpt, dashed: PyTorch ${machine.torch}, dotted: the disk's best plain I/O`));
    progress(`wrote ${DOCS} and ${CHART}`);
  }
  progress(`benchmark finished in ${((performance.now() - started) / 1000).toFixed(0)} s`);
  const failed = results.some((r) => r.series.some((s) => s.error !== undefined)) || scaling.some((p) => p.errors.length > 0);
  for (const p of scaling) for (const error of p.errors) progress(`scaling (${p.spec.title}) failed: ${error}`);
  if (failed) {
    progress("some measurements failed: see the table");
    process.exitCode = 1;
  }
}

main();
