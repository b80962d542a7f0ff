/**
 * Class 1 on S3, "Crash anywhere (S3)": the crash-anywhere workloads (foreground and background
 * saves, some large enough for a multipart upload, re-saves of a step, deletes, retention) run on
 * `s3://bucket/run-N` of one s3rver started for the class, by a writer process SIGKILLed either by
 * itself just before a chosen request that changes the bucket (torture/lib/s3-kill-switch.ts: aimed
 * at a save's object writes, at the manifest write that commits, at the parts of a multipart upload,
 * at deletes, at a background save after commitCheckpoint returned) or from outside at a random time.
 *
 * After each kill a fresh manager in this process takes the prefix over (the dead writer's lease
 * is stale: its pid no longer runs): every listed checkpoint must load with its checksums and hold
 * the values saved for it, every step must be as before the operation under way or as it leaves
 * it, a new checkpoint must save, recovery must change no committed checkpoint, and once it has
 * run nothing may be left but what the manifests name (no unnamed save directory, no multipart
 * upload of the dead writer).
 */
import { cp, readFile, rm } from "node:fs/promises";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { FileCheckpointManager } from "../../src/index.js";
import { S3FileSystem } from "../../src/s3/index.js";
import { joinPath } from "../../src/fs/paths.js";
import { saveCheckpoint } from "../../test/helpers/crash-scenarios.js";
import { startS3Server, type S3TestServer } from "../../test/helpers/s3-server.js";
import { filesUnder } from "../../test/helpers/storages-without-rename.js";
import type { S3CrashOp } from "../children/crash-s3-writer.js";
import { runChild, type ChildRun } from "../lib/child-process.js";
import { checkTakeOver } from "../lib/crash-check.js";
import { contentOf, describeOp, drawPlan, TEMPLATE_STEPS } from "../lib/crash-plan.js";
import { countCase, Random } from "../lib/random.js";
import type { ClassFailure, ClassOptions, ClassResult } from "../types.js";
import { parseStates, pointsOf, type Point, type Recording } from "./crash-anywhere.js";

const WRITER = join(dirname(dirname(fileURLToPath(import.meta.url))), "children", "crash-s3-writer.ts");
const TEMPLATE = "template";

/** Where a kill can be aimed, by the label of the request it lands before and the operation under way. */
const AIMED = {
  "kill at an object write of a save": (p: Point) => /^put .*\/save-\*\//.test(p.label),
  "kill at the commit (the manifest write)": (p: Point) => p.label.startsWith("put ") && p.label.endsWith("/manifest.json"),
  "kill during a multipart upload": (p: Point) => /^(create-upload|part \d+|complete-upload) /.test(p.label),
  "kill at a delete (replaced save, delete, retention)": (p: Point) => p.label.startsWith("delete ") || p.label.startsWith("abort-upload "),
  "kill during a background save, after commitCheckpoint returned": (p: Point) => p.afterReturned,
} as const;
type AimedKind = keyof typeof AIMED;
const AIMED_KINDS = Object.keys(AIMED) as AimedKind[];
const RANDOM_KIND = "kill at a random time, from outside";
export const S3_CRASH_KINDS = [...AIMED_KINDS, RANDOM_KIND];

/** The quick version's one workload, on a template of two steps (fewer loads per check): every aimed kind has a point in it. */
const QUICK_TEMPLATE_STEPS = [1, 2];
const QUICK_PLAN: S3CrashOp[] = [
  { type: "save", stepNr: 4, content: contentOf(4, 0), background: true, big: true },
  { type: "save", stepNr: 2, content: contentOf(2, 1), background: false },
  { type: "delete", stepNr: 1, preserveModel: false },
  { type: "keepLast", n: 1, preserveModel: false, background: true },
];

function drawS3Plan(random: Random): S3CrashOp[] {
  return drawPlan(random, random.between(4, 7)).map((op) => (op.type === "save" && random.chance(0.25) ? { ...op, big: true } : op));
}

const describeS3Op = (op: S3CrashOp): string => `${describeOp(op)}${op.type === "save" && op.big === true ? " (multipart)" : ""}`;

/** The keys of the multipart uploads s3rver holds under `prefix` (s3rver keeps each upload's key in a file). */
async function uploadsUnder(server: S3TestServer, prefix: string): Promise<string[]> {
  const keys: string[] = [];
  for (const id of await server.pendingUploads()) {
    const key = await readFile(join(server.directory, server.bucket, "._S3rver_uploads", id, "key"), "utf8").catch(() => "");
    if (key.startsWith(prefix)) keys.push(key);
  }
  return keys;
}

/** What is under `dir` that no manifest names: files of unnamed save directories, stray files. */
async function unnamedFiles(s3: S3FileSystem, dir: string): Promise<string[]> {
  const files = await filesUnder(s3, dir);
  const named = new Set<string>();
  for (const file of files.filter((f) => /^step_\d+\/manifest\.json$/.test(f))) {
    const manifest = JSON.parse(Buffer.from(await s3.readFile(joinPath(dir, file))).toString("utf8")) as { filesDir?: string };
    if (manifest.filesDir !== undefined) named.add(`${dirname(file)}/${manifest.filesDir}/`);
  }
  return files.filter((f) => !f.startsWith("cc/") && !/^step_\d+\/manifest\.json$/.test(f) && ![...named].some((prefix) => f.startsWith(prefix)));
}

interface Checker {
  server: S3TestServer;
  s3: S3FileSystem;
}

/** What a fresh manager finds on `dir` after `run` was killed; failures, or none. */
async function checkAfterKill({ server, s3 }: Checker, dir: string, run: ChildRun, recording: Recording, context: string): Promise<ClassFailure[]> {
  const doneOps = run.lines.filter((line) => line.startsWith("done-op ")).length;
  const final = recording.states.get(recording.states.size - 2)!;
  const before = recording.states.get(doneOps - 1)!;
  const after = recording.states.get(doneOps) ?? final;
  const manager = new FileCheckpointManager({ checkpointDir: dir, fileSystem: s3 });
  const failures = await checkTakeOver(manager, before, after, context);
  // Taking the prefix over (the check save's beginCheckpoint) recovered it: nothing unnamed stays.
  const prefix = `${dir.slice(`s3://${server.bucket}/`.length)}/`;
  const left = [...(await unnamedFiles(s3, dir)), ...(await uploadsUnder(server, prefix)).map((key) => `a multipart upload of ${key.slice(prefix.length)}`)];
  if (left.length > 0) failures.push({ kind: "leftovers after recovery", detail: `${context}: ${left.join(", ")}` });
  return failures;
}

/** The kind a landed kill counts as: the aimed kind when the request it hit is one, else the first that fits. */
function kindOf(point: Point | undefined, aimed: AimedKind): string {
  if (point !== undefined && AIMED[aimed](point)) return aimed;
  return AIMED_KINDS.find((kind) => point !== undefined && AIMED[kind](point)) ?? "kill at another request";
}

export async function crashS3(options: ClassOptions): Promise<ClassResult> {
  const random = new Random(options.seed);
  const cases: Record<string, number> = Object.fromEntries(S3_CRASH_KINDS.map((kind) => [kind, 0]));
  const failures: ClassFailure[] = [];
  const deadline = performance.now() + options.budgetMs;
  const server = await startS3Server();
  const s3 = new S3FileSystem({ endpoint: server.endpoint, credentials: server.credentials, retryBaseDelayMs: 5 });
  const env = { AWS_ACCESS_KEY_ID: server.credentials.accessKeyId, AWS_SECRET_ACCESS_KEY: server.credentials.secretAccessKey, AWS_REGION: "us-east-1" };
  const bucketDir = join(server.directory, server.bucket);
  let pendingCheck: Promise<void> = Promise.resolve();
  try {
    await s3.writeFile(joinPath(server.url(TEMPLATE), "cc", "tokenizer.txt"), new TextEncoder().encode("a carbon copy in every checkpoint\n"));
    const templateManager = new FileCheckpointManager({ checkpointDir: server.url(TEMPLATE), fileSystem: s3 });
    for (const stepNr of options.quick ? QUICK_TEMPLATE_STEPS : TEMPLATE_STEPS) await saveCheckpoint(templateManager, stepNr, stepNr, "small");
    await templateManager.close();
    let runs = 0;
    // A copy of the template prefix, made in s3rver's store on disk (objects with their metadata).
    const freshCopy = async (): Promise<{ dir: string; remove: () => Promise<void> }> => {
      const name = `run-${runs++}`;
      await cp(join(bucketDir, TEMPLATE), join(bucketDir, name), { recursive: true });
      return { dir: server.url(name), remove: () => rm(join(bucketDir, name), { recursive: true, force: true }) };
    };
    const missing = (): AimedKind[] => AIMED_KINDS.filter((kind) => cases[kind] === 0);
    const quickDone = (): boolean => S3_CRASH_KINDS.every((kind) => (cases[kind] ?? 0) > 0);

    for (let workload = 0; options.quick ? !quickDone() && workload < 3 : performance.now() < deadline; workload++) {
      const workloadSeed = random.fork();
      const workloadRandom = new Random(workloadSeed);
      const plan = options.quick && workload === 0 ? QUICK_PLAN : drawS3Plan(workloadRandom);
      const planText = JSON.stringify(plan);
      const context = (what: string): string => `workload ${workload} (seed ${workloadSeed}; ${plan.map(describeS3Op).join("; ")}), ${what}`;

      const recordCopy = await freshCopy();
      const recorded = await runChild(WRITER, [server.endpoint, recordCopy.dir, planText], { ...env, TORTURE_RECORD: "1" });
      await recordCopy.remove();
      if (recorded.code !== 0 || recorded.lines.at(-1) !== "done") {
        failures.push({ kind: recorded.hung ? "hang" : "workload failed", detail: context(`run to the end: code ${recorded.code}: ${recorded.stderr.slice(-2000)}`) });
        continue;
      }
      const recording: Recording = { points: pointsOf(recorded.lines, plan), states: parseStates(recorded.lines), workMs: Number(recorded.lines.find((line) => line.startsWith("work-ms "))?.slice(8) ?? 1000) };

      // Quick: a kill from outside can miss (the writer finished first): up to three tries before a new workload.
      const kills = options.quick ? AIMED_KINDS.length + 3 : 6;
      for (let k = 0; k < kills && (options.quick ? !quickDone() : performance.now() < deadline); k++) {
        const copy = await freshCopy();
        let run: ChildRun & { hung: boolean };
        let aimed: AimedKind | undefined;
        if (k === kills - 1 || (options.quick && missing().length === 0)) {
          run = await runChild(WRITER, [server.endpoint, copy.dir, planText], env, { killAfterMs: workloadRandom.int(Math.max(1, Math.floor(recording.workMs))) });
        } else {
          const available = AIMED_KINDS.filter((kind) => recording.points.some(AIMED[kind]));
          const wanted = missing().filter((kind) => available.includes(kind));
          aimed = workloadRandom.pick(wanted.length > 0 ? wanted : available);
          const target = workloadRandom.pick(recording.points.filter(AIMED[aimed]));
          run = await runChild(WRITER, [server.endpoint, copy.dir, planText], { ...env, CRASH_AT: String(target.index) });
        }
        if (run.hung) failures.push({ kind: "hang", detail: context("the writer did not finish") });
        const killed = run.signal === "SIGKILL" && run.lines.at(-1) !== "done";
        if (!killed && run.code !== 0) failures.push({ kind: "workload failed", detail: context(`exit ${run.code}: ${run.stderr.slice(-2000)}`) });
        let check: (() => Promise<ClassFailure[]>) | undefined;
        if (killed) {
          const last = pointsOf(run.lines, plan).at(-1);
          const kind = aimed === undefined ? RANDOM_KIND : kindOf(last, aimed);
          countCase(cases, kind);
          check = () => checkAfterKill({ server, s3 }, copy.dir, run, recording, context(`${kind}: killed at "${last?.label ?? "(start)"}"`));
        }
        // The check of this kill runs while the next writer runs (on its own prefix): one check at a time.
        await pendingCheck;
        pendingCheck = (async () => {
          try {
            if (check !== undefined) failures.push(...(await check()));
          } catch (error) {
            failures.push({ kind: "uncaught exception", detail: context(`the check threw ${(error as Error).stack ?? String(error)}`) });
          }
          await copy.remove();
        })();
      }
      await pendingCheck;
    }
  } finally {
    await pendingCheck;
    await server.stop();
  }
  const total = Object.values(cases).reduce((a, b) => a + b, 0);
  return { name: "Crash anywhere (S3)", cases, failures, figures: { "kills checked": total } };
}
