import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { dirname, join } from "node:path";
import { after, test } from "node:test";
import { fileURLToPath } from "node:url";

import { CheckpointLoadError, CheckpointSaveError, FileCheckpointManager, Tensor, listCheckpointDirectory } from "../src/index.js";
import { S3FileSystem } from "../src/s3/index.js";
import { joinPath } from "../src/fs/paths.js";
import { assertSameState, saveStep, trainingState } from "./helpers/checkpoint-helpers.js";
import { FaultProxy } from "./helpers/fault-proxy.js";
import { assertSucceeded, launch } from "./helpers/launch-job.js";
import { manifestCommitCases } from "./helpers/manifest-commit-cases.js";
import { startS3Server } from "./helpers/s3-server.js";
import { filesUnder } from "./helpers/storages-without-rename.js";
import { bundledOnce } from "../torture/lib/bundle-child.js";

const ROOT = dirname(dirname(fileURLToPath(import.meta.url)));
const CLI = join(ROOT, "dist", "cli", "main.js");
const CHILD = join(ROOT, "test", "helpers", "s3-save-child.ts");

const server = await startS3Server();
after(() => server.stop());
/** What a process needs to reach the test server from the standard AWS environment alone. */
const awsEnv = { AWS_ENDPOINT_URL: server.endpoint, AWS_ACCESS_KEY_ID: server.credentials.accessKeyId, AWS_SECRET_ACCESS_KEY: server.credentials.secretAccessKey, AWS_REGION: "us-east-1" };
Object.assign(process.env, awsEnv);

let runs = 0;
const newDir = async (): Promise<string> => server.url(`run-${++runs}`);
const s3 = new S3FileSystem({ endpoint: server.endpoint, credentials: server.credentials });

// The commit protocol's cases, as on a disk without rename.
manifestCommitCases({ name: "S3 (s3rver)", fileSystem: s3, newDir });

test("S3: a manager on an s3:// checkpointDir picks S3 from the AWS environment; background saves, into loads, loadModel, retention", async () => {
  const dir = await newDir();
  const manager = new FileCheckpointManager({ checkpointDir: dir });
  for (const step of [10, 20, 30]) {
    await manager.beginCheckpoint(step, { background: true });
    await manager.saveState(trainingState(step), { replicatedKeys: ["epoch"] });
    await manager.saveScore(-step, { lowerBetter: true });
    await manager.commitCheckpoint();
  }
  await manager.waitForPendingSave();
  assert.deepEqual(await manager.getStepNumbers(), [10, 20, 30]);
  const into = trainingState(0);
  const loaded = await manager.loadCheckpoint(20, { into });
  assertSameState(loaded, trainingState(20));
  assert.equal((loaded.model as Record<string, unknown>)["encoder.weight"], (into.model as Record<string, unknown>)["encoder.weight"], "loaded into the given tensors");
  assertSameState(await manager.loadModel(), trainingState(30).model);
  await manager.keepBestNCheckpoints(1, { preserveModel: true });
  assert.deepEqual(await manager.getStepNumbers({ includeModelOnly: true }), [10, 20, 30]);
  assert.deepEqual(await manager.getStepNumbers(), [30], "steps 10 and 20 keep only their models; 30 is both the best (lowest loss) and the last");
  await manager.close();
});

test("S3: the CLI works on s3:// paths: ls, inspect, verify, diff, convert, prune", async () => {
  const dir = await newDir();
  const manager = new FileCheckpointManager({ checkpointDir: dir });
  for (const step of [1, 2]) await saveStep(manager, step);
  await manager.close();
  const ckpt = (...args: string[]): Promise<{ status: number | null; stdout: string; stderr: string }> =>
    new Promise((resolve) => {
      const child = spawn(process.execPath, [CLI, ...args], { env: { ...process.env, ...awsEnv }, stdio: ["ignore", "pipe", "pipe"] });
      let stdout = "";
      let stderr = "";
      child.stdout.setEncoding("utf8").on("data", (chunk: string) => (stdout += chunk));
      child.stderr.setEncoding("utf8").on("data", (chunk: string) => (stderr += chunk));
      child.on("close", (status) => resolve({ status, stdout, stderr }));
    });

  const ls = await ckpt("ls", dir, "--json");
  assert.equal(ls.status, 0, ls.stderr);
  const listing = JSON.parse(ls.stdout) as { checkpoints: { name: string; status: string; files: string[] }[]; lastStepNr: number };
  assert.deepEqual(listing.checkpoints.map((c) => [c.name, c.status]), [["step_1", "committed"], ["step_2", "committed"]]);
  assert.equal(listing.lastStepNr, 2);

  const inspect = await ckpt("inspect", joinPath(dir, "step_2"), "--tensor", 'model.pt:model["encoder.weight"]', "--json");
  assert.equal(inspect.status, 0, inspect.stderr);
  assert.equal((JSON.parse(inspect.stdout) as { stats: { max: number } }).stats.max, 7, "arange(2, [2, 3]) ends at 7");

  const verify = await ckpt("verify", dir);
  assert.equal(verify.status, 0, verify.stdout + verify.stderr);
  assert.match(verify.stdout, /2 checkpoints verified: 2 sound, 0 damaged/);

  const same = await ckpt("diff", joinPath(dir, "step_1"), joinPath(dir, "step_1"));
  assert.equal(same.status, 0, same.stdout + same.stderr);
  const differ = await ckpt("diff", joinPath(dir, "step_1"), joinPath(dir, "step_2"), "--json");
  assert.equal(differ.status, 1, differ.stderr);
  assert.ok((JSON.parse(differ.stdout) as { changes: unknown[] }).changes.length > 0);

  const out = joinPath(dir, "exported", "model.safetensors");
  const convert = await ckpt("convert", dir, out);
  assert.equal(convert.status, 0, convert.stderr);
  assert.ok((await s3.readFile(out)).byteLength > 0, "convert wrote to s3:// too");

  const prune = await ckpt("prune", dir, "--keep-last", "1");
  assert.equal(prune.status, 0, prune.stderr);
  assert.deepEqual((await listCheckpointDirectory(dir, { fileSystem: s3 })).checkpoints.map((c) => c.name), ["step_2"]);
});

test("S3: faults mid-save (connections cut, 500/503) are retried to success or fail the save cleanly; the previous checkpoint always loads", async () => {
  const proxy = await FaultProxy.start(server.endpoint);
  try {
    const fileSystem = new S3FileSystem({ endpoint: proxy.endpoint, credentials: server.credentials, retryBaseDelayMs: 5, partSize: 5 << 20 });
    const dir = await newDir();
    const manager = new FileCheckpointManager({ checkpointDir: dir, fileSystem });
    const big = (seed: number) => ({ ...trainingState(seed), big: Tensor.from(new Float32Array(3 << 20).fill(seed)) }); // 12 MiB: multipart
    await manager.beginCheckpoint(1);
    await manager.saveState(big(1));
    await manager.commitCheckpoint();

    // Transient faults: every kind once; the save succeeds.
    const transient = [
      proxy.add({ method: "PUT", query: "partNumber", occurrences: [1], fault: { kind: "reset-request", afterBytes: 1 << 20 } }),
      proxy.add({ method: "PUT", query: "partNumber", occurrences: [3], fault: { kind: "error", status: 503, code: "SlowDown" } }),
      proxy.add({ method: "PUT", path: "manifest.json", occurrences: [1], fault: { kind: "error", status: 500, code: "InternalError" } }),
      proxy.add({ method: "GET", occurrences: [1], fault: { kind: "drop" } }),
    ];
    await manager.beginCheckpoint(2);
    await manager.saveState(big(2));
    await manager.commitCheckpoint();
    for (const rule of transient) assert.ok(rule.fired > 0, `the fault ${JSON.stringify(rule.fault)} happened`);
    assertSameState(await manager.loadCheckpoint(2), big(2));
    proxy.clear();

    // A fault on every attempt: the save fails naming the object; nothing new is listed or left.
    proxy.add({ method: "PUT", query: "partNumber", fault: { kind: "error", status: 503, code: "SlowDown" } });
    await manager.beginCheckpoint(3);
    await assert.rejects(manager.saveState(big(3)), (error: Error) => error instanceof CheckpointSaveError && /s3:\/\/.*step_3\/save-[^ ]*\/rank_0\.pt/.test(error.message) && /SlowDown|503/.test(error.message));
    proxy.clear();
    assert.deepEqual(await manager.getStepNumbers(), [1, 2]);
    assert.deepEqual(await filesUnder(s3, joinPath(dir, "step_3")), [], "the failed save's files are removed");
    assert.deepEqual(await server.pendingUploads(), [], "its multipart upload is aborted");

    // The commit itself fails: the manifest never lands, so step 4 does not exist.
    proxy.add({ method: "PUT", path: /step_4\/manifest\.json/, fault: { kind: "error", status: 500, code: "InternalError" } });
    await manager.beginCheckpoint(4);
    await manager.saveState(big(4));
    await assert.rejects(manager.commitCheckpoint(), /manifest\.json/);
    proxy.clear();
    assert.deepEqual(await manager.getStepNumbers(), [1, 2]);
    assertSameState(await manager.loadCheckpoint(2), big(2));
    await manager.close();
  } finally {
    await proxy.stop();
  }
});

test("S3: faults mid-load (a download cut mid-body, 503) are retried; a load that keeps failing is a CheckpointLoadError naming the object", async () => {
  const proxy = await FaultProxy.start(server.endpoint);
  try {
    const fileSystem = new S3FileSystem({ endpoint: proxy.endpoint, credentials: server.credentials, retryBaseDelayMs: 5 });
    const dir = await newDir();
    const manager = new FileCheckpointManager({ checkpointDir: dir, fileSystem });
    const state = { ...trainingState(5), big: Tensor.from(new Float64Array(1 << 20).map((_, i) => i)) };
    await manager.beginCheckpoint(5);
    await manager.saveState(state);
    await manager.commitCheckpoint();
    const cut = proxy.add({ method: "GET", path: "rank_0.pt", occurrences: [1], fault: { kind: "reset-response", afterBytes: 100_000 } });
    const slow = proxy.add({ method: "GET", path: "rank_0.pt", occurrences: [2], fault: { kind: "error", status: 503, code: "SlowDown" } });
    assertSameState(await manager.loadCheckpoint(5), state);
    assert.equal(cut.fired + slow.fired, 2);
    proxy.clear();
    proxy.add({ method: "GET", path: "rank_0.pt", fault: { kind: "error", status: 500, code: "InternalError" } });
    await assert.rejects(manager.loadCheckpoint(5), (error: Error) => error instanceof CheckpointLoadError && /rank_0\.pt/.test(error.message));
    proxy.clear();
    assertSameState(await manager.loadCheckpoint(5), state);
    await manager.close();
  } finally {
    await proxy.stop();
  }
});

test("S3: a writer SIGKILLed mid-upload leaves nothing listed; the next manager aborts its upload and removes its files", async () => {
  const dir = await newDir();
  const first = new FileCheckpointManager({ checkpointDir: dir, fileSystem: s3 });
  await first.beginCheckpoint(1);
  await first.saveState(trainingState(1));
  await first.commitCheckpoint();
  await first.close();

  const proxy = await FaultProxy.start(server.endpoint);
  try {
    // The child's upload of its big file stalls at its second part, so the kill lands mid-upload.
    proxy.add({ method: "PUT", query: "partNumber", occurrences: [2], fault: { kind: "delay", ms: 60_000 } });
    const child = spawn(process.execPath, [await bundledOnce(CHILD), proxy.endpoint, dir, "2"], { env: { ...process.env, ...awsEnv }, stdio: ["ignore", "pipe", "inherit"] });
    await new Promise<void>((resolve, reject) => {
      const timer = setInterval(() => {
        if (proxy.log.filter((r) => r.method === "PUT" && r.query.has("partNumber")).length >= 2) {
          clearInterval(timer);
          resolve();
        }
      }, 20);
      child.on("exit", (code) => reject(new Error(`the child ended before its upload stalled (exit ${code})`)));
    });
    child.kill("SIGKILL");
    await new Promise((resolve) => child.on("close", resolve));
  } finally {
    await proxy.stop();
  }

  assert.ok((await server.pendingUploads()).length > 0, "the killed writer left a multipart upload");
  assert.deepEqual((await filesUnder(s3, joinPath(dir, "step_2"))).map((name) => name.replace(/^save-[^/]+\//, "")), ["rank_0.pt"], "and the files it finished");
  const next = new FileCheckpointManager({ checkpointDir: dir, fileSystem: s3 });
  assert.deepEqual(await next.getStepNumbers(), [1], "nothing of the killed save is listed");
  assertSameState(await next.loadCheckpoint(1), trainingState(1));
  await next.beginCheckpoint(3); // taking the directory (the dead holder's lease included) cleans up
  await next.saveState(trainingState(3));
  await next.commitCheckpoint();
  assert.deepEqual(await server.pendingUploads(), []);
  assert.deepEqual(await filesUnder(s3, joinPath(dir, "step_2")), []);
  assert.deepEqual(await next.getStepNumbers(), [1, 3]);
  await next.close();
});

test("S3: a second manager is refused while the first holds the directory", async () => {
  const dir = await newDir();
  const first = new FileCheckpointManager({ checkpointDir: dir, fileSystem: s3 });
  await first.beginCheckpoint(1);
  const second = new FileCheckpointManager({ checkpointDir: dir, fileSystem: new S3FileSystem({ endpoint: server.endpoint, credentials: server.credentials }) });
  await assert.rejects(second.beginCheckpoint(2), /in use by another manager/);
  await first.saveState(trainingState(1));
  await first.commitCheckpoint();
  await first.close();
  await second.beginCheckpoint(2);
  await second.saveState(trainingState(2));
  await second.commitCheckpoint();
  assert.deepEqual(await second.getStepNumbers(), [1, 2]);
  await second.close();
});

test("S3: dp=2 × tp=2 ranks under ckpt launch save into one s3:// directory and load back what they saved", async () => {
  const dir = await newDir();
  const run = await launch(["--nproc", "4", "--dp", "2", "--tp", "2"], [dir, "replicated", "100"], { env: awsEnv });
  assertSucceeded(run, 4);
  for (const [rank, result] of run.results) assert.equal(result.matches, true, `rank ${rank}: ${JSON.stringify(result)}`);
  const listing = await listCheckpointDirectory(dir, { fileSystem: s3 });
  assert.deepEqual(listing.checkpoints[0]?.files, [
    "manifest.json", "model.0.pt", "model.1.pt", "rank_0.0.pt", "rank_0.1.pt", "rank_1.0.pt", "rank_1.1.pt", "replicated.0.pt", "replicated.1.pt", "score.txt",
  ]);
  const resumed = await launch(["--nproc", "4", "--dp", "2", "--tp", "2"], [dir, "resume", "0", "epoch,model"], { env: awsEnv });
  assertSucceeded(resumed, 4);
  for (const result of resumed.results.values()) assert.deepEqual([result.last, result.matches], [100, true]);
});

test("S3: ckpt serve shows an s3:// directory: its checkpoints, a step's files, a diff and verify", async () => {
  const dir = await newDir();
  const manager = new FileCheckpointManager({ checkpointDir: dir });
  for (const step of [1, 2]) await saveStep(manager, step);
  await manager.close();
  const serve = spawn(process.execPath, [CLI, "serve", dir, "--port", "0"], { env: { ...process.env, ...awsEnv }, stdio: ["ignore", "pipe", "pipe"] });
  try {
    const url = await new Promise<string>((resolve, reject) => {
      let out = "";
      serve.stdout.setEncoding("utf8").on("data", (chunk: string) => {
        out += chunk;
        const match = /(http:\/\/127\.0\.0\.1:\d+)\//.exec(out);
        if (match !== null) resolve(match[1]!);
      });
      serve.on("exit", (code) => reject(new Error(`ckpt serve exited (${code}): ${out}`)));
    });
    const get = async (path: string): Promise<Record<string, unknown>> => {
      const response = await fetch(`${url}${path}`);
      assert.equal(response.status, 200, `${path}: ${await response.clone().text()}`);
      return (await response.json()) as Record<string, unknown>;
    };
    const listing = await get("/api/checkpoints");
    assert.deepEqual((listing.checkpoints as { stepNr: number; status: string }[]).map((c) => [c.stepNr, c.status]), [[1, "committed"], [2, "committed"]]);
    const step = await get("/api/checkpoints/2");
    assert.deepEqual((step.files as { name: string }[]).map((f) => f.name), ["manifest.json", "model.pt", "rank_0.pt", "replicated.pt"]);
    const diff = await get("/api/diff?a=1&b=2");
    assert.equal(diff.identical, false);
    const verify = await (await fetch(`${url}/api/verify`)).text();
    assert.match(verify, /"sound":true/);
  } finally {
    serve.kill("SIGTERM");
  }
});
