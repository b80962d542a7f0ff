/**
 * Class 4 on S3, "Corruption (S3)": the objects of committed checkpoints on `s3://bucket/case-N` of
 * one s3rver are damaged (a byte flipped, an object cut short, extended, removed, or swapped with
 * another object of the same or another step), sampled over every object of every step. Each must
 * be detected, at load or by verifyCheckpoints, as an error naming the object; a load returning
 * values different from those saved, a change nobody reports, an error that is not the library's,
 * or one that names no file is a failure (the failure kinds of corruption.ts).
 *
 * The damage is done to s3rver's store on disk (torture/lib/s3-object-damage.ts): s3rver takes an
 * object's size from its file and its ETag is recomputed, so the server serves the damaged bytes
 * consistently, as S3 would serve an object that was stored damaged (a corrupt upload, a bad copy).
 *
 * Removing `manifest.json` is the one case told apart: on object storage a step without its
 * manifest does not exist (that is the commit), so it is no longer listed and a load says there
 * is no such checkpoint: a visible loss, never different values, counted as its own outcome.
 */
import { cp, rm } from "node:fs/promises";
import { join } from "node:path";
import { CheckpointNotFoundError, FileCheckpointManager } from "../../src/index.js";
import { S3FileSystem } from "../../src/s3/index.js";
import { joinPath } from "../../src/fs/paths.js";
import { saveCheckpoint } from "../../test/helpers/crash-scenarios.js";
import { startS3Server } from "../../test/helpers/s3-server.js";
import { filesUnder } from "../../test/helpers/storages-without-rename.js";
import { loadDamaged, loadFingerprint, uncaughtAtLoad, unreported, verifyDamaged } from "../lib/damage-checks.js";
import { MUTATION_KINDS, type MutationKind } from "../lib/mutations.js";
import { countCase, Random } from "../lib/random.js";
import { damageObject, objectBytes } from "../lib/s3-object-damage.js";
import type { ClassFailure, ClassOptions, ClassResult } from "../types.js";

const STEPS = [1, 2, 3];
const TEMPLATE = "template";
const MANIFEST_GONE = "manifest removed: the step is no longer listed (no values returned)";

type Outcome = "detected at load" | "detected by verify" | typeof MANIFEST_GONE;

/**
 * What a fresh manager and verifyCheckpoints make of step `stepNr` of `dir` after `damaged` (names
 * relative to the step: `save-<id>/rank_0.pt`) were damaged: an outcome, or a failure.
 */
async function judge(s3: S3FileSystem, dir: string, stepNr: number, damaged: string[], saved: string, manifestRemoved: boolean): Promise<Outcome | ClassFailure> {
  // A report may name an object by its path in the step or by its name in the save directory.
  const shortNames = damaged.flatMap((file) => [file, file.replace(/^save-[^/]+\//, "")]);
  const names = (message: string): boolean => shortNames.some((file) => message.includes(file) || (file === "manifest.json" && /manifest/i.test(message)));
  const load = await loadDamaged(dir, stepNr, saved, { fileSystem: s3, listFirst: true });
  const uncaught = uncaughtAtLoad(load);
  if (uncaught !== undefined) return uncaught;
  if (manifestRemoved && !load.listed && load.error instanceof CheckpointNotFoundError) return MANIFEST_GONE;
  if (load.error !== undefined && names((load.error as Error).message)) return "detected at load";
  if (load.error === undefined && !load.same) return { kind: "undetected corruption", detail: "the load returned values different from those saved" };

  const problems = await verifyDamaged(dir, stepNr, s3);
  if (!Array.isArray(problems)) return problems;
  if (problems.some(names)) return "detected by verify";
  return unreported(load, problems);
}

export async function corruptionS3(options: ClassOptions): Promise<ClassResult> {
  const random = new Random(options.seed);
  const cases: Record<string, number> = Object.fromEntries(MUTATION_KINDS.map((kind) => [`${kind}, on S3`, 0]));
  const failures: ClassFailure[] = [];
  const outcomes: Record<string, number> = {};
  const server = await startS3Server();
  const s3 = new S3FileSystem({ endpoint: server.endpoint, credentials: server.credentials, retryBaseDelayMs: 5 });
  const bucketDir = join(server.directory, server.bucket);
  try {
    const template = server.url(TEMPLATE);
    await s3.writeFile(joinPath(template, "cc", "tokenizer.txt"), new TextEncoder().encode("a carbon copy in every checkpoint\n"));
    const manager = new FileCheckpointManager({ checkpointDir: template, fileSystem: s3 });
    for (const stepNr of STEPS) await saveCheckpoint(manager, stepNr, stepNr, "small");
    const saved = new Map<number, string>();
    for (const stepNr of STEPS) saved.set(stepNr, await loadFingerprint(manager, stepNr));
    await manager.close();
    const stepFiles = new Map<number, string[]>();
    for (const stepNr of STEPS) stepFiles.set(stepNr, await filesUnder(s3, joinPath(template, `step_${stepNr}`)));
    /** Where s3rver keeps object `file` of step `stepNr` of prefix `prefix`. */
    const objectPath = (prefix: string, stepNr: number, file: string): string => join(bucketDir, prefix, `step_${stepNr}`, file);

    const deadline = performance.now() + options.budgetMs;
    const quickCases = MUTATION_KINDS.length * 2;
    for (let index = 0; options.quick ? index < quickCases : performance.now() < deadline; index++) {
      const caseSeed = random.fork();
      const caseRandom = new Random(caseSeed);
      const kind: MutationKind = MUTATION_KINDS[index % MUTATION_KINDS.length]!;
      const stepNr = caseRandom.pick(STEPS);
      const file = caseRandom.pick(stepFiles.get(stepNr)!);
      const prefix = `case-${index}`;
      await cp(join(bucketDir, TEMPLATE), join(bucketDir, prefix), { recursive: true });
      let other: { stepNr: number; file: string } | undefined;
      if (kind === "swap") {
        const otherStep = caseRandom.chance(0.5) ? stepNr : caseRandom.pick(STEPS.filter((s) => s !== stepNr));
        // Swapping two equal objects (the carbon copies are the same in every step) changes nothing.
        const mine = await objectBytes(objectPath(TEMPLATE, stepNr, file));
        const different: string[] = [];
        for (const name of stepFiles.get(otherStep)!) if (!(await objectBytes(objectPath(TEMPLATE, otherStep, name))).equals(mine)) different.push(name);
        const sameName = different.find((name) => otherStep !== stepNr && name.replace(/^save-[^/]+\//, "") === file.replace(/^save-[^/]+\//, ""));
        other = { stepNr: otherStep, file: sameName ?? caseRandom.pick(different) };
      }
      const mutation = await damageObject(
        caseRandom,
        kind,
        { path: objectPath(prefix, stepNr, file), shown: `step_${stepNr}/${file}` },
        other && { path: objectPath(prefix, other.stepNr, other.file), shown: `step_${other.stepNr}/${other.file}` },
      );
      countCase(cases, `${kind}, on S3`);
      const affected = new Map<number, string[]>([[stepNr, [file]]]);
      if (other !== undefined) affected.set(other.stepNr, [...(affected.get(other.stepNr) ?? []), other.file]);
      for (const [step, damaged] of affected) {
        const named = other !== undefined && other.stepNr === step && step === stepNr ? [file, other.file] : damaged;
        const outcome = await judge(s3, server.url(prefix), step, named, saved.get(step)!, kind === "deletion" && file === "manifest.json");
        if (typeof outcome === "string") countCase(outcomes, outcome);
        else failures.push({ kind: outcome.kind, detail: `case ${index} (case seed ${caseSeed}): ${mutation}; step ${step}: ${outcome.detail}` });
      }
      await rm(join(bucketDir, prefix), { recursive: true, force: true });
    }
  } finally {
    await server.stop();
  }
  const figures: Record<string, number | string> = {};
  for (const [outcome, count] of Object.entries(outcomes)) figures[`on S3: ${outcome}`] = count;
  return { name: "Corruption (S3)", cases, failures, figures };
}
