// `npm run bench`: our save and load against the limits of this machine and against PyTorch, on the
// same bytes, in one run. See docs/benchmark.md for what each row measures.
//
//   npm run bench [-- --runs N] [--quick] [--no-python] [--write-docs] [--label TEXT]
import { spawnSync } from "node:child_process";
import { mkdirSync, mkdtempSync, rmSync, statfsSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { STEADY_SUFFIX } from "./worker-protocol.js";
import { measureDistributed } from "./distributed.js";
import { measureS3 } from "./s3.js";
import { describeMachine, findTorch, finishLoad, machineLines } from "./machine.js";
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
import { DIAGNOSTIC_NOTES, flatnessLines, notes, renderDocs, writeDocs, type Rendered } from "./benchmark-page.js";
import { SCALING_HEADER, measureScaling, scalingRows, scalingSpaceNeeded, scalingSvg, type ScalingPoint } from "./scaling.js";

const ROOT = join(import.meta.dirname, "..");
const WORKER = join(import.meta.dirname, "worker.ts");
const PEER = join(import.meta.dirname, "torch_peer.py");
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
/**
 * (b)'s first save against its floor (bench/floors.ts): the file's bytes alone, written as the
 * library writes a small-tensor file. Not run for (a): there the loop's O_DIRECT writes took 3-4x
 * as long as the limit's, for a reason not found (docs/design.md), so it bounds nothing.
 */
const SAVE_FLOOR_VARIANT: Variant = {
  key: "save-floor",
  label: "floor of a first save: the file's bytes alone, from fresh aligned blocks as the library writes them (bench/floors.ts)",
  runner: "node",
  op: "save-floor",
  kind: "save",
  role: "diagnostic",
};
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
    const requests = sample?.writeRequests === undefined || sample.writeRequests === 0 ? "" : ` (${sample.writeRequests} write requests)`;
    const shown = sample !== undefined ? `${sample.seconds.toFixed(3)} s${requests}` : `FAILED ${series.error}`;
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
      if (spec.id === "b") variants = [...variants, SAVE_FLOOR_VARIANT, ...STEADY_VARIANTS.filter((v) => v.needsTorch !== true || torch !== null)];
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
    progress(`wrote docs/benchmark.md and ${CHART}`);
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
