import assert from "node:assert/strict";
import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { cpSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { pathToFileURL } from "node:url";
import { after, before, describe, test, type TestContext } from "node:test";
import { Redis } from "ioredis";
import { GangError, InvalidArgumentError } from "../src/errors.js";
import type { JsonValue } from "../src/gang/gang.js";
import { connectRedisTransport, type RedisTransportOptions } from "../src/gang/redis-transport.js";
import type { Transport } from "../src/gang/transport.js";
import type { RankSpec } from "./helpers/redis-rank.js";
import { RedisServer, redisServerAvailable, requireRedisServer } from "./helpers/redis-server.js";
import { bundledOnce } from "../torture/lib/bundle-child.js";

// Short heartbeats so that a dead rank is found in about two seconds; the defaults are 1 s and 5 s.
const HEARTBEAT_MS = 250;
const DEAD_AFTER_MS = 2000;
const RANK_SCRIPT = new URL("./helpers/redis-rank.ts", import.meta.url).pathname;
/** RANK_SCRIPT bundled into plain JavaScript: a rank starts without tsx's loader (0.75 s of CPU each). */
let rankScript: string;
before(async () => {
  rankScript = await bundledOnce(RANK_SCRIPT);
});

/** A rank process and the JSON events it printed. */
class RankProcess {
  readonly events: Record<string, unknown>[] = [];
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  private readonly child: ChildProcess;
  private stderr = "";
  private waiters: (() => void)[] = [];

  constructor(spec: RankSpec) {
    this.child = spawn(process.execPath, [rankScript, JSON.stringify(spec)], { stdio: ["pipe", "pipe", "pipe"] });
    let buffered = "";
    this.child.stdout!.on("data", (chunk: Buffer) => {
      buffered += chunk.toString();
      const lines = buffered.split("\n");
      buffered = lines.pop()!;
      for (const line of lines) this.events.push(JSON.parse(line) as Record<string, unknown>);
      for (const wake of this.waiters.splice(0)) wake();
    });
    this.child.stderr!.on("data", (chunk: Buffer) => (this.stderr += chunk.toString()));
    this.exited = new Promise((resolve) => this.child.once("exit", (code, signal) => resolve({ code, signal })));
    void this.exited.then(() => this.waiters.splice(0).forEach((wake) => wake()));
  }

  get pid(): number {
    return this.child.pid!;
  }

  async waitFor(event: string): Promise<Record<string, unknown>> {
    for (;;) {
      const found = this.events.find((e) => e.event === event);
      if (found) return found;
      if (this.child.exitCode !== null || this.child.signalCode !== null) {
        throw new Error(`rank process ${this.pid} exited without "${event}"; events ${JSON.stringify(this.events)}; stderr:\n${this.stderr}`);
      }
      await new Promise<void>((resolve) => this.waiters.push(resolve));
    }
  }

  /** Writes a line to the process's stdin (a signal for the rank to go on). */
  tell(line: string): void {
    this.child.stdin!.end(`${line}\n`);
  }

  kill(): void {
    this.child.kill("SIGKILL");
  }

  /** Waits for the process to end on its own and checks that it succeeded. */
  async endsCleanly(): Promise<void> {
    const { code, signal } = await this.exited;
    assert.equal(signal, null, `rank process ${this.pid} was killed by ${signal}; stderr:\n${this.stderr}`);
    assert.equal(code, 0, `rank process ${this.pid} exited with ${code}; stderr:\n${this.stderr}`);
  }
}

function startRanks(server: RedisServer, jobId: string, scenario: RankSpec["scenario"], subject?: number): RankProcess[] {
  return [0, 1, 2, 3].map(
    (rank) =>
      new RankProcess({ url: server.url, jobId, rank, worldSize: 4, scenario, heartbeatMs: HEARTBEAT_MS, deadAfterMs: DEAD_AFTER_MS, ...(subject === undefined ? {} : { subject }) }),
  );
}

function assertProcessGone(pid: number): void {
  assert.throws(() => process.kill(pid, 0), { code: "ESRCH" }, `process ${pid} is still running`);
}

function connectAll(server: RedisServer, jobId: string, worldSize: number, extra: Partial<RedisTransportOptions> = {}): Promise<Transport[]> {
  return Promise.all(Array.from({ length: worldSize }, (_, rank) => connect(server, jobId, rank, worldSize, extra)));
}

function connect(server: RedisServer, jobId: string, rank: number, worldSize: number, extra: Partial<RedisTransportOptions> = {}): Promise<Transport> {
  return connectRedisTransport({ url: server.url, jobId, rank, worldSize, heartbeatMs: HEARTBEAT_MS, deadAfterMs: DEAD_AFTER_MS, ...extra });
}

function exchangeAll(transports: Transport[], group: string, seq: number, value: (rank: number) => JsonValue): Promise<JsonValue[][]> {
  const members = transports.map((t) => t.rank);
  return Promise.all(transports.map((t) => t.exchange(group, members, seq, value(t.rank), 10_000)));
}

/** A test that needs redis-server: skipped loudly when it is missing, failed under CI. */
function redisTest(name: string, body: (t: TestContext) => Promise<void>): void {
  test(name, async (t) => {
    if (requireRedisServer(t)) await body(t);
  });
}

describe("the Redis transport", () => {
  let server: RedisServer;

  before(async () => {
    if (redisServerAvailable()) server = await RedisServer.start();
  });

  after(async () => {
    if (!redisServerAvailable()) return;
    const pid = server.pid;
    await server.stop();
    assertProcessGone(pid);
  });

  redisTest("four processes exchange rounds of a world group and two pair groups interleaved", async () => {
    const ranks = startRanks(server, "rounds", "rounds");
    const results = await Promise.all(ranks.map((r) => r.waitFor("result")));
    for (const [rank, result] of results.entries()) {
      const pairName = rank < 2 ? "pair-a" : "pair-b";
      const pair = rank < 2 ? [0, 1] : [2, 3];
      const expected = [0, 1, 2, 3].map((seq) => ({
        pair: pair.map((member) => `${pairName}/${seq}/${member}`),
        world: [0, 1, 2, 3].map((member) => ({ seq, rank: member, square: member * member })),
      }));
      assert.deepEqual(result.results, expected, `rank ${rank}`);
    }
    await Promise.all(ranks.map((r) => r.endsCleanly()));
    ranks.forEach((r) => assertProcessGone(r.pid));
  });

  redisTest("a rank killed while the others wait becomes a GangError naming it on every other rank", async () => {
    const ranks = startRanks(server, "killed", "wait-for-dead", 3);
    await Promise.all(ranks.map((r) => r.waitFor("ready")));
    ranks[3]!.kill();
    for (const rank of [0, 1, 2]) {
      const error = await ranks[rank]!.waitFor("error");
      assert.equal(error.name, "GangError");
      assert.equal(error.faultyRank, 3);
      const gone = `^rank 3 \\(pid \\d+ on .+\\) is gone: no heartbeat at the rendezvous redis://127\\.0\\.0\\.1:\\d+/? for ${DEAD_AFTER_MS} ms`;
      assert.match(String(error.message), new RegExp(gone));
    }
    await Promise.all(ranks.slice(0, 3).map((r) => r.endsCleanly()));
    assert.equal((await ranks[3]!.exited).signal, "SIGKILL");
    ranks.forEach((r) => assertProcessGone(r.pid));
  });

  redisTest("a rank that aborts with a reason makes every rank's pending and later exchanges fail with that reason", async () => {
    const ranks = startRanks(server, "aborted", "abort", 2);
    await Promise.all([0, 1, 3].map((rank) => ranks[rank]!.waitFor("waiting")));
    ranks[2]!.tell("abort now");
    await Promise.all(ranks.map((r) => r.endsCleanly()));
    for (const r of ranks) {
      const errors = r.events.filter((e) => e.event === "error");
      assert.deepEqual(
        errors.map((e) => e.seq),
        [1, 2],
        `rank ${String(r.events[0]?.rank)}: ${JSON.stringify(r.events)}`,
      );
      for (const error of errors) {
        assert.equal(error.name, "GangError");
        assert.equal(error.faultyRank, 2);
        assert.match(String(error.message), /^rank 2 \(pid \d+ on .+\) aborted: disk full on node 7$/);
      }
    }
  });

  redisTest("an exchange that a live rank never joins times out naming the late rank", async () => {
    const transports = await connectAll(server, "timeout", 2);
    await assert.rejects(transports[0]!.exchange("pair", [0, 1], 0, "early", 300), (error: unknown) => {
      assert.ok(error instanceof GangError);
      assert.match(error.message, /^rank 0: exchange "pair" round 0 timed out after 300 ms waiting for rank\(s\) 1$/);
      return true;
    });
    // The transport still works for rounds everyone joins.
    assert.deepEqual(await exchangeAll(transports, "other", 0, (rank) => rank), [
      [0, 1],
      [0, 1],
    ]);
    await Promise.all(transports.map((t) => t.close()));
  });

  redisTest("two jobs on one server with the same groups and rounds do not see each other's values", async () => {
    const [a, b] = await Promise.all([connectAll(server, "job-a", 2), connectAll(server, "job-b", 2)]);
    const [fromA, fromB] = await Promise.all([exchangeAll(a!, "world", 0, (rank) => `a${rank}`), exchangeAll(b!, "world", 0, (rank) => `b${rank}`)]);
    assert.deepEqual(fromA, [
      ["a0", "a1"],
      ["a0", "a1"],
    ]);
    assert.deepEqual(fromB, [
      ["b0", "b1"],
      ["b0", "b1"],
    ]);
    await Promise.all([...a!, ...b!].map((t) => t.close()));
  });

  redisTest("a rerun with the same job id never reads what the earlier run left, even when a rank arrives before rank 0", async () => {
    const earlier = await connectAll(server, "rerun", 2);
    // Rank 0 writes a round that rank 1 never joins: the value stays on the server.
    await assert.rejects(earlier[0]!.exchange("world", [0, 1], 0, "stale", 200), GangError);
    await Promise.all(earlier.map((t) => t.close()));

    const rank1 = connect(server, "rerun", 1, 2);
    await new Promise((resolve) => setTimeout(resolve, 3 * HEARTBEAT_MS));
    const rank0 = connect(server, "rerun", 0, 2);
    const later = await Promise.all([rank0, rank1]);
    assert.deepEqual(await exchangeAll(later, "world", 0, (rank) => `fresh${rank}`), [
      ["fresh0", "fresh1"],
      ["fresh0", "fresh1"],
    ]);
    await Promise.all(later.map((t) => t.close()));
  });

  redisTest("a rank that joined a run whose rank 0 gave up moves to the next run", async () => {
    await assert.rejects(connect(server, "unsealed", 0, 2, { joinTimeoutMs: 300 }), (error: unknown) => {
      assert.ok(error instanceof GangError);
      assert.match(error.message, /^rank 0 timed out after 300 ms waiting for rank\(s\) 1 to join of job unsealed/);
      return true;
    });
    const rank1 = connect(server, "unsealed", 1, 2);
    await new Promise((resolve) => setTimeout(resolve, 3 * HEARTBEAT_MS));
    const transports = await Promise.all([connect(server, "unsealed", 0, 2), rank1]);
    assert.deepEqual(await exchangeAll(transports, "world", 0, (rank) => rank), [
      [0, 1],
      [0, 1],
    ]);
    await Promise.all(transports.map((t) => t.close()));
  });

  redisTest("ranks started with different world sizes are told so instead of waiting", async () => {
    const results = await Promise.allSettled([connect(server, "sizes", 0, 2), connect(server, "sizes", 1, 3)]);
    for (const result of results) {
      assert.equal(result.status, "rejected");
      assert.ok(result.reason instanceof GangError);
      assert.match(result.reason.message, /^rank [01] \(pid \d+ on .+\) of job sizes was started with world size [23], rank [01] with [23]: every node must be launched with the same --nnodes and --nproc$/);
    }
  });

  redisTest("a second launch with the job id of a running job is refused", async () => {
    const running = await connectAll(server, "in-use", 2);
    await assert.rejects(connect(server, "in-use", 0, 2), (error: unknown) => {
      assert.ok(error instanceof GangError);
      assert.match(error.message, /^job id in-use is in use at redis:\/\/127\.0\.0\.1:\d+\/?: rank 0 \(pid \d+ on .+\) of a running job is alive/);
      return true;
    });
    await Promise.all(running.map((t) => t.close()));
  });

  redisTest("a server that cannot be reached is a GangError after the connect timeout", async () => {
    const closed = await RedisServer.start();
    const url = closed.url;
    await closed.stop();
    await assert.rejects(connectRedisTransport({ url, jobId: "nowhere", rank: 0, worldSize: 1, connectTimeoutMs: 300 }), (error: unknown) => {
      assert.ok(error instanceof GangError);
      assert.match(error.message, /^the rendezvous server redis:\/\/127\.0\.0\.1:\d+\/? is unreachable \(.*ECONNREFUSED/);
      return true;
    });
  });

  redisTest("every key a job leaves on the server expires", async () => {
    const client = new Redis(server.url, { lazyConnect: true });
    await client.connect();
    try {
      const keys = await client.keys("ckpt:*");
      assert.ok(keys.length > 0, "the tests above left no key to check");
      for (const key of keys) {
        const ttl = await client.pttl(key);
        // -1 is a key without expiry; -2, one that expired since KEYS listed it.
        assert.ok(ttl > 0 || ttl === -2, `${key} has no expiry (PTTL ${ttl})`);
      }
    } finally {
      await client.quit();
    }
  });
});

describe("the Redis transport with a password", () => {
  redisTest("a password in the URL is used, and never shown in an error", async () => {
    const server = await RedisServer.start(["--requirepass", "s3cret-word"]);
    try {
      const url = (password: string): string => `redis://:${password}@127.0.0.1:${server.port}`;
      const transports = await Promise.all([0, 1].map((rank) => connectRedisTransport({ url: url("s3cret-word"), jobId: "secret", rank, worldSize: 2 })));
      assert.deepEqual(await exchangeAll(transports, "world", 0, (rank) => rank), [
        [0, 1],
        [0, 1],
      ]);
      await Promise.all(transports.map((t) => t.close()));
      await assert.rejects(connectRedisTransport({ url: url("wrong-word"), jobId: "secret", rank: 0, worldSize: 1, connectTimeoutMs: 300 }), (error: unknown) => {
        assert.ok(error instanceof GangError);
        assert.match(error.message, /^the rendezvous server redis:\/\/:\*\*\*@127\.0\.0\.1:\d+\/? refused the connection: WRONGPASS/);
        assert.doesNotMatch(error.message, /wrong-word/);
        return true;
      });
    } finally {
      await server.stop();
    }
  });
});

describe("the Redis transport when the server dies", () => {
  redisTest("every rank waiting in an exchange fails with the server unreachable, and every process ends", async () => {
    const server = await RedisServer.start();
    try {
      const ranks = startRanks(server, "server-killed", "server-killed");
      await Promise.all(ranks.map((r) => r.waitFor("ready")));
      await server.kill();
      for (const r of ranks) {
        const error = await r.waitFor("error");
        assert.equal(error.name, "GangError");
        assert.match(String(error.message), /^the rendezvous server redis:\/\/127\.0\.0\.1:\d+\/? is unreachable/);
      }
      await Promise.all(ranks.map((r) => r.endsCleanly()));
      ranks.forEach((r) => assertProcessGone(r.pid));
    } finally {
      const pid = server.pid;
      await server.stop();
      assertProcessGone(pid);
    }
  });
});

test("without ioredis installed, a redis:// rendezvous says to install it", () => {
  // The sources, copied where no node_modules holds ioredis, run by tsx from this checkout.
  const dir = mkdtempSync(join(tmpdir(), "ckpt-no-ioredis-"));
  try {
    cpSync(new URL("../src", import.meta.url), join(dir, "src"), { recursive: true });
    writeFileSync(join(dir, "package.json"), JSON.stringify({ type: "module" }));
    writeFileSync(
      join(dir, "connect.ts"),
      `import { connectRedisTransport } from "./src/gang/redis-transport.ts";
      try {
        await connectRedisTransport({ url: "redis://127.0.0.1:6379", jobId: "j", rank: 0, worldSize: 1 });
        console.log("connected");
      } catch (error) {
        console.log(JSON.stringify({ name: error.name, code: error.code, message: error.message }));
      }`,
    );
    const tsx = pathToFileURL(createRequire(import.meta.url).resolve("tsx")).href;
    const run = spawnSync(process.execPath, ["--import", tsx, join(dir, "connect.ts")], { cwd: dir, encoding: "utf8" });
    assert.equal(run.status, 0, run.stderr);
    assert.deepEqual(JSON.parse(run.stdout), {
      name: "GangError",
      code: "GANG_REDIS_MISSING",
      message: "the ioredis package is not installed: npm install ioredis to use a redis:// rendezvous",
    });
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("bad rendezvous options are refused before any connection is tried", async () => {
  const base = { url: "redis://127.0.0.1:6379", jobId: "job", rank: 0, worldSize: 2 };
  const cases: [Partial<RedisTransportOptions>, RegExp][] = [
    [{ url: "http://127.0.0.1:6379" }, /is not redis:\/\/HOST:PORT/],
    [{ jobId: "two words" }, /job id "two words" must be 1 to 128 letters/],
    [{ rank: 2 }, /rank must be an integer in \[0, 2\), got 2/],
    [{ heartbeatMs: 1000, deadAfterMs: 1500 }, /deadAfterMs \(1500\) must be at least twice heartbeatMs \(1000\)/],
  ];
  for (const [change, message] of cases) {
    await assert.rejects(connectRedisTransport({ ...base, ...change }), (error: unknown) => {
      assert.ok(error instanceof InvalidArgumentError, String(error));
      assert.match(error.message, message);
      return true;
    });
  }
});
