// The page the benchmark writes: docs/benchmark.md's generated part (between its markers) and
// the notes that say how each row was measured.
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { machineLines, type Machine } from "./machine.js";
import { flatness, type ScalingPoint } from "./scaling.js";
import { formatBytes, stateBytes, type ScenarioSpec } from "./scenarios.js";

const DOCS = join(import.meta.dirname, "..", "docs", "benchmark.md");

/** What of the run's options the page shows. */
export interface PageOptions {
  runs: number;
  quick: boolean;
  label: string | undefined;
}

export function notes(options: PageOptions, specs: ScenarioSpec[], pythonNote: string | undefined): string[] {
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

export const DIAGNOSTIC_NOTES = [
  "Diagnostics run like the operations above (same runs, same processes, same state) and are there to explain them; Per tensor is the median divided by the number of tensors.",
  "zlib crc32: Node's zlib.crc32 over every tensor's bytes, in memory: the speed of the CRC-32 that zip entries (and so .pt files) carry, on this CPU.",
  "plain write + CRC-32: the plain write, with each batch's CRC-32 computed on the main thread while the previous batch is written: what a save that checksums every byte once can reach here, the checksum and the kernel's copy into the page cache sharing the cores.",
  "plain read + CRC-32: the plain read in 16 MiB pieces, each piece's CRC-32 computed on the main thread while the next is read (as the loader reads a whole file): what a load that checks every byte once can reach here.",
  "dump to a writer that discards: TorchTensorDumper.dump with a file system whose writer throws the bytes away: pickling, zip headers, CRC-32 and batching, no system calls.",
  "floor of a load: the best plain read of the tensors' bytes alone (no file format around them), then for each tensor a CRC-32 pass, a view of the read bytes, a Storage, a Tensor and an entry in one dict: the least any load that returns checksummed tensors does in Node.js here, with no pickle, zip directory or headers to parse. × limit against the best plain read is then the most a load can reach.",
  "floor of a first save ((b) only): a real PyTorch file of the same tensors (one flat dict), written by three tight loops made for this layout alone (bench/floors.ts): per tensor a CRC-32, a zip header and a copy into three 4 MiB aligned blocks of fresh memory written around the page cache while the next is filled, flushed to disk in the background every 8 MiB, then a pickle of the same operations torch.save writes and the central directory; no state to walk or check, no temporary name. It runs, like the first saves above, in a fresh process after the warm-up: what a first save written the way the library writes it takes on this machine. × limit (against the save limit above) is then about the most such a save can reach here.",
  "verifyCrc: false: the same loads without checking the CRC-32 of the entries (a loader option; the manager always checks), to show what the checksum costs.",
  "(d) event loop: from the same runs as (d) above; the idle row runs the same 1 ms timer right after the checkpoint is written, for as long as the write took (at most 5 s), with nothing else to do: the delay that the machine itself (other processes on its cores) adds.",
];

/** Markers around what --write-docs writes in docs/benchmark.md; the rest of the file is kept. */
const DOCS_BEGIN = "<!-- bench:begin — written by `npm run bench -- --write-docs`; edit outside these markers -->";
const DOCS_END = "<!-- bench:end -->";

export interface Rendered {
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
export function flatnessLines(points: ScalingPoint[]): string[] {
  const lines: string[] = [];
  for (const [axis, unit] of [["tensors", "per tensor"], ["bytes", "per byte"]] as const) {
    for (const op of ["save-ours", "load-ours", "torch-save", "torch-load"] as const) {
      const ratio = flatness(points, axis, op);
      if (ratio !== undefined) lines.push(`${op}: time ${unit} at the largest point is ${ratio.toFixed(2)}× that at the smallest (1 is flat)`);
    }
  }
  return lines;
}

export function renderDocs(options: PageOptions, command: string, r: Rendered): string {
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
export function writeDocs(generated: string): void {
  const old = existsSync(DOCS) ? readFileSync(DOCS, "utf8") : "";
  const begin = old.indexOf(DOCS_BEGIN);
  const end = old.indexOf(DOCS_END);
  const text = begin >= 0 && end > begin ? `${old.slice(0, begin)}${generated}${old.slice(end + DOCS_END.length)}` : `# Benchmark\n\n${generated}\n`;
  writeFileSync(DOCS, text);
}
