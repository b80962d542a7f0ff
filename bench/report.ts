// Turns the measurements into the table: medians, throughput, and ratios to the limit and the peer.

export type Kind = "save" | "load" | "copy" | "blocking";
export type Role = "ours" | "limit" | "peer";

export interface Variant {
  key: string;
  label: string;
  runner: "node" | "python";
  /** The operation name the worker (or torch_peer.py) takes. */
  op: string;
  kind: Kind;
  role: Role;
}

export interface Sample {
  seconds: number;
  peakBytes: number;
  totalSeconds?: number;
}

/** All runs of one variant in one scenario; `error` when a run failed. */
export interface Series {
  variant: Variant;
  samples: Sample[];
  error?: string;
}

export interface ScenarioResult {
  id: string;
  title: string;
  bytes: number;
  series: Series[];
  /** Instead of measurements: why the scenario is not measured. */
  notMeasured?: string;
}

/** What each kind of operation is compared with: the limit and the peer, by variant key. */
const COMPARED_WITH: Record<Kind, { limit?: string; peer?: string }> = {
  save: { limit: "write-plain", peer: "torch-save" },
  load: { limit: "read-plain", peer: "torch-load" },
  copy: {},
  blocking: { limit: "copy-memory" },
};

export function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 === 1 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
}

export function formatSeconds(seconds: number): string {
  if (seconds < 1e-3) return `${(seconds * 1e6).toFixed(0)} µs`;
  if (seconds < 1) return `${(seconds * 1e3).toPrecision(3)} ms`;
  return `${seconds.toPrecision(3)} s`;
}

function formatMiB(bytes: number): string {
  return `${Math.round(Math.max(0, bytes) / 2 ** 20).toLocaleString("en-US")} MiB`;
}

const HEADER = ["", "Operation", "Median", "Range", "GB/s", "× limit", "× torch", "Peak memory"];

/** One row per variant and one per unmeasured scenario; every row starts with its scenario's tag. */
export function tableRows(results: ScenarioResult[]): string[][] {
  const rows: string[][] = [];
  for (const result of results) {
    const tag = `(${result.id})`;
    if (result.notMeasured !== undefined) {
      rows.push([tag, `${result.title}: ${result.notMeasured}`, "", "", "", "", "", ""]);
      continue;
    }
    const medians = new Map<string, number>();
    for (const s of result.series) if (s.error === undefined && s.samples.length > 0) medians.set(s.variant.key, median(s.samples.map((x) => x.seconds)));
    for (const s of result.series) {
      const own = medians.get(s.variant.key);
      if (own === undefined) {
        rows.push([tag, s.variant.label, `failed: ${s.error ?? "no runs"}`, "", "", "", "", ""]);
        continue;
      }
      const times = s.samples.map((x) => x.seconds);
      const { limit, peer } = COMPARED_WITH[s.variant.kind];
      // Ratios are speed ratios: above 1 is faster than what it is compared with.
      const ratio = (key: string | undefined): string => {
        if (key === undefined || key === s.variant.key) return "";
        const other = medians.get(key);
        return other === undefined ? "n/a" : `${(other / own).toFixed(2)}×`;
      };
      let label = s.variant.label;
      const totals = s.samples.flatMap((x) => (x.totalSeconds === undefined ? [] : [x.totalSeconds]));
      if (totals.length > 0) label += ` (finished after ${formatSeconds(median(totals))})`;
      rows.push([
        tag,
        label,
        formatSeconds(own),
        times.length > 1 ? `${formatSeconds(Math.min(...times))} – ${formatSeconds(Math.max(...times))}` : "",
        (result.bytes / 1e9 / own).toFixed(2),
        s.variant.role === "limit" ? "" : ratio(limit),
        s.variant.role === "peer" ? "" : ratio(peer),
        formatMiB(median(s.samples.map((x) => x.peakBytes))),
      ]);
    }
  }
  return rows;
}

/** A Markdown table, padded so it also reads well in a terminal. */
export function renderTable(rows: string[][]): string {
  const all = [HEADER, ...rows];
  const widths = HEADER.map((_, c) => Math.max(...all.map((row) => [...(row[c] ?? "")].length)));
  const line = (row: string[]): string => `| ${row.map((cell, c) => cell.padEnd(widths[c]!)).join(" | ")} |`;
  const rule = `|${widths.map((w, c) => (c >= 2 ? `${"-".repeat(w + 1)}:` : "-".repeat(w + 2))).join("|")}|`;
  return [line(HEADER), rule, ...rows.map(line)].join("\n");
}
