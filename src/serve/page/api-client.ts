/** The shapes of the JSON API's answers that the page reads, a GET helper, and a small DOM builder. */

export interface SaveCost {
  blockedMs: number;
  durableMs: number;
  bytesWritten: number;
}

export interface CheckpointRow {
  stepNr: number;
  name: string;
  status: "committed" | "unfinished" | "deleting" | "damaged";
  problem: string | null;
  warning: string | null;
  score: number | null;
  scoreAsSaved: number | null;
  lowerBetter: boolean | null;
  size: number;
  fileCount: number;
  kind: "resumable" | "model-only" | null;
  isLast: boolean;
  isBest: boolean;
  createdAt: number | null;
  save: SaveCost | null;
}

export interface HistoryEntry {
  stepNr: number;
  fate: "kept" | "model-only" | "deleted";
  scoreAsSaved: number | null;
  score: number | null;
  lowerBetter: boolean | null;
  size: number;
}

export interface CheckpointsAnswer {
  checkpointDir: string;
  version: number;
  allowPrune: boolean;
  lastStepNr: number | null;
  bestStepNr: number | null;
  checkpoints: CheckpointRow[];
  history: HistoryEntry[];
}

export interface DiskAnswer {
  total: number;
  committed: number;
  leftovers: number;
  steps: { stepNr: number; name: string; status: string; size: number; byKind: { model: number; trainingState: number; other: number } }[];
}

export interface CostAnswer {
  mtbfSeconds: number;
  intervalInUseSeconds: number | null;
  meanBlockedSeconds: number | null;
  meanDurableSeconds: number | null;
  youngDalySeconds: number | null;
}

export interface TensorEntry {
  key: string;
  dtype: string;
  shape: number[];
  bytes: number;
}

export interface CheckpointDetails {
  stepNr: number;
  name: string;
  kind: string;
  size: number;
  files: { name: string; size: number }[];
  tensorFiles: ({ name: string; format: string; size: number; tensorCount: number; tensorBytes: number; tensors: TensorEntry[]; values: { key: string; value: string }[] } | { name: string; error: string })[];
}

export interface TensorStatsAnswer {
  key: string;
  dtype: string;
  shape: number[];
  stats: { numel: number; min: number | null; max: number | null; mean: number | null; std: number | null; nanCount: number; infCount: number };
}

export type DiffChange =
  | { key: string; change: "only-in-a" | "only-in-b"; what: string }
  | { key: string; change: "dtype-or-shape"; a: string; b: string }
  | { key: string; change: "values"; maxAbsDiff: number; differing: number; numel: number; dtype: string; shape: number[] }
  | { key: string; change: "value"; a: string; b: string };

export interface DiffAnswer {
  a: number;
  b: number;
  identical: boolean;
  same: number;
  totalChanges: number;
  changes: DiffChange[];
}

/** GETs a route of the API; an error answer becomes an Error with the server's message. */
export async function getJson<T>(path: string): Promise<T> {
  const response = await fetch(path, { headers: { accept: "application/json" } });
  const body = (await response.json()) as T & { error?: { message: string } };
  if (!response.ok) throw new Error(body.error?.message ?? `${path}: HTTP ${response.status}`);
  return body;
}

export async function postJson<T>(path: string, value: unknown): Promise<T> {
  const response = await fetch(path, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(value) });
  const body = (await response.json()) as T & { error?: { message: string } };
  if (!response.ok) throw new Error(body.error?.message ?? `${path}: HTTP ${response.status}`);
  return body;
}

type Child = Node | string | number | null | undefined | false;

/** An element with attributes and children; text is always set as text, never parsed as HTML. */
export function h<K extends keyof HTMLElementTagNameMap>(tag: K, attributes: Record<string, string | undefined> = {}, ...children: Child[]): HTMLElementTagNameMap[K] {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) if (value !== undefined) element.setAttribute(name, value);
  for (const child of children) if (child !== null && child !== undefined && child !== false) element.append(typeof child === "number" ? String(child) : child);
  return element;
}

const SVG = "http://www.w3.org/2000/svg";

export function svg(tag: string, attributes: Record<string, string | number> = {}, text?: string): SVGElement {
  const element = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attributes)) element.setAttribute(name, String(value));
  if (text !== undefined) element.textContent = text;
  return element;
}

export function byId<T extends HTMLElement | SVGElement = HTMLElement>(id: string): T {
  const element = document.getElementById(id);
  if (element === null) throw new Error(`the page has no #${id}`);
  return element as unknown as T;
}

/** 1536 → "1.5 KiB", as the command line's formatBytes (src/cli/output.ts) prints sizes: the page's scripts run in the browser and import nothing from the Node side, which has no bundler. */
export function formatBytes(bytes: number): string {
  if (bytes < 1024) return `${bytes} B`;
  const units = ["KiB", "MiB", "GiB", "TiB"];
  let value = bytes / 1024;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit++;
  }
  return `${value < 10 ? value.toFixed(1) : Math.round(value)} ${units[unit]}`;
}

export function formatNumber(value: number | null | undefined): string {
  if (value === null || value === undefined) return "-";
  if (Number.isInteger(value) && Math.abs(value) < 1e15) return String(value);
  return String(Number(value.toPrecision(6)));
}

export function formatSeconds(seconds: number | null | undefined): string {
  if (seconds === null || seconds === undefined) return "-";
  if (seconds < 1) return `${Math.round(seconds * 1000)} ms`;
  if (seconds < 120) return `${formatNumber(Number(seconds.toPrecision(3)))} s`;
  if (seconds < 7200) return `${formatNumber(Number((seconds / 60).toPrecision(3)))} min`;
  return `${formatNumber(Number((seconds / 3600).toPrecision(3)))} h`;
}

/** The score as it was saved, with its direction (↓ lower is better), as `ckpt ls` shows it. */
export function scoreText(row: { score: number | null; scoreAsSaved: number | null; lowerBetter: boolean | null }): string {
  if (row.score === null) return "-";
  if (row.scoreAsSaved === null || row.lowerBetter === null) return `${formatNumber(row.score)} ↑`;
  return `${formatNumber(row.scoreAsSaved)} ${row.lowerBetter ? "↓" : "↑"}`;
}
