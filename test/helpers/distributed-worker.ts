/**
 * A training process of a job started by `ckpt launch`, for the distributed tests. Run as
 * `ckpt launch … -- node --import tsx distributed-worker.ts <checkpointDir> <scenario> [step]`.
 * Each rank prints one line `result <json>` when its scenario ends without an error; a rank that
 * fails prints `error <name>: <message>` and exits 1.
 *
 * Scenarios:
 * - `save <step>`: saves a state whose values depend on the rank and step (model replicated when
 *   dp = 1, else in the rank files), commits, loads it back and reports what it loaded.
 * - `replicated <step>`: like save, with `replicatedKeys: ["epoch", "model"]` (model.pt).
 * - `everything <step>`: like save, with `replicatedKeys: ["*"]`.
 * - `fsdp <step>`: saves FSDP-style shards and a consolidated model.
 * - `kill-in-save <step>`: rank 1 SIGKILLs itself while writing its rank file.
 * - `throw-in-save <step>`: rank 2 passes a value that cannot be saved.
 * - `slow-save <step>`: begins the checkpoint, prints `began`, waits 1.5 s, then saves and commits.
 * - `kill-in-barrier`: rank 3 SIGKILLs itself while the others wait in a barrier.
 * - `resume 0 [keys]`: loads the last checkpoint and reports its step and whether it matches what
 *   `save` (or, with keys "epoch,model", `replicated`) saved at that step.
 */
import { FileCheckpointManager, ShardedTensor, Tensor, closeGangs, initGangs, type Gangs, type StateDict } from "../../src/index.js";

const [checkpointDir, scenario, stepText, sharedText] = process.argv.slice(2) as [string, string, string | undefined, string | undefined];
const stepNr = Number(stepText ?? 0);

/** What rank (dp, tp) saves at `step`: tensors and scalars that differ per rank and step. */
export function rankState(gangs: Gangs, step: number): StateDict {
  const { dp, tp } = gangs;
  const seed = step * 100 + dp.rank * 10 + tp.rank;
  return {
    model: { "0.weight": Tensor.from(Float32Array.from({ length: 6 }, (_, i) => seed + i), { shape: [2, 3] }), "0.bias": Tensor.from(new Float32Array([tp.rank, step])) },
    optimizer: { state: new Map([[0, { step, exp_avg: Tensor.from(new Float64Array([seed, -seed])) }]]) },
    data: { cursor: seed, rng: BigInt(seed) * 2n ** 60n }, // beyond 2^53: stays a bigint
    epoch: step / 100,
    step_nr: step,
  };
}

/** What the rank saves at `step`, with `sharedKeys` as dp rank 0 has them (equal on every dp rank). */
function stateFor(gangs: Gangs, step: number, sharedKeys: string[]): StateDict {
  const leader = rankState({ ...gangs, dp: { ...gangs.dp, rank: 0 } } as Gangs, step);
  const result = rankState(gangs, step);
  for (const key of sharedKeys) result[key] = leader[key]!;
  return result;
}

function summarize(state: StateDict): unknown {
  return JSON.parse(JSON.stringify(state, (_key, value: unknown) => {
    if (value instanceof Tensor) return { tensor: [...value.data].map(Number) };
    if (value instanceof ShardedTensor) return { shard: [...value.shard.data].map(Number), offsets: value.offsets, globalShape: value.globalShape };
    if (value instanceof Map) return Object.fromEntries(value);
    if (typeof value === "bigint") return `${value}n`;
    // Sorted keys: a loaded state lists its keys file by file (model, replicated, rank).
    if (typeof value === "object" && value !== null && !Array.isArray(value)) {
      return Object.fromEntries(Object.keys(value).sort().map((k) => [k, (value as Record<string, unknown>)[k]]));
    }
    return value;
  }));
}

const gangs = await initGangs();
const manager = new FileCheckpointManager({ checkpointDir, gangs });
const { root, dp, tp } = gangs;
const say = (line: string): void => void process.stdout.write(`${line}\n`);
try {
  let result: unknown;
  if (scenario === "save" || scenario === "replicated" || scenario === "everything") {
    const replicatedKeys = scenario === "replicated" ? ["epoch", "model"] : scenario === "everything" ? ["*"] : ["epoch"];
    const everyKey = ["model", "optimizer", "data", "epoch", "step_nr"];
    const shared = scenario === "everything" ? everyKey : replicatedKeys;
    const state = stateFor(gangs, stepNr, shared);
    await manager.beginCheckpoint(stepNr);
    await manager.saveState(state, { replicatedKeys });
    await manager.saveScore(stepNr);
    await manager.commitCheckpoint();
    const loaded = await manager.loadCheckpoint(stepNr);
    result = { rank: root.rank, dpRank: dp.rank, tpRank: tp.rank, matches: JSON.stringify(summarize(loaded)) === JSON.stringify(summarize(state)), loaded: summarize(loaded) };
  } else if (scenario === "fsdp") {
    const rows = Tensor.from(Float32Array.from({ length: 4 }, (_, i) => dp.rank * 4 + i + tp.rank * 100), { shape: [1, 4] });
    const model: StateDict = { "0.weight": new ShardedTensor(rows, { globalShape: [dp.size, 4], offsets: [dp.rank, 0] }), "0.bias": Tensor.from(new Float32Array([tp.rank])) };
    await manager.beginCheckpoint(stepNr);
    await manager.saveState({ model, step_nr: stepNr });
    await manager.saveConsolidatedFsdpModel(model);
    await manager.commitCheckpoint();
    const loaded = await manager.loadCheckpoint(stepNr);
    result = { rank: root.rank, loaded: summarize(loaded) };
  } else if (scenario === "kill-in-save" || scenario === "throw-in-save") {
    const state = rankState(gangs, stepNr);
    if (scenario === "throw-in-save" && root.rank === 2) state.data = { bad: Symbol("unsaveable") as unknown as number };
    const killer = new FileCheckpointManager({
      checkpointDir,
      gangs,
      onProgress: ({ file }) => {
        if (scenario === "kill-in-save" && root.rank === 1 && file.startsWith("rank_")) process.kill(process.pid, "SIGKILL");
      },
    });
    await killer.beginCheckpoint(stepNr);
    await killer.saveState(state, { replicatedKeys: ["epoch"] });
    await killer.commitCheckpoint();
    result = { rank: root.rank, committed: true };
  } else if (scenario === "slow-save") {
    // Opens the checkpoint, says so, and saves a little later: a test stops the rendezvous meanwhile.
    await manager.beginCheckpoint(stepNr);
    say("began");
    await new Promise((resolve) => setTimeout(resolve, 1500));
    await manager.saveState(stateFor(gangs, stepNr, ["epoch"]), { replicatedKeys: ["epoch"] });
    await manager.commitCheckpoint();
    result = { rank: root.rank, committed: true };
  } else if (scenario === "kill-in-barrier") {
    if (root.rank === 3) {
      await new Promise((resolve) => setTimeout(resolve, 200)); // the others are waiting by then
      process.kill(process.pid, "SIGKILL");
    }
    await root.barrier();
    result = { rank: root.rank, passedBarrier: true };
  } else if (scenario === "resume") {
    const { stepNr: last, state } = await manager.loadLastCheckpoint();
    const expected = stateFor(gangs, last, (sharedText ?? "epoch").split(","));
    result = { rank: root.rank, last, matches: JSON.stringify(summarize(state)) === JSON.stringify(summarize(expected)) };
  } else {
    throw new Error(`unknown scenario ${scenario}`);
  }
  await manager.close();
  say(`result ${JSON.stringify(result)}`);
  await closeGangs(gangs);
} catch (error) {
  say(`error ${(error as Error).name}: ${(error as Error).message}`);
  process.exitCode = 1;
  await closeGangs(gangs).catch(() => undefined);
}
