/**
 * The tables of a torture run: printed on the terminal and written between two markers in
 * docs/reliability.md, whose other text (what each class does, how to replay) is kept as written.
 */
import { readFile, writeFile } from "node:fs/promises";
import type { ClassResult } from "../types.js";

export interface ClassRun {
  id: string;
  result: ClassResult;
  budgetMs: number;
  elapsedMs: number;
}

export interface CampaignRun {
  seed: number;
  minutes: number;
  date: string;
  classes: ClassRun[];
}

/** Failure kinds with a column of their own; any other kind is counted under "other failures". */
export const FAILURE_COLUMNS = ["loss", "undetected corruption", "uncaught exception", "hang"] as const;

const START = "<!-- torture:results:start -->";
const END = "<!-- torture:results:end -->";

export function failureCount(run: CampaignRun): number {
  return run.classes.reduce((sum, c) => sum + c.result.failures.length, 0);
}

function peakMemory(result: ClassResult): string {
  const entry = Object.entries(result.figures).find(([key]) => key.toLowerCase().includes("peak memory"));
  return entry === undefined ? "—" : String(entry[1]);
}

/** The results as Markdown: a summary per class, cases per kind, failures, figures. */
export function renderResults(run: CampaignRun): string {
  const lines: string[] = [];
  lines.push(`Run of ${run.date}: \`npm run torture -- --minutes ${run.minutes} --seed ${run.seed}\`, ${failureCount(run)} failures.`, "");
  lines.push("| Class | Cases | Losses | Undetected corruptions | Uncaught exceptions | Hangs | Other failures | Peak memory ratio | Time (s) |");
  lines.push("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
  for (const { result, elapsedMs } of run.classes) {
    const total = Object.values(result.cases).reduce((a, b) => a + b, 0);
    const byColumn = FAILURE_COLUMNS.map((kind) => result.failures.filter((f) => f.kind === kind).length);
    const other = result.failures.filter((f) => !(FAILURE_COLUMNS as readonly string[]).includes(f.kind)).length;
    lines.push(`| ${result.name} | ${total} | ${byColumn.join(" | ")} | ${other} | ${peakMemory(result)} | ${(elapsedMs / 1000).toFixed(0)} |`);
  }
  lines.push("", "Cases tried, by kind:", "", "| Class | Kind | Cases |", "|---|---|---:|");
  for (const { result } of run.classes) for (const [kind, count] of Object.entries(result.cases)) lines.push(`| ${result.name} | ${kind} | ${count} |`);
  const figures = run.classes.flatMap(({ result }) => Object.entries(result.figures).map(([key, value]) => `| ${result.name} | ${key} | ${value} |`));
  if (figures.length > 0) lines.push("", "Other figures:", "", "| Class | Figure | Value |", "|---|---|---:|", ...figures);
  const failures = run.classes.flatMap(({ result }) => result.failures.map((f) => `- ${result.name}, ${f.kind}: ${f.detail.replaceAll("\n", " ")}`));
  lines.push("", failures.length === 0 ? "Failures: none." : "Failures:", ...(failures.length === 0 ? [] : ["", ...failures]));
  return lines.join("\n");
}

/** Writes the results between the markers of `path` (appended with markers when they are missing). */
export async function writeResults(path: string, run: CampaignRun): Promise<void> {
  const text = await readFile(path, "utf8").catch(() => "# Reliability\n");
  const block = `${START}\n${renderResults(run)}\n${END}`;
  const start = text.indexOf(START);
  const end = text.indexOf(END);
  const next = start >= 0 && end > start ? text.slice(0, start) + block + text.slice(end + END.length) : `${text.trimEnd()}\n\n${block}\n`;
  await writeFile(path, next);
}
