import { formatBytes, formatNumber, svg, type DiskAnswer, type HistoryEntry } from "./api-client.js";

/** Hand-written SVG charts: two small charts do not need a chart library (see docs/design.md, "Dashboard"). */

const WIDTH = 560;
const HEIGHT = 260;
const MARGIN = { left: 56, right: 12, top: 12, bottom: 30 };

interface Scale {
  (value: number): number;
  ticks: number[];
}

function linearScale(min: number, max: number, from: number, to: number, tickCount = 5): Scale {
  if (min === max) {
    min -= min === 0 ? 1 : Math.abs(min) * 0.1;
    max += max === 0 ? 1 : Math.abs(max) * 0.1;
  }
  const scale = ((value: number) => from + ((value - min) / (max - min)) * (to - from)) as Scale;
  const step = niceStep((max - min) / tickCount);
  scale.ticks = [];
  for (let t = Math.ceil(min / step) * step; t <= max + step * 1e-9; t += step) scale.ticks.push(Number(t.toPrecision(12)));
  return scale;
}

function niceStep(rough: number): number {
  const power = 10 ** Math.floor(Math.log10(rough));
  const fraction = rough / power;
  return (fraction <= 1 ? 1 : fraction <= 2 ? 2 : fraction <= 5 ? 5 : 10) * power;
}

function axes(chart: SVGElement, x: Scale, y: Scale, yText: (value: number) => string, xText: (value: number) => string): void {
  for (const t of y.ticks) {
    chart.append(svg("line", { class: "grid", x1: MARGIN.left, x2: WIDTH - MARGIN.right, y1: y(t), y2: y(t) }));
    chart.append(svg("text", { x: MARGIN.left - 6, y: y(t) + 4, "text-anchor": "end" }, yText(t)));
  }
  for (const t of x.ticks) chart.append(svg("text", { x: x(t), y: HEIGHT - MARGIN.bottom + 16, "text-anchor": "middle" }, xText(t)));
  chart.append(svg("line", { class: "axis", x1: MARGIN.left, x2: WIDTH - MARGIN.right, y1: HEIGHT - MARGIN.bottom, y2: HEIGHT - MARGIN.bottom }));
  chart.append(svg("line", { class: "axis", x1: MARGIN.left, x2: MARGIN.left, y1: MARGIN.top, y2: HEIGHT - MARGIN.bottom }));
}

function empty(chart: SVGElement, text: string): void {
  chart.replaceChildren(svg("text", { x: WIDTH / 2, y: HEIGHT / 2, "text-anchor": "middle", class: "empty" }, text));
}

/**
 * Score against step: a line through the checkpoints still there, a filled dot for a kept one, a
 * hollow dot for one pruned to its model, a cross for one deleted this session, the best ringed.
 */
export function drawScoreChart(chart: SVGElement, history: readonly HistoryEntry[], bestStepNr: number | null): void {
  const scored = history.filter((e) => e.score !== null);
  if (scored.length === 0) return empty(chart, "no scored checkpoints yet");
  const value = (e: HistoryEntry): number => e.scoreAsSaved ?? e.score!;
  const steps = scored.map((e) => e.stepNr);
  const values = scored.map(value);
  const x = linearScale(Math.min(...steps), Math.max(...steps), MARGIN.left + 10, WIDTH - MARGIN.right - 10);
  const y = linearScale(Math.min(...values), Math.max(...values), HEIGHT - MARGIN.bottom - 8, MARGIN.top + 8);
  chart.replaceChildren();
  axes(chart, x, y, formatNumber, formatNumber);
  const present = scored.filter((e) => e.fate !== "deleted");
  if (present.length > 1) chart.append(svg("polyline", { class: "score-line", points: present.map((e) => `${x(e.stepNr)},${y(value(e))}`).join(" ") }));
  for (const e of scored) {
    const [cx, cy] = [x(e.stepNr), y(value(e))];
    const title = svg("title", {}, `step ${e.stepNr}: ${formatNumber(value(e))} (${e.fate})`);
    const classes = `point ${e.fate}${e.stepNr === bestStepNr && e.fate !== "deleted" ? " best" : ""}`;
    let mark: SVGElement;
    if (e.fate === "deleted") {
      mark = svg("path", { class: classes, d: `M${cx - 4},${cy - 4}L${cx + 4},${cy + 4}M${cx - 4},${cy + 4}L${cx + 4},${cy - 4}`, "data-step": e.stepNr });
    } else {
      mark = svg("circle", { class: classes, cx, cy, r: 4.5, "data-step": e.stepNr });
    }
    mark.append(title);
    chart.append(mark);
  }
  const direction = scored.find((e) => e.lowerBetter !== null)?.lowerBetter;
  chart.append(svg("text", { x: WIDTH - MARGIN.right, y: MARGIN.top + 4, "text-anchor": "end" }, direction === undefined ? "score" : direction ? "score (lower is better)" : "score (higher is better)"));
}

/** Bytes per step, stacked: model files, training state, the rest (manifest, score, cc/). */
export function drawDiskChart(chart: SVGElement, disk: DiskAnswer): void {
  const steps = disk.steps;
  if (steps.length === 0) return empty(chart, "no checkpoints yet");
  const maxSize = Math.max(...steps.map((s) => s.size), 1);
  // Ticks at round numbers of the unit shown (KiB, MiB, ...), not of bytes.
  const unit = 1024 ** Math.min(4, Math.floor(Math.log(maxSize) / Math.log(1024)));
  const inUnits = linearScale(0, maxSize / unit, HEIGHT - MARGIN.bottom, MARGIN.top + 8);
  const y = ((bytes: number) => inUnits(bytes / unit)) as Scale;
  y.ticks = inUnits.ticks.map((t) => t * unit);
  const slot = (WIDTH - MARGIN.left - MARGIN.right) / steps.length;
  const barWidth = Math.max(2, Math.min(40, slot * 0.7));
  chart.replaceChildren();
  const x = ((i: number) => MARGIN.left + slot * (i + 0.5)) as Scale;
  x.ticks = [];
  axes(chart, x, y, formatBytes, String);
  const labelEvery = Math.ceil(steps.length / 10);
  steps.forEach((s, i) => {
    let top = HEIGHT - MARGIN.bottom;
    for (const [kind, bytes] of [["model", s.byKind.model], ["training-state", s.byKind.trainingState], ["other", s.byKind.other]] as const) {
      if (bytes === 0) continue;
      const height = HEIGHT - MARGIN.bottom - y(bytes);
      top -= height;
      const bar = svg("rect", { class: `bar ${kind}`, x: x(i) - barWidth / 2, y: top, width: barWidth, height: Math.max(height, 0.5), "data-step": s.stepNr });
      bar.append(svg("title", {}, `${s.name}: ${kind} ${formatBytes(bytes)} of ${formatBytes(s.size)}`));
      chart.append(bar);
    }
    if (i % labelEvery === 0) chart.append(svg("text", { x: x(i), y: HEIGHT - MARGIN.bottom + 16, "text-anchor": "middle" }, s.status === "committed" ? String(s.stepNr) : `${s.stepNr}*`));
  });
}
