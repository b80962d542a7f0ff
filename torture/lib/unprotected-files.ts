/**
 * Damage where no manifest holds checksums, measured rather than required: a fairseq2 checkpoint
 * directory (test/fixtures/fairseq2, written by fairseq2 itself), a lone `.pt` written by ckpt, and
 * a lone `.pt` written by torch.save (test/fixtures). What catches damage there is the zip's CRC-32
 * of each entry, the pickle's own structure and the sizes it records; the tally says how much.
 * An error that is not the library's is still a failure here.
 */
import { cp, readdir, readFile } from "node:fs/promises";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { FileCheckpointManager, TorchTensorLoader, isCkptError, verifyCheckpoints } from "../../src/index.js";
import { fingerprint } from "./fingerprint.js";
import { mutate, zipRegion, type MutationKind } from "./mutations.js";
import type { Random } from "./random.js";
import type { ClassFailure } from "../types.js";

const FIXTURES = join(dirname(dirname(dirname(fileURLToPath(import.meta.url)))), "test", "fixtures");
const FAIRSEQ2 = join(FIXTURES, "fairseq2", "dp1-custom-key");

export const UNPROTECTED_SUBJECTS = ["fairseq2 directory", "lone .pt written by ckpt", "lone .pt written by torch"] as const;
export type UnprotectedSubject = (typeof UNPROTECTED_SUBJECTS)[number];
export type UnprotectedTally = Record<string, number>;

const FILE_DAMAGE: MutationKind[] = ["byte flip", "truncation", "extension"];

function tally(tallies: Map<string, UnprotectedTally>, subject: string, key: string): void {
  const counts = tallies.get(subject) ?? {};
  counts[key] = (counts[key] ?? 0) + 1;
  tallies.set(subject, counts);
}

/** Loads a lone file: its fingerprint, or the error. */
async function loadLone(path: string): Promise<{ print?: string; error?: unknown }> {
  try {
    return { print: fingerprint(await new TorchTensorLoader().load(path)) };
  } catch (error) {
    return { error };
  }
}

/** Damages one subject once and tallies the result; returns a failure only for a foreign error. */
export async function measureUnprotected(subject: UnprotectedSubject, random: Random, dir: string, loneCkptFile: string, tallies: Map<string, UnprotectedTally>): Promise<ClassFailure | undefined> {
  if (subject === "fairseq2 directory") return measureDirectory(random, dir, tallies);
  const source =
    subject === "lone .pt written by ckpt"
      ? loneCkptFile
      : join(FIXTURES, random.pick((await readdir(FIXTURES)).filter((name) => name.endsWith(".pt") && !name.startsWith("legacy-"))));
  const path = join(dir, "file.pt");
  await cp(source, path);
  const pristine = await readFile(path);
  const before = await loadLone(path);
  if (before.print === undefined) return { kind: "setup", detail: `${source} does not load: ${String(before.error)}` };
  const kind = random.pick(FILE_DAMAGE);
  const mutation = await mutate(random, kind, path, source);
  const after = await loadLone(path);
  if (after.error !== undefined && !isCkptError(after.error)) return { kind: "uncaught exception", detail: `${mutation.what}: ${(after.error as Error).stack ?? String(after.error)}` };
  const verdict = after.error !== undefined ? "detected" : after.print === before.print ? "undetected, values intact" : "undetected, values different";
  tally(tallies, subject, `${kind}: ${verdict}`);
  if (kind === "byte flip" && mutation.offset !== undefined) tally(tallies, subject, `flip in ${await zipRegion(pristine, mutation.offset)}: ${verdict}`);
  return undefined;
}

async function measureDirectory(random: Random, dir: string, tallies: Map<string, UnprotectedTally>): Promise<ClassFailure | undefined> {
  await cp(FAIRSEQ2, dir, { recursive: true });
  const steps = (await readdir(dir)).filter((name) => /^step_\d+$/.test(name));
  const stepName = random.pick(steps);
  const stepNr = Number(stepName.slice(5));
  const files = (await readdir(join(dir, stepName))).sort();
  const load = async (): Promise<{ print?: string; error?: unknown }> => {
    const manager = new FileCheckpointManager({ checkpointDir: dir });
    try {
      return { print: fingerprint(await manager.loadCheckpoint(stepNr)) };
    } catch (error) {
      return { error };
    } finally {
      await manager.close();
    }
  };
  const before = await load();
  if (before.print === undefined) return { kind: "setup", detail: `the fairseq2 fixture does not load: ${String(before.error)}` };
  const kind = random.pick<MutationKind>([...FILE_DAMAGE, "deletion", "swap"]);
  const file = random.pick(files);
  const other = kind === "swap" ? random.pick(files.filter((f) => f !== file)) : undefined;
  const mutation = await mutate(random, kind, join(dir, stepName, file), `${stepName}/${file}`, other === undefined ? undefined : { path: join(dir, stepName, other), shown: `${stepName}/${other}` });
  const after = await load();
  if (after.error !== undefined && !isCkptError(after.error)) return { kind: "uncaught exception", detail: `${mutation.what}: ${(after.error as Error).stack ?? String(after.error)}` };
  let verdict: string;
  if (after.error !== undefined) verdict = "detected at load";
  else {
    let sound = true;
    try {
      sound = (await verifyCheckpoints(dir, { stepNr })).sound;
    } catch (error) {
      if (!isCkptError(error)) return { kind: "uncaught exception", detail: `verify after ${mutation.what}: ${(error as Error).stack ?? String(error)}` };
      sound = false;
    }
    verdict = !sound ? "detected by verify" : after.print === before.print ? "undetected, values intact" : "undetected, values different";
  }
  tally(tallies, "fairseq2 directory", `${kind}: ${verdict}`);
  return undefined;
}
