import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { join } from "node:path";
import { test } from "node:test";

import { Tensor, TorchTensorLoader } from "../src/index.js";
import { entries, useTempDirs } from "./helpers/checkpoint-helpers.js";
import { assertSucceeded, launch, type Launch } from "./helpers/launch-job.js";
import { RedisServer, requireRedisServer } from "./helpers/redis-server.js";

const tempDir = useTempDirs("redis-launch");

/**
 * Two launchers as the two nodes of one job (2 workers each), meeting through `server`: node K
 * runs ranks 2K and 2K + 1. Resolves when both have ended.
 */
function launchTwoNodes(server: RedisServer, jobId: string, layout: string[], args: string[], onOutput?: (node: number, stdout: string) => void): Promise<Launch[]> {
  return Promise.all(
    [0, 1].map((node) =>
      launch(["--nnodes", "2", "--node-rank", String(node), "--nproc", "2", ...layout, "--rendezvous", server.url, "--job-id", jobId], args, {
        ...(onOutput === undefined ? {} : { onOutput: (stdout: string) => onOutput(node, stdout) }),
      }),
    ),
  );
}

const jobId = (): string => `test-${randomBytes(4).toString("hex")}`;

test("two launchers as two nodes over Redis: dp=2 × tp=2, every file of the layout, each rank loads back what it saved", async (t) => {
  if (!requireRedisServer(t)) return;
  const server = await RedisServer.start();
  try {
    const dir = await tempDir();
    const runs = await launchTwoNodes(server, jobId(), ["--dp", "2", "--tp", "2"], [dir, "replicated", "100"]);
    runs.forEach((run) => assertSucceeded(run, 2));
    const results = new Map([...runs[0]!.results, ...runs[1]!.results]);
    assert.deepEqual([...results.keys()].sort(), [0, 1, 2, 3], "node 1 runs ranks 2 and 3");
    for (const [rank, result] of results) {
      assert.equal(result.matches, true, `rank ${rank}: ${JSON.stringify(result)}`);
      assert.deepEqual([result.dpRank, result.tpRank], [Math.floor(rank / 2), rank % 2]);
    }
    assert.deepEqual(await entries(join(dir, "step_100")), [
      "manifest.json", "model.0.pt", "model.1.pt", "rank_0.0.pt", "rank_0.1.pt", "rank_1.0.pt", "rank_1.1.pt", "replicated.0.pt", "replicated.1.pt", "score.txt",
    ]);
    const resumed = await launchTwoNodes(server, jobId(), ["--dp", "2", "--tp", "2"], [dir, "resume", "0", "epoch,model"]);
    for (const run of resumed) {
      assertSucceeded(run, 2);
      for (const result of run.results.values()) assert.deepEqual([result.last, result.matches], [100, true]);
    }
  } finally {
    await server.stop();
  }
});

for (const [scenario, files] of [
  ["save", ["manifest.json", "rank_0.pt", "rank_1.pt", "rank_2.pt", "rank_3.pt", "replicated.pt", "score.txt"]],
  ["everything", ["manifest.json", "model.pt", "rank_0.pt", "rank_1.pt", "rank_2.pt", "rank_3.pt", "replicated.pt", "score.txt"]],
] as const) {
  test(`two nodes over Redis, dp=4 with ${scenario === "save" ? "a model that is not replicated" : 'replicatedKeys ["*"]'}: each rank loads back what it saved`, async (t) => {
    if (!requireRedisServer(t)) return;
    const server = await RedisServer.start();
    try {
      const dir = await tempDir();
      const runs = await launchTwoNodes(server, jobId(), [], [dir, scenario, "7"]);
      for (const run of runs) {
        assertSucceeded(run, 2);
        for (const [rank, result] of run.results) assert.equal(result.matches, true, `rank ${rank}: ${JSON.stringify(result)}`);
      }
      assert.deepEqual(await entries(join(dir, "step_7")), [...files]);
    } finally {
      await server.stop();
    }
  });
}

test("FSDP-style shards over Redis: each rank gets its shard back and the consolidated model.pt is whole", async (t) => {
  if (!requireRedisServer(t)) return;
  const server = await RedisServer.start();
  try {
    const dir = await tempDir();
    const runs = await launchTwoNodes(server, jobId(), [], [dir, "fsdp", "5"]);
    for (const run of runs) {
      assertSucceeded(run, 2);
      for (const [rank, result] of run.results) {
        const weight = (result.loaded as { model: Record<string, { shard: number[]; offsets: number[] }> }).model["0.weight"]!;
        assert.deepEqual(weight.offsets, [rank, 0]);
        assert.deepEqual(weight.shard, [0, 1, 2, 3].map((i) => rank * 4 + i));
      }
    }
    const model = await new TorchTensorLoader().load(join(dir, "step_5", "model.pt")) as { model: Record<string, Tensor> };
    assert.deepEqual([...model.model["0.weight"]!.data], Array.from({ length: 16 }, (_, i) => i));
    assert.deepEqual(model.model["0.weight"]!.shape, [4, 4]);
  } finally {
    await server.stop();
  }
});

test("the Redis server stopped in the middle of a save: both launches fail, nothing is committed, and a relaunch resumes from the last checkpoint", async (t) => {
  if (!requireRedisServer(t)) return;
  const dir = await tempDir();
  const first = await RedisServer.start();
  try {
    (await launchTwoNodes(first, jobId(), [], [dir, "save", "100"])).forEach((run) => assertSucceeded(run, 2));
    let killing: Promise<void> | undefined;
    const runs = await launchTwoNodes(first, jobId(), [], [dir, "slow-save", "200"], (_node, stdout) => {
      if (killing === undefined && /\] began$/m.test(stdout)) killing = first.kill();
    });
    await killing;
    for (const run of runs) {
      assert.notEqual(run.code, 0, `a launch whose rendezvous died fails:\n${run.stdout}\n${run.stderr}`);
      assert.equal(run.results.size, 0, "no rank committed");
      for (const error of run.errors.values()) assert.match(error, /CheckpointSaveError|GangError/);
    }
    assert.match(runs.map((run) => `${run.stdout}${run.stderr}`).join(""), /unreachable/, "someone says the rendezvous server is unreachable");
    assert.deepEqual((await entries(dir)).filter((name) => name.startsWith("step_") && !name.endsWith(".tmp")), ["step_100"], "nothing committed");
  } finally {
    await first.stop();
  }
  const second = await RedisServer.start();
  try {
    const resumed = await launchTwoNodes(second, jobId(), [], [dir, "resume"]);
    for (const run of resumed) {
      assertSucceeded(run, 2);
      for (const result of run.results.values()) assert.deepEqual([result.last, result.matches], [100, true]);
    }
  } finally {
    await second.stop();
  }
});
