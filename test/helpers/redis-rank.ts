/**
 * One rank of a job on a Redis rendezvous, run as its own process by test/gang-redis.test.ts:
 *   node --import tsx test/helpers/redis-rank.ts '<json RankSpec>'
 * Prints one JSON object per line (events the test reads) and ends on its own after close():
 * it never calls process.exit, so a transport that keeps the process alive makes the test fail.
 */
import { connectRedisTransport } from "../../src/gang/redis-transport.js";
import type { Transport } from "../../src/gang/transport.js";
import type { JsonValue } from "../../src/gang/gang.js";

export interface RankSpec {
  url: string;
  jobId: string;
  rank: number;
  worldSize: number;
  scenario: "rounds" | "wait-for-dead" | "abort" | "server-killed";
  heartbeatMs: number;
  deadAfterMs: number;
  /** wait-for-dead: the rank the test kills; abort: the rank that aborts. */
  subject?: number;
}

const spec = JSON.parse(process.argv[2]!) as RankSpec;
const WAIT_MS = 60_000;

function emit(event: string, data: Record<string, unknown> = {}): void {
  process.stdout.write(`${JSON.stringify({ event, rank: spec.rank, at: Date.now(), ...data })}\n`);
}

function describeError(error: unknown): Record<string, unknown> {
  const e = error as { name?: string; code?: string; rank?: number; message?: string };
  return { name: e.name, code: e.code, faultyRank: e.rank, message: e.message };
}

const world = Array.from({ length: spec.worldSize }, (_, rank) => rank);

async function rounds(transport: Transport): Promise<void> {
  // Pairs [0,1] and [2,3] and the world group, with rounds of a pair and of the world pending at once.
  const pair = spec.rank < 2 ? [0, 1] : [2, 3];
  const pairName = spec.rank < 2 ? "pair-a" : "pair-b";
  const results: JsonValue[] = [];
  for (let seq = 0; seq < 4; seq++) {
    const [pairValues, worldValues] = await Promise.all([
      transport.exchange(pairName, pair, seq, `${pairName}/${seq}/${spec.rank}`, WAIT_MS),
      transport.exchange("world", world, seq, { seq, rank: spec.rank, square: spec.rank * spec.rank }, WAIT_MS),
    ]);
    results.push({ pair: pairValues, world: worldValues });
  }
  emit("result", { results });
}

async function waitForDead(transport: Transport): Promise<void> {
  await transport.exchange("world", world, 0, spec.rank, WAIT_MS);
  emit("ready");
  if (spec.rank === spec.subject) {
    // Waits to be killed; the timer keeps the process alive.
    setInterval(() => {}, 1000);
    return;
  }
  try {
    await transport.exchange("world", world, 1, spec.rank, WAIT_MS);
    emit("unexpected-success");
  } catch (error) {
    emit("error", describeError(error));
  }
}

async function abort(transport: Transport): Promise<void> {
  await transport.exchange("world", world, 0, spec.rank, WAIT_MS);
  if (spec.rank === spec.subject) {
    // The test says when: once every other rank waits in round 1.
    await new Promise((resolve) => process.stdin.once("data", resolve));
    process.stdin.destroy();
    await transport.abort("disk full on node 7");
    emit("aborted");
  }
  for (const seq of [1, 2]) {
    const exchange = transport.exchange("world", world, seq, spec.rank, WAIT_MS);
    if (seq === 1) emit("waiting");
    try {
      await exchange;
      emit("unexpected-success", { seq });
    } catch (error) {
      emit("error", { seq, ...describeError(error) });
    }
  }
}

async function serverKilled(transport: Transport): Promise<void> {
  await transport.exchange("world", world, 0, spec.rank, WAIT_MS);
  // Each rank waits in a round of its own with a partner that never comes to it.
  const partner = (spec.rank + 1) % spec.worldSize;
  const members = [spec.rank, partner].sort((a, b) => a - b);
  const waiting = transport.exchange(`stuck-${spec.rank}`, members, 0, spec.rank, WAIT_MS);
  emit("ready");
  try {
    await waiting;
    emit("unexpected-success");
  } catch (error) {
    emit("error", describeError(error));
  }
}

const transport = await connectRedisTransport({
  url: spec.url,
  jobId: spec.jobId,
  rank: spec.rank,
  worldSize: spec.worldSize,
  heartbeatMs: spec.heartbeatMs,
  deadAfterMs: spec.deadAfterMs,
});
emit("joined", { pid: process.pid });
try {
  const scenarios = { rounds, "wait-for-dead": waitForDead, abort, "server-killed": serverKilled };
  await scenarios[spec.scenario](transport);
} finally {
  if (!(spec.scenario === "wait-for-dead" && spec.rank === spec.subject)) {
    await transport.close();
    emit("closed");
  }
}
