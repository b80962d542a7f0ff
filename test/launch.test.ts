import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, test } from "node:test";

import { planLaunch } from "../src/index.js";
import { assertProcessesGone, jsonMarkers, launcherLines, markers, runLaunch, worker, workerPids } from "./helpers/launch-helpers.js";

const SLOW = { timeout: 60_000 };
const dirs: string[] = [];
after(() => Promise.all(dirs.map((dir) => rm(dir, { recursive: true, force: true }))));

test("every line a worker writes comes out on the same stream prefixed with its rank, whole lines only", SLOW, async () => {
  const run = await runLaunch(["--nproc", "2", ...worker("output")]);
  assertProcessesGone([run.launcherPid, ...workerPids(run.stdout)]);
  assert.equal(run.status, 0, run.stderr);
  for (const rank of [0, 1]) {
    const ofRank = (text: string): string[] => text.split("\n").filter((line) => line.startsWith(`[rank ${rank}] `));
    // "second " and "half\n" arrive in two writes; the last line has no newline.
    assert.deepEqual(ofRank(run.stdout).slice(1), [`[rank ${rank}] first line`, `[rank ${rank}] second half`, `[rank ${rank}] no newline at end`]);
    assert.deepEqual(ofRank(run.stderr), [`[rank ${rank}] to stderr`]);
  }
  assert.ok(run.stdout.split("\n").every((line) => line === "" || /^\[rank [01]\] /.test(line)), run.stdout);
  assert.ok(run.stdout.endsWith("\n"));
});

test("a process a worker started that still holds its output pipes does not keep the launch waiting", SLOW, async () => {
  const run = await runLaunch(["--nproc", "1", ...worker("grandchild")]);
  const grandchildren = [...markers(run.stdout, "GRANDCHILD").values()].flat().map(Number);
  try {
    assert.equal(run.status, 0, run.stderr);
    assert.equal(grandchildren.length, 1);
    assertProcessesGone([run.launcherPid, ...workerPids(run.stdout)]);
  } finally {
    // Not the launcher's to stop (it was never a worker): the test started it, the test ends it.
    for (const pid of grandchildren) process.kill(pid, "SIGKILL");
  }
});

test("SIGTERM to the launcher is forwarded to every worker, and the launch exits 143 saying so", SLOW, async () => {
  let signalled = false;
  const run = await runLaunch(["--nproc", "3", ...worker("wait-for-sigterm")], {
    onStdout: (stdout, launcherPid) => {
      if (!signalled && markers(stdout, "READY").size === 3) {
        signalled = true;
        process.kill(launcherPid, "SIGTERM");
      }
    },
  });
  assertProcessesGone([run.launcherPid, ...workerPids(run.stdout)]);
  assert.ok(signalled, run.stdout);
  assert.equal(run.status, 143, run.stderr);
  assert.deepEqual([...markers(run.stdout, "GOT SIGTERM").keys()].sort(), [0, 1, 2]);
  assert.deepEqual(launcherLines(run.stderr), ["ckpt: launch: stopped by SIGTERM"]);
});

test("when a worker fails the others get SIGTERM after the grace period, and SIGKILL after another if they ignore it", SLOW, async () => {
  const run = await runLaunch(["--nproc", "3", "--grace-period", "1", ...worker("stubborn")], { env: { CKPT_TEST_TARGET: "0" } });
  assertProcessesGone([run.launcherPid, ...workerPids(run.stdout)]);
  assert.equal(run.status, 1, run.stderr);
  assert.equal(workerPids(run.stdout).length, 3);
  assert.match(launcherLines(run.stderr).join("\n"), /^ckpt: launch: rank 0 \(pid \d+\) exited with code 5$/);
  assert.deepEqual([...markers(run.stdout, "IGNORED SIGTERM").keys()], [2]);
});

test("the workers get their ranks from --nnodes and --node-rank, which default from SLURM's variables", SLOW, async () => {
  // Rank numbering only: these workers print their environment and never reach the rendezvous.
  const slurm = { SLURM_NNODES: "2", SLURM_NODEID: "1", SLURM_JOB_ID: "4711" };
  const run = await runLaunch(["--nproc", "2", "--tp", "2", "--rendezvous", "redis://127.0.0.1:1", ...worker("env")], { env: slurm });
  assertProcessesGone([run.launcherPid, ...workerPids(run.stdout)]);
  assert.equal(run.status, 0, run.stderr);
  const envs = jsonMarkers<Record<string, string>>(run.stdout, "RESULT");
  assert.deepEqual([...envs.keys()].sort(), [2, 3]);
  for (const [rank, env] of envs) {
    assert.deepEqual(env, {
      CKPT_RANK: String(rank),
      CKPT_WORLD_SIZE: "4",
      CKPT_LOCAL_RANK: String(rank - 2),
      CKPT_DP_SIZE: "2",
      CKPT_TP_SIZE: "2",
      CKPT_RENDEZVOUS: "redis://127.0.0.1:1",
      CKPT_JOB_ID: "4711",
      CKPT_NNODES: "2",
      CKPT_NODE_RANK: "1",
    });
  }
  // Flags win over SLURM's variables.
  assert.equal(planLaunch({ nproc: 2, nnodes: 3, nodeRank: 0, rendezvous: "redis://h:1", jobId: "j" }, slurm).nodeRank, 0);
  assert.equal(planLaunch({ nproc: 2, nnodes: 3, nodeRank: 0, rendezvous: "redis://h:1", jobId: "j" }, slurm).worldSize, 6);
});

test("bad flags get one line on stderr and exit code 2, and start no worker", SLOW, async () => {
  const dir = await mkdtemp(join(tmpdir(), "ckpt-launch-"));
  dirs.push(dir);
  const marker = join(dir, "started");
  const command = ["--", process.execPath, "-e", "require('fs').writeFileSync(process.argv[1], 'x')", marker];
  const cases: [string[], Record<string, string>, RegExp][] = [
    [["--dp", "2"], {}, /--nproc is required/],
    [["--nproc", "0"], {}, /--nproc must be a positive integer, got "0"/],
    [["--nproc", "two"], {}, /--nproc must be a positive integer, got "two"/],
    [["--nproc", "4", "--dp", "3"], {}, /--dp × --tp must equal the world size \(4 = --nnodes 1 × --nproc 4\), got 3 × 1/],
    [["--nproc", "4", "--tp", "3"], {}, /--tp \(3\) must divide the world size/],
    [["--nproc", "2", "--nnodes", "2", "--node-rank", "0"], {}, /--rendezvous redis:\/\/HOST:PORT is required with --nnodes 2/],
    [["--nproc", "2"], { SLURM_NNODES: "2", SLURM_NODEID: "0" }, /--rendezvous redis:\/\/HOST:PORT is required with --nnodes 2 \(from SLURM_NNODES\)/],
    [["--nproc", "2", "--nnodes", "2", "--rendezvous", "redis://127.0.0.1:1", "--job-id", "j"], {}, /--node-rank is required with --nnodes 2/],
    [["--nproc", "2", "--nnodes", "2", "--node-rank", "2", "--rendezvous", "redis://127.0.0.1:1", "--job-id", "j"], {}, /--node-rank must be below --nnodes 2, got 2/],
    [["--nproc", "2", "--nnodes", "2", "--node-rank", "1", "--rendezvous", "redis://127.0.0.1:1"], {}, /--job-id is required with a Redis rendezvous/],
    [["--nproc", "2", "--rendezvous", "redis://127.0.0.1:1", "--job-id", "a b"], {}, /--job-id must be 1 to 128 letters/],
    [["--nproc", "2", "--rendezvous", "tcp://127.0.0.1:1"], {}, /--rendezvous must be redis:\/\/HOST:PORT/],
    [["--nproc", "2", "--grace-period", "-1"], {}, /--grace-period must be a number of seconds/],
    [["--nproc", "2"], { SLURM_NNODES: "x" }, /--nnodes \(from SLURM_NNODES\) must be a positive integer, got "x"/],
    [["--nproc", "2", "--bogus", "1"], {}, /unknown option '--bogus'/],
  ];
  for (const [flags, env, message] of cases) {
    const run = await runLaunch([...flags, ...command], { env });
    assert.equal(run.status, 2, `${flags.join(" ")}: exit ${run.status} ${run.stderr}`);
    assert.equal(run.stdout, "");
    const lines = run.stderr.trimEnd().split("\n");
    assert.equal(lines.length, 1, run.stderr);
    assert.match(lines[0]!, /^ckpt: /);
    assert.match(lines[0]!, message);
  }
  const missing = await runLaunch(["--nproc", "2"]);
  assert.equal(missing.status, 2);
  assert.match(missing.stderr, /^ckpt: missing required argument 'command'\n$/);
  assert.equal(existsSync(marker), false, "no worker started");
});

test("a worker command that cannot be started fails the launch with a line naming the rank", SLOW, async () => {
  const run = await runLaunch(["--nproc", "2", "--", join(tmpdir(), "no-such-program-for-ckpt")]);
  assertProcessesGone([run.launcherPid]);
  assert.equal(run.status, 1, run.stderr);
  assert.match(launcherLines(run.stderr).join("\n"), /^ckpt: launch: rank [01] could not be started: spawn .*no-such-program-for-ckpt ENOENT$/);
});
