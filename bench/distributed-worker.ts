// Bench (c), one rank: run under `ckpt launch --nproc 4 -- node --import tsx bench/distributed-worker.ts
// RUNS BYTES_PER_RANK DIR`. Every round, all ranks start together (a barrier) and either save a
// checkpoint of BYTES_PER_RANK each through the manager (as it saves by default, and again with
// directWrites: false, through the page cache), or write the same bytes to a plain file and fsync
// it; rank 0 prints one JSON line per measurement: the time from the first rank's start
// to the last rank's end, so it measures the ranks' aggregate speed.
import { closeSync, fsyncSync, openSync, rmSync, writeSync } from "node:fs";
import { join } from "node:path";
import { FileCheckpointManager, LocalFileSystem, Tensor, closeGangs, initGangs, type StateDict } from "./library.js";
import { diskWriteRequests } from "./process-stats.js";

const [runsText, bytesText, dir] = process.argv.slice(2) as [string, string, string];
const runs = Number(runsText);
const bytesPerRank = Number(bytesText);
const TENSOR_BYTES = Math.min(16 * 2 ** 20, bytesPerRank);

const gangs = await initGangs();
const { root } = gangs;
const tensors = Array.from({ length: Math.ceil(bytesPerRank / TENSOR_BYTES) }, (_, i) => {
  const values = new Float32Array(TENSOR_BYTES / 4);
  for (let j = 0; j < values.length; j++) values[j] = (i * 31 + j + root.rank) % 1009; // touched: no first-touch cost later
  return Tensor.from(values);
});
const state: StateDict = { model: Object.fromEntries(tensors.map((t, i) => [`layer${i}.weight`, t])), step_nr: 0 };
const manager = new FileCheckpointManager({ checkpointDir: join(dir, "checkpoints"), gangs });
// A manager of its own directory (one manager a directory) that writes through the page cache.
const bufferedManager = new FileCheckpointManager({ checkpointDir: join(dir, "checkpoints-buffered"), gangs, fileSystem: new LocalFileSystem({ directWrites: false }) });
const plainPath = join(dir, `plain-${root.rank}.bin`);
const now = (): number => performance.timeOrigin + performance.now();

async function saveThroughManager(saver: FileCheckpointManager, step: number): Promise<void> {
  await saver.beginCheckpoint(step);
  await saver.saveState({ ...state, step_nr: step });
  await saver.commitCheckpoint();
}

function writePlain(): void {
  const fd = openSync(plainPath, "w");
  try {
    for (const tensor of tensors) writeSync(fd, tensor.bytes);
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

/** Times one operation on every rank at once; rank 0 prints the aggregate time. */
async function measure(op: string, work: () => Promise<void> | void, report: boolean): Promise<void> {
  await root.barrier();
  const requestsBefore = diskWriteRequests(dir);
  const rssBefore = process.memoryUsage().rss;
  const start = now();
  await work();
  const end = now();
  const peakBytes = process.memoryUsage().rss - rssBefore;
  const all = (await root.allGather([start, end, peakBytes])) as [number, number, number][];
  const seconds = (Math.max(...all.map((t) => t[1])) - Math.min(...all.map((t) => t[0]))) / 1000;
  // Every rank's requests (the disk's count), from before the first start to after the last end.
  const requestsAfter = diskWriteRequests(dir);
  const writeRequests = requestsBefore === undefined || requestsAfter === undefined ? undefined : requestsAfter - requestsBefore;
  if (report && root.rank === 0) console.log(JSON.stringify({ op, seconds, peakBytes: Math.max(...all.map((t) => t[2])), writeRequests }));
}

let step = 0;
for (let run = -1; run < runs; run++) {
  // Run -1 warms the disk path and the page cache; the order alternates so neither always goes first.
  step++;
  const ops: [string, () => Promise<void> | void, () => Promise<void> | void][] = [
    ["save-launch", () => saveThroughManager(manager, step), () => manager.deleteCheckpoint(step)],
    ["write-plain", writePlain, () => rmSync(plainPath, { force: true })],
    ["save-launch-buffered", () => saveThroughManager(bufferedManager, step), () => bufferedManager.deleteCheckpoint(step)],
  ];
  if (run % 2 === 1) ops.reverse();
  for (const [op, work, cleanUp] of ops) {
    await measure(op, work, run >= 0);
    await cleanUp();
  }
}
await manager.close();
await bufferedManager.close();
await closeGangs(gangs);
