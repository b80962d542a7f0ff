import assert from "node:assert/strict";
import { test } from "node:test";

import {
  FakeGang,
  GangError,
  InProcessGang,
  InvalidArgumentError,
  MAX_ALL_REDUCE_ELEMENTS,
  closeGangs,
  initGangs,
  type JsonValue,
} from "../src/index.js";
import { assertProcessesGone, jsonMarkers, launcherLines, markers, runLaunch, worker, workerPids } from "./helpers/launch-helpers.js";

// Real processes through the built `ckpt launch`; a generous per-test timeout, never a timed assert.
const SLOW = { timeout: 60_000 };

interface GangErrorReport {
  name: string;
  code: string;
  rank: number | null;
  message: string;
}

interface CollectivesReport {
  rank: number;
  localRank: number;
  root: { rank: number; size: number };
  dp: { rank: number; size: number };
  tp: { rank: number; size: number };
  rootGather: JsonValue[];
  dpGather: JsonValue[];
  tpGather: JsonValue[];
  rootSum: number[];
  dpSum: number[];
  tpSum: number[];
  again: JsonValue[][];
  secondInit: string;
}

test("four workers over the launcher's IPC channel gather, reduce and meet in barriers within their dp and tp groups (dp=2 × tp=2)", SLOW, async () => {
  const run = await runLaunch(["--nproc", "4", "--dp", "2", "--tp", "2", ...worker("collectives")]);
  assertProcessesGone([run.launcherPid, ...workerPids(run.stdout)]);
  assert.equal(run.status, 0, run.stderr);
  const reports = jsonMarkers<CollectivesReport>(run.stdout, "RESULT");
  assert.deepEqual([...reports.keys()].sort(), [0, 1, 2, 3]);
  for (const [rank, r] of reports) {
    // rank = dp_rank × tp + tp_rank: tp groups are consecutive ranks, dp groups share the tp rank.
    const dpRank = Math.floor(rank / 2);
    const tpRank = rank % 2;
    const tpMembers = [dpRank * 2, dpRank * 2 + 1];
    const dpMembers = [tpRank, tpRank + 2];
    assert.equal(r.rank, rank);
    assert.equal(r.localRank, rank);
    assert.deepEqual(r.root, { rank, size: 4 });
    assert.deepEqual(r.dp, { rank: dpRank, size: 2 });
    assert.deepEqual(r.tp, { rank: tpRank, size: 2 });
    assert.deepEqual(r.rootGather, [{ from: 0 }, { from: 1 }, { from: 2 }, { from: 3 }]);
    assert.deepEqual(r.dpGather, dpMembers);
    assert.deepEqual(r.tpGather, tpMembers.map((m) => `tp-${m}`));
    assert.deepEqual(r.rootSum, [6, 3, 4]);
    assert.deepEqual(r.dpSum, [dpMembers[0]! + dpMembers[1]!]);
    assert.deepEqual(r.tpSum, [tpMembers[0]! + tpMembers[1]!, -(tpMembers[0]! + tpMembers[1]!)]);
    assert.deepEqual(r.again, [tpMembers, dpMembers], "each gang counts its own rounds, whatever order ranks call them in");
    assert.match(r.secondInit, /^InvalidArgumentError: initGangs was already called in this process/);
  }
});

test("a worker killed with SIGKILL while the others wait in a barrier is a GangError naming it on every other rank, and the launch fails naming it", SLOW, async () => {
  const run = await runLaunch(["--nproc", "4", ...worker("die-in-barrier")], { env: { CKPT_TEST_TARGET: "2" } });
  assertProcessesGone([run.launcherPid, ...workerPids(run.stdout)]);
  assert.equal(run.status, 1, run.stderr);
  const lines = launcherLines(run.stderr);
  assert.equal(lines.length, 1, run.stderr);
  assert.match(lines[0]!, /^ckpt: launch: rank 2 \(pid \d+\) was killed by SIGKILL$/);
  const errors = jsonMarkers<GangErrorReport>(run.stdout, "GANG_ERROR");
  assert.deepEqual([...errors.keys()].sort(), [0, 1, 3]);
  for (const error of errors.values()) {
    assert.equal(error.name, "GangError");
    assert.equal(error.rank, 2);
    assert.match(error.message, /barrier in gang root .*rank 2 \(pid \d+\) was killed by SIGKILL/);
  }
  assert.equal(markers(run.stdout, "BARRIER OK").size, 0);
});

test("a worker that throws sends its error to every other rank, and the launch names it with its exit code", SLOW, async () => {
  const run = await runLaunch(["--nproc", "3", ...worker("throw")], { env: { CKPT_TEST_TARGET: "1" } });
  assertProcessesGone([run.launcherPid, ...workerPids(run.stdout)]);
  assert.equal(run.status, 1, run.stderr);
  assert.equal(launcherLines(run.stderr).length, 1, run.stderr);
  assert.match(launcherLines(run.stderr)[0]!, /^ckpt: launch: rank 1 \(pid \d+\) failed: Error: boom from rank 1; it exited with code 1$/);
  const errors = jsonMarkers<GangErrorReport>(run.stdout, "GANG_ERROR");
  assert.deepEqual([...errors.keys()].sort(), [0, 2]);
  for (const error of errors.values()) {
    assert.equal(error.rank, 1);
    assert.equal(error.code, "GANG_ABORTED");
    assert.match(error.message, /rank 1 \(pid \d+\) failed: Error: boom from rank 1/);
  }
});

test("a worker that exits 0 while the others wait in a collective makes their collective fail naming it instead of hanging", SLOW, async () => {
  const run = await runLaunch(["--nproc", "3", ...worker("exit-early")], { env: { CKPT_TEST_TARGET: "0" } });
  assertProcessesGone([run.launcherPid, ...workerPids(run.stdout)]);
  assert.equal(run.status, 1, run.stderr);
  const errors = jsonMarkers<GangErrorReport>(run.stdout, "GANG_ERROR");
  assert.deepEqual([...errors.keys()].sort(), [1, 2]);
  for (const error of errors.values()) {
    assert.equal(error.rank, 0);
    assert.equal(error.code, "GANG_MEMBER_LEFT");
    assert.match(error.message, /rank 0 left the job .* before joining round 1 of group root/);
  }
  // The worker that exited 0 did not fail; the launch fails because the others did.
  assert.match(launcherLines(run.stderr)[0]!, /^ckpt: launch: rank [12] \(pid \d+\) exited with code 3$/);
});

test("a worker that closes its gangs and runs on makes the collectives that wait for it fail naming it", SLOW, async () => {
  const run = await runLaunch(["--nproc", "2", ...worker("close-and-linger")], { env: { CKPT_TEST_TARGET: "1" } });
  assertProcessesGone([run.launcherPid, ...workerPids(run.stdout)]);
  assert.equal(run.status, 1, run.stderr);
  const errors = jsonMarkers<GangErrorReport>(run.stdout, "GANG_ERROR");
  assert.deepEqual([...errors.keys()], [0]);
  assert.equal(errors.get(0)!.rank, 1);
  assert.match(errors.get(0)!.message, /rank 1 left the job \(its process ended, or it closed its gangs\) before joining round 1 of group root/);
  assert.match(launcherLines(run.stderr)[0]!, /^ckpt: launch: rank 0 \(pid \d+\) exited with code 3$/);
});

test("a collective that a live rank never joins times out with a GangError, and the launch names the rank it waited for", SLOW, async () => {
  const run = await runLaunch(["--nproc", "3", "--grace-period", "0.5", ...worker("timeout")], {
    // Round 0 runs under the same timeout: 1.5 s lets a rank that the loaded machine holds back join it.
    env: { CKPT_TEST_TARGET: "1", CKPT_COLLECTIVE_TIMEOUT_MS: "1500" },
  });
  assertProcessesGone([run.launcherPid, ...workerPids(run.stdout)]);
  assert.equal(run.status, 1, run.stderr);
  const errors = jsonMarkers<GangErrorReport>(run.stdout, "GANG_ERROR");
  assert.deepEqual([...errors.keys()].sort(), [0, 2]);
  for (const error of errors.values()) assert.equal(error.name, "GangError");
  // The first to time out aborts the job; the other either timed out too or got that abort.
  assert.ok([...errors.values()].some((e) => e.code === "GANG_TIMEOUT" && /timed out after 1500 ms/.test(e.message)), JSON.stringify([...errors.values()]));
  assert.match(launcherLines(run.stderr)[0]!, /^ckpt: launch: rank [02] \(pid \d+\) failed: .*timed out after 1500 ms.*; it was waiting in round 1 of group root for rank 1; it exited with code 3$/);
});

test("a worker that ends without closeGangs still exits: the IPC channel does not keep it alive", SLOW, async () => {
  const run = await runLaunch(["--nproc", "2", ...worker("finish-without-close")]);
  assertProcessesGone([run.launcherPid, ...workerPids(run.stdout)]);
  assert.equal(run.status, 0, run.stderr);
  assert.deepEqual([...markers(run.stdout, "DONE").keys()].sort(), [0, 1]);
});

test("without the launcher's variables initGangs returns single-process gangs", async () => {
  const gangs = await initGangs({ env: {} });
  for (const gang of [gangs.root, gangs.dp, gangs.tp]) assert.deepEqual([gang.rank, gang.size], [0, 1]);
  assert.deepEqual(await gangs.root.allGather("x"), ["x"]);
  await closeGangs(gangs);
});

test("initGangs refuses a bad launcher environment with an error naming the variable", async () => {
  const base = { CKPT_RANK: "1", CKPT_WORLD_SIZE: "4", CKPT_RENDEZVOUS: "ipc" };
  const cases: [Record<string, string>, RegExp][] = [
    [{ CKPT_RANK: "1" }, /CKPT_WORLD_SIZE is not set/],
    [{ ...base, CKPT_RANK: "4" }, /CKPT_RANK must be an integer in \[0, 3\], got "4"/],
    [{ ...base, CKPT_RANK: "-1" }, /CKPT_RANK must be an integer/],
    [{ ...base, CKPT_WORLD_SIZE: "two" }, /CKPT_WORLD_SIZE must be an integer/],
    [{ ...base, CKPT_DP_SIZE: "3", CKPT_TP_SIZE: "2" }, /CKPT_DP_SIZE × CKPT_TP_SIZE must equal CKPT_WORLD_SIZE, got 3 × 2 ≠ 4/],
    [{ ...base, CKPT_TP_SIZE: "3" }, /CKPT_TP_SIZE \(3\) must divide CKPT_WORLD_SIZE \(4\)/],
    [{ ...base, CKPT_LOCAL_RANK: "9" }, /CKPT_LOCAL_RANK must be an integer/],
    [{ ...base, CKPT_RENDEZVOUS: "tcp://x" }, /CKPT_RENDEZVOUS must be "ipc" or a redis:\/\/HOST:PORT address/],
    [{ ...base, CKPT_RENDEZVOUS: "redis://127.0.0.1:1" }, /CKPT_JOB_ID is required with a Redis rendezvous/],
    [{ ...base, CKPT_COLLECTIVE_TIMEOUT_MS: "soon" }, /CKPT_COLLECTIVE_TIMEOUT_MS must be a whole number of milliseconds/],
    [{ ...base, CKPT_COLLECTIVE_TIMEOUT_MS: "0" }, /CKPT_COLLECTIVE_TIMEOUT_MS must be a whole number of milliseconds in \[1, /],
    // This test process was not started by the launcher: it has no IPC channel.
    [base, /CKPT_RENDEZVOUS=ipc but this process has no IPC channel to ckpt launch.*node --import tsx/],
  ];
  for (const [env, message] of cases) {
    await assert.rejects(initGangs({ env }), (error: unknown) => {
      assert.ok(error instanceof InvalidArgumentError, `${JSON.stringify(env)}: ${String(error)}`);
      assert.match(error.message, message);
      return true;
    });
  }
});

test("allReduceSum adds every member's values in rank order, on in-process and fake gangs alike", async () => {
  const gangs = InProcessGang.create(3);
  const sums = await Promise.all(gangs.map((gang) => gang.allReduceSum(Float32Array.of(gang.rank + 0.25, -1, 2 ** -30))));
  for (const sum of sums) assert.deepEqual(Array.from(sum), [3.75, -3, 3 * 2 ** -30]);
  assert.notEqual(sums[0], sums[1], "each member gets its own array");
  assert.deepEqual(Array.from(await new FakeGang({ rank: 1, size: 4 }).allReduceSum(Float32Array.of(1.5))), [6], "a FakeGang takes every rank to hold its values");
  assert.deepEqual(Array.from(await new FakeGang().allReduceSum(Float32Array.of(7))), [7]);
});

test("allReduceSum refuses arrays of different lengths, other types and arrays too large for a JSON message", async () => {
  const [a, b] = InProcessGang.create(2);
  const results = await Promise.allSettled([a!.allReduceSum(new Float32Array(2)), b!.allReduceSum(new Float32Array(3))]);
  for (const result of results) {
    assert.equal(result.status, "rejected");
    assert.ok(result.reason instanceof GangError);
    assert.match(result.reason.message, /passed \d values, this rank \d; every rank must pass the same length/);
  }
  const gang = new FakeGang();
  await assert.rejects(gang.allReduceSum(new Float64Array(2) as unknown as Float32Array), /allReduceSum takes a Float32Array, got Float64Array/);
  await assert.rejects(gang.allReduceSum(new Float32Array(MAX_ALL_REDUCE_ELEMENTS + 1)), (error: unknown) => error instanceof InvalidArgumentError && /is for small arrays/.test(error.message));
});
