/**
 * Hostile input: mutations of valid files (torture/hostile-input/mutations.ts) of every format the
 * library reads, each loaded in a child process with a deadline. Zero is the bar for errors other
 * than the library's own (CkptError), hangs, crashes and allocations beyond a small multiple of
 * the input; crafted cases (symlinks out of a checkpoint, `..` and absolute names, forbidden
 * pickle globals) must be refused.
 */
import { cp, rm, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { craftedCases } from "../hostile-input/crafted-cases.js";
import { FuzzRunner } from "../hostile-input/fuzz-runner.js";
import { MUTATION_KINDS, mutate } from "../hostile-input/mutations.js";
import { bytesUnder, makeSeeds, readSeedFile } from "../hostile-input/seeds.js";
import { seededRandom } from "../plain-values.js";
import type { ClassOptions, ClassResult, FaultClass } from "../types.js";

/** A hang: a case still running after this long (far beyond any case's need, even on a loaded machine). */
const CASE_DEADLINE_MS = 20_000;
/** Allocation bound: ArrayBuffer growth during a case beyond this multiple of the input, plus slack for fixed buffers. */
export const ALLOCATION_FACTOR = 8;
export const ALLOCATION_SLACK_BYTES = 8 << 20;
/** Below this input size the ratio says more about the readers' fixed buffers than about the input. */
const RATIO_FLOOR_BYTES = 64 << 10;

export const hostileInput: FaultClass = async (options: ClassOptions): Promise<ClassResult> => {
  const result: ClassResult = { name: "Hostile input", cases: {}, failures: [], figures: {} };
  const random = seededRandom(options.seed);
  const seeds = await makeSeeds(join(options.workDir, "seeds"));
  const seedBytes = await Promise.all(seeds.map(readSeedFile));
  const runner = new FuzzRunner(CASE_DEADLINE_MS);
  let worstFlooredRatio = 0;
  let worstBytes = 0;
  let worstRss = 0;
  let refused = 0;
  let loaded = 0;
  const started = Date.now();
  const caseCount = options.quick ? seeds.length * MUTATION_KINDS.length : Number.POSITIVE_INFINITY;
  try {
    for (let id = 0; id < caseCount && Date.now() - started < options.budgetMs; id++) {
      const seedIndex = id % seeds.length;
      const seed = seeds[seedIndex]!;
      const kind = options.quick ? MUTATION_KINDS[Math.floor(id / seeds.length) % MUTATION_KINDS.length]! : MUTATION_KINDS[Math.floor(random() * MUTATION_KINDS.length)]!;
      const other = seedBytes[Math.floor(random() * seeds.length)]!;
      const { bytes, what } = mutate(seedBytes[seedIndex]!, kind, random, other);
      const caseDir = join(options.workDir, `case-${id}`);
      await cp(seed.dir, caseDir, { recursive: true });
      await writeFile(join(caseDir, seed.mutable), bytes);
      const size = await bytesUnder(caseDir);
      const end = await runner.run({ id, target: seed.target, path: join(caseDir, seed.load) });
      await rm(caseDir, { recursive: true, force: true });
      const label = `${seed.name}: ${kind}`;
      const group = caseGroup(seed.name);
      result.cases[group] = (result.cases[group] ?? 0) + 1;
      const detail = `case ${id} (seed ${options.seed}) ${label}, ${what}: ${end.error ?? ""}`;
      if (!("peakArrayBuffers" in end) || end.outcome === "uncaught") {
        result.failures.push({ kind: end.outcome === "uncaught" ? "uncaught exception" : end.outcome, detail });
        continue;
      }
      if (end.outcome === "refused") refused++;
      else loaded++;
      worstFlooredRatio = Math.max(worstFlooredRatio, end.peakArrayBuffers / Math.max(size, RATIO_FLOOR_BYTES));
      worstBytes = Math.max(worstBytes, end.peakArrayBuffers);
      worstRss = Math.max(worstRss, end.peakRss);
      if (end.peakArrayBuffers > ALLOCATION_FACTOR * size + ALLOCATION_SLACK_BYTES) {
        result.failures.push({ kind: "allocation beyond bound", detail: `${detail} allocated ${end.peakArrayBuffers} bytes for ${size} bytes of input` });
      }
    }
    for (const crafted of await craftedCases(join(options.workDir, "crafted"))) {
      result.cases["crafted hostile case"] = (result.cases["crafted hostile case"] ?? 0) + 1;
      const end = await runner.run({ id: -1, target: crafted.target, path: crafted.path });
      if (end.outcome !== "refused" || !crafted.expect.test(end.error ?? "")) {
        result.failures.push({ kind: "hostile case not refused", detail: `${crafted.name}: ${end.outcome}${end.error === undefined ? "" : `: ${end.error}`}` });
      }
    }
  } finally {
    runner.stop();
  }
  result.figures["mutated files refused (CkptError)"] = refused;
  result.figures["mutated files still loading"] = loaded;
  result.figures["peak memory: ArrayBuffer growth / max(input size, 64 KiB)"] = Number(worstFlooredRatio.toFixed(2));
  result.figures["largest ArrayBuffer growth (bytes)"] = worstBytes;
  result.figures["largest resident-set growth (bytes)"] = worstRss;
  return result;
};

/** The row a seed's cases count in: torch-written .pt files together, legacy ones together. */
function caseGroup(seedName: string): string {
  if (seedName.startsWith("legacy-")) return "legacy .pt (torch-written)";
  if (seedName.startsWith("ours")) return ".pt written by ckpt";
  if (seedName.endsWith(".pt")) return "zip .pt (torch-written)";
  return seedName.replace(/^step_2\//, "");
}
