import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdir, readFile, symlink, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";

import { FileCheckpointManager, Tensor, listCheckpointDirectory, type StateDict } from "../src/index.js";
import { startDashboard, type Dashboard } from "../src/serve/dashboard-server.js";
import { youngDalyIntervalSeconds } from "../src/serve/save-cost.js";
import { useTempDirs } from "./helpers/checkpoint-helpers.js";
import { asVersion1Manifest, resealManifest } from "./helpers/manifest-edits.js";
import { getJson, httpRequest, openEvents, rawRequest } from "./helpers/serve-client.js";

const tempDir = useTempDirs("serve-api");
const CLI = join(import.meta.dirname, "..", "dist", "cli", "main.js");
const SECRET = "the-secret-outside-the-checkpoint-directory";

/** A training state whose tensors depend on the step: `w` holds step, step+1, ... */
function state(stepNr: number, big = false): StateDict {
  return {
    model: {
      w: Tensor.from(Float32Array.from({ length: 6 }, (_, i) => stepNr + i), { shape: [2, 3] }),
      ...(big ? { big: Tensor.from(new Float32Array(1 << 20).fill(0.5), { shape: [1024, 1024] }) } : {}),
    },
    optimizer: { step: stepNr, momentum: Tensor.from(new Float64Array([stepNr / 10])) },
  };
}

async function save(manager: FileCheckpointManager, stepNr: number, loss: number, big = false): Promise<void> {
  await manager.beginCheckpoint(stepNr);
  await manager.saveState(state(stepNr, big));
  await manager.saveScore(loss, { lowerBetter: true });
  await manager.commitCheckpoint();
}

describe("ckpt serve's API over a directory written by the manager", () => {
  let dir: string;
  let outside: string;
  let dashboard: Dashboard;
  let port: number;
  let manager: FileCheckpointManager;

  before(async () => {
    dir = await tempDir();
    outside = await tempDir();
    await writeFile(join(outside, "secret.pt"), SECRET);
    manager = new FileCheckpointManager({ checkpointDir: dir });
    await save(manager, 100, 0.9);
    await save(manager, 200, 0.5, true);
    await save(manager, 300, 0.7);
    await manager.deleteCheckpoint(100, { preserveModel: true }); // model-only
    // An unfinished save, as a crashed writer leaves it.
    await mkdir(join(dir, "step_400.tmp"));
    await writeFile(join(dir, "step_400.tmp", "model.pt"), "half");
    dashboard = await startDashboard({ checkpointDir: dir, rescanMs: 100 });
    port = dashboard.port;
  });

  after(async () => {
    await dashboard?.close();
    await manager?.close();
  });

  test("binds 127.0.0.1 by default and serves the page with a strict content security policy", async () => {
    assert.equal(dashboard.host, "127.0.0.1");
    assert.match(dashboard.url, /^http:\/\/127\.0\.0\.1:\d+\/$/);
    const page = await httpRequest(port, "GET", "/");
    assert.equal(page.status, 200);
    assert.match(page.body, /<svg id="score-chart"/);
    assert.match(String(page.headers["content-security-policy"]), /default-src 'self'/);
    const script = await httpRequest(port, "GET", "/app.js");
    assert.equal(script.status, 200);
    assert.match(String(script.headers["content-type"]), /javascript/);
  });

  test("the checkpoints table: step, score as saved with its direction, size, kind, status, last and best, save cost", async () => {
    const { status, json } = await getJson(port, "/api/checkpoints");
    assert.equal(status, 200);
    const rows = json.checkpoints as any[];
    assert.deepEqual(rows.map((r) => [r.stepNr, r.status, r.kind]), [[100, "committed", "model-only"], [200, "committed", "resumable"], [300, "committed", "resumable"], [400, "unfinished", null]]);
    const byStep = new Map(rows.map((r) => [r.stepNr, r]));
    assert.equal(byStep.get(200).scoreAsSaved, 0.5);
    assert.equal(byStep.get(200).lowerBetter, true);
    assert.equal(byStep.get(200).score, -0.5);
    assert.equal(json.bestStepNr, 200);
    assert.equal(json.lastStepNr, 300);
    assert.equal(byStep.get(200).isBest, true);
    assert.equal(byStep.get(300).isLast, true);
    const listing = await listCheckpointDirectory(dir);
    for (const c of listing.checkpoints) assert.equal(byStep.get(c.stepNr).size, c.size, `size of ${c.name}`);
    // Each save's cost, from its manifest: bytes written are the bytes of the files it lists.
    const manifest = JSON.parse(await readFile(join(dir, "step_300", "manifest.json"), "utf8"));
    const listed = Object.values(manifest.files as Record<string, { size: number }>).reduce((sum, f) => sum + f.size, 0);
    assert.equal(byStep.get(300).save.bytesWritten, listed);
    assert.ok(byStep.get(300).save.durableMs >= 0 && byStep.get(300).save.blockedMs >= 0);
    assert.equal(typeof byStep.get(300).createdAt, "number");
    assert.equal(byStep.get(400).save, null);
  });

  test("one checkpoint's files and tensor tree: dtype, shape and bytes of every tensor", async () => {
    const { status, json } = await getJson(port, "/api/checkpoints/200");
    assert.equal(status, 200);
    assert.deepEqual(json.files.map((f: any) => f.name), ["manifest.json", "model.pt", "rank_0.pt", "score.txt"]);
    const model = json.tensorFiles.find((f: any) => f.name === "model.pt");
    assert.deepEqual(model.tensors.map((t: any) => [t.key, t.dtype, t.shape, t.bytes]), [["model.w", "float32", [2, 3], 24], ["model.big", "float32", [1024, 1024], 4 << 20]]);
    const rank = json.tensorFiles.find((f: any) => f.name === "rank_0.pt");
    assert.deepEqual(rank.tensors.map((t: any) => [t.key, t.dtype, t.shape]), [["optimizer.momentum", "float64", [1]]]);
  });

  test("statistics of one tensor on demand; a 4 MiB tensor comes back as a few numbers, never whole", async () => {
    const small = await getJson(port, `/api/checkpoints/300/tensor?file=model.pt&key=${encodeURIComponent("model.w")}`);
    assert.equal(small.status, 200);
    assert.deepEqual([small.json.stats.numel, small.json.stats.min, small.json.stats.max, small.json.stats.mean], [6, 300, 305, 302.5]);
    const big = await httpRequest(port, "GET", "/api/checkpoints/200/tensor?file=model.pt&key=model.big");
    assert.equal(big.status, 200);
    assert.ok(big.body.length < 1000, `the answer has ${big.body.length} characters`);
    const stats = JSON.parse(big.body).stats;
    assert.deepEqual([stats.numel, stats.min, stats.max, stats.mean], [1 << 20, 0.5, 0.5, 0.5]);
    const missing = await getJson(port, "/api/checkpoints/300/tensor?file=model.pt&key=nope");
    assert.equal(missing.status, 400);
    assert.match(missing.json.error.message, /no tensor nope/);
  });

  test("the diff of two steps, tensor by tensor", async () => {
    const { status, json } = await getJson(port, "/api/diff?a=200&b=300");
    assert.equal(status, 200);
    assert.equal(json.identical, false);
    const byKey = new Map(json.changes.map((c: any) => [c.key, c]));
    assert.deepEqual(byKey.get("model.pt:w"), { key: "model.pt:w", change: "values", maxAbsDiff: 100, differing: 6, numel: 6, dtype: "float32", shape: [2, 3] });
    assert.equal((byKey.get("model.pt:big") as any).change, "only-in-a");
    const same = await getJson(port, "/api/diff?a=300&b=300");
    assert.equal(same.json.identical, true);
    assert.equal((await getJson(port, "/api/diff?a=300")).status, 400);
    assert.equal((await getJson(port, "/api/diff?a=300&b=999")).status, 404);
  });

  test("disk use per step splits model, training state and the rest", async () => {
    const { json } = await getJson(port, "/api/disk");
    for (const s of json.steps) assert.equal(s.byKind.model + s.byKind.trainingState + s.byKind.other, s.size, s.name);
    const modelOnly = json.steps.find((s: any) => s.stepNr === 100);
    assert.equal(modelOnly.byKind.trainingState, 0);
    assert.ok(json.steps.find((s: any) => s.stepNr === 300).byKind.trainingState > 0);
    assert.equal(json.leftovers, 4); // the unfinished save's 4 bytes
  });

  test("save cost per step and Young/Daly's interval for the MTBF given", async () => {
    const { json } = await getJson(port, "/api/costs?mtbf=3600");
    assert.deepEqual(json.steps.map((s: any) => s.stepNr), [100, 200, 300]);
    assert.equal(json.mtbfSeconds, 3600);
    assert.equal(json.youngDalySeconds, youngDalyIntervalSeconds(json.meanBlockedSeconds, 3600));
    assert.equal(youngDalyIntervalSeconds(2, 3600), 120);
    assert.equal((await getJson(port, "/api/costs?mtbf=-1")).status, 400);
    assert.equal((await getJson(port, "/api/costs")).json.mtbfSeconds, 24 * 3600);
  });

  test("verify streams progress, then the report; a damaged step is named", async () => {
    const events = await openEvents(port, "/api/verify");
    const all = await events.all();
    const progress = all.filter((e) => e.event === "progress");
    assert.ok(progress.length > 0);
    for (const p of progress) assert.ok(p.data.done <= p.data.total);
    assert.equal(progress.at(-1)!.data.done, progress.at(-1)!.data.total);
    const result = all.find((e) => e.event === "result")!.data;
    assert.equal(result.sound, true);
    assert.deepEqual(result.checkpoints.map((c: any) => [c.name, c.status]), [["step_100", "sound"], ["step_200", "sound"], ["step_300", "sound"], ["step_400.tmp", "unfinished"]]);
    assert.equal((await getJson(port, "/api/verify?step=999")).status, 404);
  });

  test("a new checkpoint and a deletion are announced as events, and the deleted one stays in the session's history", async () => {
    const events = await openEvents(port, "/api/events");
    const hello = await events.next("hello");
    await save(manager, 500, 0.4);
    const changed = await events.next("changed");
    assert.ok(changed.data.version > hello.data.version);
    let { json } = await getJson(port, "/api/checkpoints");
    assert.ok(json.checkpoints.some((c: any) => c.stepNr === 500 && c.status === "committed"));
    await manager.deleteCheckpoint(300);
    await events.next("changed");
    ({ json } = await getJson(port, "/api/checkpoints"));
    assert.deepEqual(json.history.map((e: any) => [e.stepNr, e.fate]), [[100, "model-only"], [200, "kept"], [300, "deleted"], [500, "kept"]]);
    assert.equal(json.history.find((e: any) => e.stepNr === 300).scoreAsSaved, 0.7);
    events.close();
  });

  test("a checkpoint that came and went while no page asked is still marked deleted", async () => {
    const events = await openEvents(port, "/api/events");
    await events.next("hello");
    const seen = (change: any): boolean => change.data.checkpoints.some((c: any) => c.name === "step_700");
    await save(manager, 700, 0.6);
    while (!seen(await events.next("changed"))); // seen by the server's watch, not by a request
    await manager.deleteCheckpoint(700);
    while (seen(await events.next("changed")));
    events.close();
    const { json } = await getJson(port, "/api/checkpoints");
    assert.equal(json.checkpoints.some((c: any) => c.stepNr === 700), false);
    const { size, ...entry } = json.history.find((e: any) => e.stepNr === 700);
    assert.deepEqual(entry, { stepNr: 700, fate: "deleted", scoreAsSaved: 0.6, score: -0.6, lowerBetter: true });
    assert.ok(size > 0);
  });

  test("bad paths and parameters are refused with a clear status", async () => {
    for (const [path, status] of [
      ["/api/checkpoints/abc", 400],
      ["/api/checkpoints/-1", 400],
      ["/api/checkpoints/999", 404],
      ["/api/checkpoints/200/nothing", 404],
      ["/api/nothing", 404],
      ["/nothing.html", 404],
      ["/api/checkpoints/200/tensor?key=model.w", 400],
      ["/api/checkpoints/200/tensor?file=score.txt&key=x", 404],
      ["/api/checkpoints/200/tensor?file=../../secret.pt&key=x", 400],
      [`/api/checkpoints/200/tensor?file=${encodeURIComponent(join(outside, "secret.pt"))}&key=x`, 400],
      ["/api/checkpoints/200/tensor?file=cc%2F..%2F..%2Fsecret.pt&key=x", 400],
    ] as const) {
      const answer = await httpRequest(port, "GET", path);
      assert.equal(answer.status, status, `${path}: ${answer.body}`);
      assert.match(JSON.parse(answer.body).error.message, /\S/);
    }
    assert.equal((await httpRequest(port, "DELETE", "/api/checkpoints/200")).status, 405);
  });

  test("traversal attempts sent byte for byte are refused and reveal nothing", async () => {
    for (const target of [
      "/../../../../etc/passwd",
      "/api/../../etc/passwd",
      "/%2e%2e/%2e%2e/etc/passwd",
      "/api/checkpoints/200/..%2f..%2f..%2fetc%2fpasswd",
      "/%2E%2E%5C%2E%2E%5Cetc%5Cpasswd",
      "//etc/passwd",
      "/./app.js",
      "/app.js/../../package.json",
      `http://127.0.0.1:${port}/../etc/passwd`,
      "*",
    ]) {
      const answer = await rawRequest(port, `GET ${target} HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nConnection: close\r\n\r\n`);
      assert.equal(answer.status, 400, `${target}: ${answer.text.split("\r\n")[0]}`);
      assert.doesNotMatch(answer.text, /root:|"name": "ckpt"|ckpt serve<\/title>/);
    }
  });

  test("a file that is a symlink out of the directory is never read", async () => {
    await save(manager, 600, 0.3);
    await symlink(join(outside, "secret.pt"), join(dir, "step_600", "leak.pt"));
    for (const path of ["/api/checkpoints/600/tensor?file=leak.pt&key=x", "/api/checkpoints/600", "/api/diff?a=200&b=600"]) {
      const answer = await httpRequest(port, "GET", path);
      assert.equal(answer.status, 403, `${path}: ${answer.body}`);
      assert.match(answer.body, /outside the checkpoint directory/);
      assert.doesNotMatch(answer.body, new RegExp(SECRET));
    }
    // verify reports the link as what is wrong with the step, as `ckpt verify` does, without following it.
    const verify = await httpRequest(port, "GET", "/api/verify?step=600");
    assert.equal(verify.status, 200, verify.body);
    assert.match(verify.body, /"file":"leak\.pt","problem":"is a symbolic link: a checkpoint's files must be inside it \(not read\)"/);
    assert.match(verify.body, /"status":"damaged"/);
    assert.doesNotMatch(verify.body, new RegExp(SECRET));
  });

  test("a Host header that is not the bound address is refused with 403 (DNS rebinding)", async () => {
    for (const host of ["evil.example", `evil.example:${port}`, `127.0.0.1:${port + 1}`, "127.0.0.1"]) {
      for (const path of ["/", "/api/checkpoints", "/api/events"]) {
        const answer = await httpRequest(port, "GET", path, { headers: { host } });
        assert.equal(answer.status, 403, `Host ${host}, ${path}`);
        assert.doesNotMatch(answer.body, /step_200/);
      }
    }
    const noHost = await rawRequest(port, "GET /api/checkpoints HTTP/1.0\r\n\r\n");
    assert.equal(noHost.status, 403);
    for (const host of [`localhost:${port}`, `127.0.0.1:${port}`, `LOCALHOST:${port}`]) {
      assert.equal((await httpRequest(port, "GET", "/api/checkpoints", { headers: { host } })).status, 200, host);
    }
  });

  test("pruning is refused without --allow-prune and changes nothing", async () => {
    const before = (await listCheckpointDirectory(dir)).checkpoints.map((c) => c.name);
    const answer = await httpRequest(port, "POST", "/api/prune", { headers: { "content-type": "application/json" }, body: JSON.stringify({ keepLast: 1 }) });
    assert.equal(answer.status, 403);
    assert.match(answer.body, /--allow-prune/);
    const deletion = await httpRequest(port, "POST", "/api/prune", { headers: { "content-type": "application/json" }, body: JSON.stringify({ delete: 200 }) });
    assert.equal(deletion.status, 403);
    assert.deepEqual((await listCheckpointDirectory(dir)).checkpoints.map((c) => c.name), before);
  });
});

describe("ckpt serve with --allow-prune", () => {
  test("prunes with the manager's retention when asked by the page, never from another origin or a form", async () => {
    const dir = await tempDir();
    const manager = new FileCheckpointManager({ checkpointDir: dir });
    for (const step of [1, 2, 3]) await save(manager, step, step);
    await manager.close();
    const dashboard = await startDashboard({ checkpointDir: dir, allowPrune: true });
    try {
      const json = { "content-type": "application/json" };
      const foreign = await httpRequest(dashboard.port, "POST", "/api/prune", { headers: { ...json, origin: "http://evil.example" }, body: JSON.stringify({ keepLast: 1 }) });
      assert.equal(foreign.status, 403);
      const form = await httpRequest(dashboard.port, "POST", "/api/prune", { headers: { "content-type": "text/plain" }, body: JSON.stringify({ keepLast: 1 }) });
      assert.equal(form.status, 415);
      assert.equal((await httpRequest(dashboard.port, "POST", "/api/prune", { headers: json, body: JSON.stringify({ keepLast: 0 }) })).status, 400);
      assert.equal((await httpRequest(dashboard.port, "GET", "/api/prune")).status, 405);
      assert.deepEqual((await listCheckpointDirectory(dir)).checkpoints.map((c) => c.stepNr), [1, 2, 3]);
      const pruned = await httpRequest(dashboard.port, "POST", "/api/prune", { headers: { ...json, origin: `http://127.0.0.1:${dashboard.port}` }, body: JSON.stringify({ keepLast: 1 }) });
      assert.equal(pruned.status, 200, pruned.body);
      assert.deepEqual(JSON.parse(pruned.body).deleted, [1, 2]);
      assert.deepEqual((await listCheckpointDirectory(dir)).checkpoints.map((c) => c.stepNr), [3]);
    } finally {
      await dashboard.close();
    }
  });
});

describe("the manifest's save cost", () => {
  test("a manifest without it (written before ckpt recorded it) still loads; a malformed one is named", async () => {
    const dir = await tempDir();
    const manager = new FileCheckpointManager({ checkpointDir: dir });
    await save(manager, 1, 0.5);
    await save(manager, 2, 0.5);
    await manager.close();
    const path1 = join(dir, "step_1", "manifest.json");
    const old = JSON.parse(await readFile(path1, "utf8"));
    assert.deepEqual(Object.keys(old.save).sort(), ["blockedMs", "bytesWritten", "durableMs"]);
    delete old.save;
    await writeFile(path1, asVersion1Manifest(old));
    const path2 = join(dir, "step_2", "manifest.json");
    const bad = JSON.parse(await readFile(path2, "utf8"));
    bad.save.blockedMs = -1;
    await writeFile(path2, resealManifest(bad));
    const reader = new FileCheckpointManager({ checkpointDir: dir });
    assert.deepEqual(Object.keys(await reader.loadModel(1)), ["w"]);
    await assert.rejects(reader.loadModel(2), /manifest\.json of step 2 is damaged: save\.blockedMs is not a non-negative number/);
    await reader.close();
  });
});

describe("ckpt serve on the command line", () => {
  test("--help describes it, and a missing directory is a one-line error", () => {
    const help = spawnSync(process.execPath, [CLI, "serve", "--help"], { encoding: "utf8" });
    assert.equal(help.status, 0);
    assert.match(help.stdout, /--allow-prune/);
    assert.match(help.stdout, /127\.0\.0\.1/);
    const missing = spawnSync(process.execPath, [CLI, "serve", "/nonexistent/checkpoints"], { encoding: "utf8" });
    assert.equal(missing.status, 2);
    assert.equal(missing.stderr, "ckpt: /nonexistent/checkpoints: no such directory\n");
  });
});
