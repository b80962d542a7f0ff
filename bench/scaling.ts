// How cost grows (issue 14): our save and load, torch's, and the disk's best plain write and read
// on states of more and more small tensors (1k → 100k) and of more and more bytes (64 MiB → 2 GiB),
// each point in fresh processes; and the SVG chart of it, written next to docs/benchmark.md.
import { spawnSync } from "node:child_process";
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { formatSeconds, median } from "./report.js";
import { formatBytes, stateBytes, tensorCount, type ScenarioSpec } from "./scenarios.js";

export type SweepAxis = "tensors" | "bytes";

/** One point of a sweep: its state and the median time of each operation (seconds; undefined if it failed). */
export interface ScalingPoint {
  axis: SweepAxis;
  spec: ScenarioSpec;
  tensors: number;
  bytes: number;
  seconds: Record<ScalingOp, number | undefined>;
  errors: string[];
}

export const SCALING_OPS = ["save-ours", "load-ours", "torch-save", "torch-load", "write-best", "read-best"] as const;
export type ScalingOp = (typeof SCALING_OPS)[number];
const OP_LABELS: Record<ScalingOp, string> = {
  "save-ours": "ckpt save",
  "load-ours": "ckpt load",
  "torch-save": "torch.save",
  "torch-load": "torch.load",
  "write-best": "best plain write + fsync",
  "read-best": "best plain read",
};

const MiB = 2 ** 20;

/** `count` tensors of 4 KiB (1,024 float32), as scenario (b). */
function smallTensors(count: number): ScenarioSpec {
  return { id: `n${count}`, title: `${count.toLocaleString("en-US")} × 4 KiB`, parameters: Array.from({ length: count }, (_, i) => ({ name: `params.${i}`, shape: [1024] })), adam: false };
}

/** `bytes` of state in tensors of 16 MiB (4,096 × 1,024 float32), or fewer bytes per tensor for tiny states. */
function largeTensors(bytes: number): ScenarioSpec {
  const tensorBytes = Math.min(16 * MiB, bytes / 4);
  const count = Math.round(bytes / tensorBytes);
  return { id: `s${bytes / MiB}`, title: formatBytes(bytes), parameters: Array.from({ length: count }, (_, i) => ({ name: `w.${i}`, shape: [tensorBytes / 4096, 1024] })), adam: false };
}

export function scalingSpecs(quick: boolean): { axis: SweepAxis; spec: ScenarioSpec }[] {
  const counts = quick ? [100, 1000] : [1000, 10_000, 100_000];
  const sizes = quick ? [4 * MiB, 16 * MiB] : [64 * MiB, 256 * MiB, 1024 * MiB, 2048 * MiB];
  return [...counts.map((n) => ({ axis: "tensors" as const, spec: smallTensors(n) })), ...sizes.map((b) => ({ axis: "bytes" as const, spec: largeTensors(b) }))];
}

/** Disk space the sweep needs at once (one point at a time: its prepared files and one save). */
export function scalingSpaceNeeded(quick: boolean): number {
  return Math.max(...scalingSpecs(quick).map(({ spec }) => 5 * stateBytes(spec)));
}

interface Runner {
  node(ops: string[], specPath: string, dir: string): { samples: { op?: string; seconds: number }[]; error?: string };
  python(op: string, specPath: string, dir: string): { samples: { seconds: number }[]; error?: string };
}

/**
 * Measures every point: `runs` times each operation, each in a fresh process (with `quick`, the
 * Node operations of a point share one process). Points are done one after the other and their
 * files removed, so the sweep needs the space of its largest point only.
 */
export function measureScaling(root: string, runner: Runner, options: { quick: boolean; runs: number; python: boolean; progress: (line: string) => void }): ScalingPoint[] {
  const points: ScalingPoint[] = [];
  for (const { axis, spec } of scalingSpecs(options.quick)) {
    const dir = join(root, `scaling-${spec.id}`);
    mkdirSync(dir);
    const specPath = join(dir, "spec.json");
    writeFileSync(specPath, JSON.stringify(spec));
    const point: ScalingPoint = { axis, spec, tensors: tensorCount(spec), bytes: stateBytes(spec), seconds: {} as ScalingPoint["seconds"], errors: [] };
    const samples = new Map<ScalingOp, number[]>();
    const record = (op: ScalingOp, outcome: { samples: { op?: string; seconds: number }[]; error?: string }): void => {
      const sample = outcome.samples.find((x) => x.op === op) ?? (outcome.samples.length === 1 && outcome.samples[0]!.op === undefined ? outcome.samples[0] : undefined);
      if (sample === undefined) point.errors.push(`${op}: ${outcome.error ?? "no measurement"}`);
      else samples.set(op, [...(samples.get(op) ?? []), sample.seconds]);
    };
    const prepared = runner.node(["prepare"], specPath, dir);
    if (prepared.error !== undefined) point.errors.push(`prepare: ${prepared.error}`);
    if (options.python) {
      const torchPrepared = runner.python("prepare", specPath, dir);
      if (torchPrepared.error !== undefined) point.errors.push(`torch prepare: ${torchPrepared.error}`);
    }
    const nodeOps = SCALING_OPS.filter((op) => !op.startsWith("torch"));
    for (let run = 0; run < options.runs; run++) {
      if (options.quick) {
        const outcome = runner.node(nodeOps, specPath, dir);
        for (const op of nodeOps) record(op, outcome);
      } else {
        for (const op of nodeOps) record(op, runner.node([op], specPath, dir));
      }
      if (options.python) {
        record("torch-save", runner.python("save", specPath, dir));
        record("torch-load", runner.python("load", specPath, dir));
      }
    }
    for (const op of SCALING_OPS) {
      const times = samples.get(op);
      point.seconds[op] = times === undefined ? undefined : median(times);
    }
    const shown = SCALING_OPS.map((op) => `${op} ${point.seconds[op] === undefined ? "—" : formatSeconds(point.seconds[op]!)}`).join(", ");
    options.progress(`scaling (${spec.title}): ${shown}`);
    spawnSync("rm", ["-rf", dir]);
    points.push(point);
  }
  return points;
}

/** The sweep as a table: time, time per tensor or per MiB, and ratios against torch and the limit. */
export function scalingRows(points: ScalingPoint[]): string[][] {
  return points.map((p) => {
    const cell = (op: ScalingOp): string => {
      const t = p.seconds[op];
      if (t === undefined) return "failed";
      const unit = p.axis === "tensors" ? `${((t / p.tensors) * 1e6).toFixed(2)} µs/tensor` : `${((t / (p.bytes / MiB)) * 1e3).toFixed(2)} ms/MiB`;
      return `${formatSeconds(t)} (${unit})`;
    };
    return [p.axis === "tensors" ? "tensors" : "bytes", p.spec.title, ...SCALING_OPS.map(cell)];
  });
}
export const SCALING_HEADER = ["Sweep", "State", ...SCALING_OPS.map((op) => OP_LABELS[op])];

/**
 * Whether the cost per tensor (or per byte) stays flat: the largest point's cost per unit over the
 * smallest's, for our save and load (1 is flat; a quadratic step would show as ≫ 1).
 */
export function flatness(points: ScalingPoint[], axis: SweepAxis, op: ScalingOp): number | undefined {
  const along = points.filter((p) => p.axis === axis && p.seconds[op] !== undefined);
  if (along.length < 2) return undefined;
  const unit = (p: ScalingPoint): number => p.seconds[op]! / (axis === "tensors" ? p.tensors : p.bytes);
  return unit(along.at(-1)!) / unit(along[0]!);
}

const COLORS: Record<ScalingOp, string> = {
  "save-ours": "#d62728",
  "load-ours": "#1f77b4",
  "torch-save": "#ff9896",
  "torch-load": "#aec7e8",
  "write-best": "#555555",
  "read-best": "#999999",
};
const DASHED: ReadonlySet<ScalingOp> = new Set(["torch-save", "torch-load"]);
const DOTTED: ReadonlySet<ScalingOp> = new Set(["write-best", "read-best"]);

function escapeXml(text: string): string {
  return text.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
}

/** One log-log panel: x = tensors or bytes, y = seconds, a line per operation. */
function panel(points: ScalingPoint[], axis: SweepAxis, x0: number, title: string): string {
  const along = points.filter((p) => p.axis === axis);
  const width = 420;
  const height = 300;
  const left = x0 + 60;
  const top = 40;
  const plotW = width - 80;
  const plotH = height - 90;
  const xs = along.map((p) => (axis === "tensors" ? p.tensors : p.bytes));
  const ys = along.flatMap((p) => SCALING_OPS.flatMap((op) => (p.seconds[op] === undefined ? [] : [p.seconds[op]!])));
  if (xs.length === 0 || ys.length === 0) return `<text x="${x0 + 20}" y="60">${escapeXml(title)}: not measured</text>`;
  const lx = (v: number): number => Math.log10(v);
  const [xMin, xMax] = [Math.min(...xs.map(lx)), Math.max(...xs.map(lx))];
  const yMin = Math.floor(Math.min(...ys.map(lx)));
  const yMax = Math.ceil(Math.max(...ys.map(lx)));
  const px = (v: number): number => left + (xMax === xMin ? plotW / 2 : ((lx(v) - xMin) / (xMax - xMin)) * plotW);
  const py = (v: number): number => top + plotH - ((lx(v) - yMin) / Math.max(yMax - yMin, 1)) * plotH;
  const parts: string[] = [`<text x="${x0 + width / 2}" y="22" text-anchor="middle" font-weight="bold">${escapeXml(title)}</text>`];
  parts.push(`<rect x="${left}" y="${top}" width="${plotW}" height="${plotH}" fill="none" stroke="#ccc"/>`);
  for (let e = yMin; e <= yMax; e++) {
    const y = py(10 ** e);
    parts.push(`<line x1="${left}" y1="${y}" x2="${left + plotW}" y2="${y}" stroke="#eee"/>`, `<text x="${left - 6}" y="${y + 4}" text-anchor="end" font-size="11">${escapeXml(formatSeconds(10 ** e))}</text>`);
  }
  for (const p of along) {
    const v = axis === "tensors" ? p.tensors : p.bytes;
    parts.push(`<text x="${px(v)}" y="${top + plotH + 16}" text-anchor="middle" font-size="11">${escapeXml(axis === "tensors" ? p.tensors.toLocaleString("en-US") : formatBytes(p.bytes))}</text>`);
  }
  parts.push(`<text x="${left + plotW / 2}" y="${top + plotH + 34}" text-anchor="middle" font-size="12">${axis === "tensors" ? "tensors of 4 KiB (log scale)" : "state size, tensors of 16 MiB (log scale)"}</text>`);
  for (const op of SCALING_OPS) {
    const pts = along.filter((p) => p.seconds[op] !== undefined).map((p) => `${px(axis === "tensors" ? p.tensors : p.bytes).toFixed(1)},${py(p.seconds[op]!).toFixed(1)}`);
    if (pts.length === 0) continue;
    const dash = DASHED.has(op) ? ' stroke-dasharray="6 4"' : DOTTED.has(op) ? ' stroke-dasharray="2 3"' : "";
    parts.push(`<polyline points="${pts.join(" ")}" fill="none" stroke="${COLORS[op]}" stroke-width="2"${dash}/>`);
    for (const pt of pts) parts.push(`<circle cx="${pt.split(",")[0]}" cy="${pt.split(",")[1]}" r="3" fill="${COLORS[op]}"/>`);
  }
  return parts.join("\n");
}

/** The chart: two log-log panels (time against tensors, time against bytes) and a legend. */
export function scalingSvg(points: ScalingPoint[], caption: string): string {
  const legend = SCALING_OPS.map((op, i) => {
    const x = 20 + (i % 3) * 280;
    const y = 330 + Math.floor(i / 3) * 20;
    const dash = DASHED.has(op) ? ' stroke-dasharray="6 4"' : DOTTED.has(op) ? ' stroke-dasharray="2 3"' : "";
    return `<line x1="${x}" y1="${y}" x2="${x + 30}" y2="${y}" stroke="${COLORS[op]}" stroke-width="2"${dash}/><text x="${x + 36}" y="${y + 4}" font-size="12">${escapeXml(OP_LABELS[op])}</text>`;
  });
  return [
    `<svg xmlns="http://www.w3.org/2000/svg" width="860" height="400" viewBox="0 0 860 400" font-family="sans-serif" font-size="12">`,
    `<rect width="860" height="400" fill="white"/>`,
    panel(points, "tensors", 0, "Time against the number of tensors"),
    panel(points, "bytes", 430, "Time against the state's size"),
    ...legend,
    `<text x="20" y="388" font-size="11" fill="#555">${escapeXml(caption)}</text>`,
    `</svg>`,
    "",
  ].join("\n");
}
