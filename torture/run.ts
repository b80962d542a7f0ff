/**
 * `npm run torture [-- --minutes N] [--seed S] [--only <class>] [--no-docs]`: runs every fault
 * class of torture/classes/index.ts for its share of the budget, prints the table and writes it to
 * docs/reliability.md (unless --only or --no-docs). Exits 1 when any failure was counted.
 */
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { faultClasses, type RegisteredClass } from "./classes/index.js";
import { deriveSeed } from "./lib/random.js";
import { failureCount, renderResults, writeResults, type CampaignRun, type ClassRun } from "./lib/report.js";
import type { ClassResult } from "./types.js";

const ROOT = dirname(dirname(fileURLToPath(import.meta.url)));
const DEFAULT_MINUTES = 3;
/** A class still running this long after its budget hangs: it is counted as such and left behind. */
const HANG_GRACE_MS = 120_000;

const { values } = parseArgs({
  options: {
    minutes: { type: "string", default: String(DEFAULT_MINUTES) },
    seed: { type: "string" },
    only: { type: "string" },
    "no-docs": { type: "boolean", default: false },
  },
});
const minutes = Number(values.minutes);
if (!(minutes > 0)) throw new Error(`--minutes must be a positive number, not ${values.minutes}`);
const seed = values.seed === undefined ? Math.floor(Math.random() * 2 ** 31) : Number(values.seed);
if (!Number.isInteger(seed) || seed < 0) throw new Error(`--seed must be a non-negative integer, not ${values.seed}`);
const selected = values.only === undefined ? faultClasses : faultClasses.filter((c) => c.id === values.only);
if (selected.length === 0) throw new Error(`no class "${values.only}"; the classes: ${faultClasses.map((c) => c.id).join(", ")}`);

console.log(`torture: seed ${seed} (replay: npm run torture -- --minutes ${minutes} --seed ${seed}${values.only === undefined ? "" : ` --only ${values.only}`})`);
const totalWeight = selected.reduce((sum, c) => sum + (c.weight ?? 1), 0);

async function runOne(entry: RegisteredClass): Promise<ClassRun> {
  const budgetMs = (minutes * 60_000 * (entry.weight ?? 1)) / totalWeight;
  const workDir = await mkdtemp(join(tmpdir(), `torture-${entry.id}-`));
  const started = performance.now();
  let timer: NodeJS.Timeout | undefined;
  const hang = new Promise<ClassResult>((resolve) => {
    timer = setTimeout(
      () => resolve({ name: entry.id, cases: {}, failures: [{ kind: "hang", detail: `the class did not return ${HANG_GRACE_MS} ms after its budget` }], figures: {} }),
      budgetMs + HANG_GRACE_MS,
    );
  });
  const result = await Promise.race([
    entry.run({ seed: deriveSeed(seed, entry.id), budgetMs, workDir, quick: false }).catch(
      (error: unknown): ClassResult => ({ name: entry.id, cases: {}, failures: [{ kind: "uncaught exception", detail: `the class itself threw: ${(error as Error).stack ?? String(error)}` }], figures: {} }),
    ),
    hang,
  ]);
  clearTimeout(timer);
  await rm(workDir, { recursive: true, force: true }).catch(() => undefined);
  const run = { id: entry.id, result, budgetMs, elapsedMs: performance.now() - started };
  console.log(`torture: ${entry.id}: ${Object.values(result.cases).reduce((a, b) => a + b, 0)} cases, ${result.failures.length} failures in ${(run.elapsedMs / 1000).toFixed(0)} s`);
  return run;
}

const classes: ClassRun[] = [];
for (const entry of selected) classes.push(await runOne(entry));
const run: CampaignRun = { seed, minutes, date: new Date().toISOString().slice(0, 16).replace("T", " ") + " UTC", classes };
console.log(`\n${renderResults(run)}`);
if (values.only === undefined && !values["no-docs"]) {
  await writeResults(join(ROOT, "docs", "reliability.md"), run);
  console.log("\ntorture: written to docs/reliability.md");
}
process.exit(failureCount(run) === 0 ? 0 : 1);
