/**
 * Class 4, "Corruption": committed checkpoints are damaged file by file (a byte flipped, a file cut
 * short, extended, removed, or swapped with another file of the same or another step), sampled over
 * every file of every step. With a manifest each must be detected, at load or by verifyCheckpoints,
 * as an error naming the file; a load that returns values different from what was saved, a
 * change nobody reports, an error that is not the library's, or one that names no file is a failure.
 *
 * Without a manifest the same damage is measured, not required (torture/lib/unprotected-files.ts).
 */
import { cp, mkdir, readdir, readFile, rm, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { FileCheckpointManager, Tensor, TorchTensorDumper } from "../../src/index.js";
import { saveCheckpoint } from "../../test/helpers/crash-scenarios.js";
import { loadDamaged, loadFingerprint, uncaughtAtLoad, unreported, verifyDamaged } from "../lib/damage-checks.js";
import { MUTATION_KINDS, mutate, type MutationKind } from "../lib/mutations.js";
import { countCase, Random } from "../lib/random.js";
import { measureUnprotected, UNPROTECTED_SUBJECTS, type UnprotectedTally } from "../lib/unprotected-files.js";
import type { ClassFailure, ClassOptions, ClassResult } from "../types.js";

const STEPS = [1, 2, 3];
/** The lone .pt written by ckpt, next to the template (torture/lib/unprotected-files.ts damages copies). */
export const LONE_CKPT_FILE = "lone-ckpt.pt";

/** Every file under `dir`, relative to it. */
export async function filesUnder(dir: string): Promise<string[]> {
  const entries = await readdir(dir, { recursive: true, withFileTypes: true });
  return entries.filter((e) => e.isFile()).map((e) => join(e.parentPath, e.name).slice(dir.length + 1)).sort();
}

async function prepareTemplate(dir: string): Promise<Map<number, string>> {
  await mkdir(join(dir, "cc"), { recursive: true });
  await writeFile(join(dir, "cc", "tokenizer.txt"), "a carbon copy in every checkpoint\n");
  const manager = new FileCheckpointManager({ checkpointDir: dir });
  for (const stepNr of STEPS) await saveCheckpoint(manager, stepNr, stepNr, "small");
  const saved = new Map<number, string>();
  for (const stepNr of STEPS) saved.set(stepNr, await loadFingerprint(manager, stepNr));
  await manager.close();
  // The lone .pt written by ckpt: mostly tensor bytes, as a real model file is.
  const weights = Float32Array.from({ length: 4096 }, (_, i) => Math.sin(i));
  await new TorchTensorDumper().dump({ "linear.weight": Tensor.from(weights, { shape: [1024, 4] }), "linear.bias": Tensor.from(new Float32Array(4).fill(0.5)) }, join(dir, "..", LONE_CKPT_FILE));
  return saved;
}

type Outcome = "detected at load" | "detected by verify" | "manifest removed: loads as a fairseq2 checkpoint, values intact";

/**
 * What a fresh manager and verifyCheckpoints make of step `stepNr` of `dir` after `damaged` (names
 * relative to the step) were damaged: an outcome, or a failure.
 */
async function judge(dir: string, stepNr: number, damaged: string[], saved: string, manifestRemoved: boolean): Promise<Outcome | ClassFailure> {
  // A damaged manifest that still parses shows as files it misdescribes: a report that blames
  // the manifest ("the manifest lists it with 34 bytes") names it.
  const names = (message: string): boolean => damaged.some((file) => message.includes(file) || (file === "manifest.json" && /manifest/i.test(message)));
  const load = await loadDamaged(dir, stepNr, saved);
  const uncaught = uncaughtAtLoad(load);
  if (uncaught !== undefined) return uncaught;
  if (load.error !== undefined && names((load.error as Error).message)) return "detected at load";
  if (load.error === undefined && !load.same) return { kind: "undetected corruption", detail: "the load returned values different from those saved" };

  const problems = await verifyDamaged(dir, stepNr);
  if (!Array.isArray(problems)) return problems;
  if (problems.some(names)) return "detected by verify";
  if (load.error === undefined && load.same && manifestRemoved && damaged.length === 1) return "manifest removed: loads as a fairseq2 checkpoint, values intact";
  return unreported(load, problems);
}

export async function corruption(options: ClassOptions): Promise<ClassResult> {
  const random = new Random(options.seed);
  const cases: Record<string, number> = Object.fromEntries(MUTATION_KINDS.map((kind) => [`${kind}, with a manifest`, 0]));
  for (const subject of UNPROTECTED_SUBJECTS) cases[`${subject} (measured)`] = 0;
  const failures: ClassFailure[] = [];
  const outcomes: Record<string, number> = {};
  const template = join(options.workDir, "template");
  const saved = await prepareTemplate(template);
  const stepFiles = new Map<number, string[]>();
  for (const stepNr of STEPS) stepFiles.set(stepNr, await filesUnder(join(template, `step_${stepNr}`)));
  const unprotected = new Map<string, UnprotectedTally>();

  const deadline = performance.now() + options.budgetMs;
  const quickCases = MUTATION_KINDS.length * 4;
  for (let index = 0; options.quick ? index < quickCases : performance.now() < deadline; index++) {
    const caseSeed = random.fork();
    const caseRandom = new Random(caseSeed);
    // Every other case measures damage where there is no manifest.
    if (index % 2 === 1) {
      const subject = UNPROTECTED_SUBJECTS[(index >> 1) % UNPROTECTED_SUBJECTS.length]!;
      countCase(cases, `${subject} (measured)`);
      const failure = await measureUnprotected(subject, caseRandom, join(options.workDir, `unprotected-${index}`), join(options.workDir, LONE_CKPT_FILE), unprotected);
      if (failure !== undefined) failures.push({ kind: failure.kind, detail: `case ${index} (case seed ${caseSeed}), ${subject}: ${failure.detail}` });
      continue;
    }
    const kind: MutationKind = MUTATION_KINDS[(index >> 1) % MUTATION_KINDS.length]!;
    const stepNr = caseRandom.pick(STEPS);
    const file = caseRandom.pick(stepFiles.get(stepNr)!);
    const dir = join(options.workDir, `case-${index}`);
    await cp(template, dir, { recursive: true });
    const stepDir = join(dir, `step_${stepNr}`);
    let other: { stepNr: number; file: string } | undefined;
    if (kind === "swap") {
      const otherStep = caseRandom.chance(0.5) ? stepNr : caseRandom.pick(STEPS.filter((s) => s !== stepNr));
      const candidates = stepFiles.get(otherStep)!.filter((f) => otherStep !== stepNr || f !== file);
      // Swapping two equal files (the carbon copies of cc/ are the same in every step) changes nothing.
      const bytesOf = (step: number, name: string): Promise<Buffer> => readFile(join(template, `step_${step}`, name));
      const differs = async (name: string): Promise<boolean> => !(await bytesOf(stepNr, file)).equals(await bytesOf(otherStep, name));
      const different: string[] = [];
      for (const name of candidates) if (await differs(name)) different.push(name);
      const otherFile = otherStep !== stepNr && different.includes(file) ? file : caseRandom.pick(different);
      other = { stepNr: otherStep, file: otherFile };
    }
    const mutation = await mutate(caseRandom, kind, join(stepDir, file), `step_${stepNr}/${file}`, other && { path: join(dir, `step_${other.stepNr}`, other.file), shown: `step_${other.stepNr}/${other.file}` });
    countCase(cases, `${kind}, with a manifest`);
    const affected = new Map<number, string[]>([[stepNr, [file]]]);
    if (other !== undefined) affected.set(other.stepNr, [...(affected.get(other.stepNr) ?? []), other.file]);
    for (const [step, damaged] of affected) {
      // Two files of one step swapped: either name is a fair report.
      const named = other !== undefined && other.stepNr === step && step === stepNr ? [file, other.file] : damaged;
      const outcome = await judge(dir, step, named, saved.get(step)!, kind === "deletion" && file === "manifest.json");
      if (typeof outcome === "string") countCase(outcomes, outcome);
      else failures.push({ kind: outcome.kind, detail: `case ${index} (case seed ${caseSeed}): ${mutation.what}; step ${step}: ${outcome.detail}` });
    }
    await rm(dir, { recursive: true, force: true });
  }
  const figures: Record<string, number | string> = {};
  for (const [outcome, count] of Object.entries(outcomes)) figures[`with a manifest: ${outcome}`] = count;
  for (const [subject, tally] of unprotected) {
    for (const [key, value] of Object.entries(tally)) figures[`${subject}: ${key}`] = value;
  }
  return { name: "Corruption", cases, failures, figures };
}
