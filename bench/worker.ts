// One measured operation in a fresh process, so that its peak memory is its own.
//
//   node --expose-gc --import tsx bench/worker.ts <op> <spec.json> <work dir>
//
// Prints one line of JSON: { seconds, peakBytes, baselineBytes, totalSeconds? }. `prepare` writes
// the files the loads read (ours.pt, ckpt/, plain.bin) into the work dir and prints nothing useful.
import { constants, promises as fsp, readFileSync, writeFileSync } from "node:fs";
import type { FileHandle } from "node:fs/promises";
import { join } from "node:path";
import { FileCheckpointManager, TorchTensorDumper, TorchTensorLoader, type StateValue } from "../src/index.js";
import { buildState, countTensorBytes, stateBytes, warmUpSpec, type BuiltState, type ScenarioSpec } from "./scenarios.js";

export const NODE_OPS = ["save-ours", "load-ours", "save-manager", "load-manager", "save-async", "write-plain", "read-plain", "copy-memory"] as const;
export type NodeOp = (typeof NODE_OPS)[number];

export interface Measurement {
  /** For save-async, the time training is blocked; otherwise the whole operation. */
  seconds: number;
  /** Peak resident memory during the operation above the resident memory just before it. */
  peakBytes: number;
  baselineBytes: number;
  /** save-async only: until the background save finished. */
  totalSeconds?: number;
}

/** Where `prepare` puts the files that the loads read. */
export const OURS_FILE = "ours.pt";
export const CHECKPOINT_DIR = "ckpt";
export const PLAIN_FILE = "plain.bin";
const STEP = 1;

/** The asynchronous-save API that issue 6 asks for; measured only once the manager has it. */
interface BackgroundSaving {
  beginCheckpoint(stepNr: number, options: { background: boolean }): Promise<void>;
  waitForPendingSave(): Promise<void>;
}

export function hasBackgroundSave(): boolean {
  return typeof (FileCheckpointManager.prototype as unknown as Partial<BackgroundSaving>).waitForPendingSave === "function";
}

/** Buffers per writev call: IOV_MAX on Linux. */
const IOV_MAX = 1024;

async function writeAll(handle: FileHandle, buffers: Uint8Array[]): Promise<void> {
  for (let i = 0; i < buffers.length; i += IOV_MAX) {
    const batch = buffers.slice(i, i + IOV_MAX);
    const expected = batch.reduce((sum, b) => sum + b.byteLength, 0);
    const { bytesWritten } = await handle.writev(batch);
    if (bytesWritten === expected) continue;
    // A short writev: finish this batch buffer by buffer.
    let skip = bytesWritten;
    for (const buffer of batch) {
      if (skip >= buffer.byteLength) {
        skip -= buffer.byteLength;
        continue;
      }
      let done = skip;
      skip = 0;
      while (done < buffer.byteLength) done += (await handle.write(buffer, done, buffer.byteLength - done)).bytesWritten;
    }
  }
}

/** The limit for saving: the tensors' bytes in order to a new file, fsynced, nothing else. */
async function plainWrite(buffers: Uint8Array[], path: string): Promise<void> {
  const handle = await fsp.open(path, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL, 0o644);
  try {
    await writeAll(handle, buffers);
    await handle.sync();
  } finally {
    await handle.close();
  }
}

/** The limit for loading: the whole file into fresh memory, which pays first touch as a load does. */
async function plainRead(path: string): Promise<Uint8Array> {
  const handle = await fsp.open(path, constants.O_RDONLY);
  try {
    const { size } = await handle.stat();
    const buffer = Buffer.allocUnsafeSlow(size);
    let done = 0;
    while (done < size) {
      const { bytesRead } = await handle.read(buffer, done, size - done, done);
      if (bytesRead === 0) throw new Error(`${path} ended at ${done} of ${size} bytes`);
      done += bytesRead;
    }
    return buffer;
  } finally {
    await handle.close();
  }
}

function copyInto(targets: Uint8Array[], sources: Uint8Array[]): void {
  sources.forEach((source, i) => targets[i]!.set(source));
}

async function saveWithManager(state: BuiltState["state"], checkpointDir: string): Promise<void> {
  const manager = new FileCheckpointManager({ checkpointDir });
  try {
    await manager.beginCheckpoint(STEP);
    await manager.saveState(state);
    await manager.commitCheckpoint();
  } finally {
    await manager.close();
  }
}

async function prepare(spec: ScenarioSpec, dir: string): Promise<void> {
  const { state, buffers } = buildState(spec);
  await new TorchTensorDumper().dump(state, join(dir, OURS_FILE));
  await saveWithManager(state, join(dir, CHECKPOINT_DIR));
  await plainWrite(buffers, join(dir, PLAIN_FILE));
}

function checkLoaded(spec: ScenarioSpec, value: StateValue, what: string): void {
  const bytes = countTensorBytes(value);
  if (bytes !== stateBytes(spec)) throw new Error(`${what} gave ${bytes} bytes of tensors, expected ${stateBytes(spec)}`);
}

/** Checks that a file, or the files of a directory, hold at least the state's bytes. */
async function checkWritten(spec: ScenarioSpec, path: string): Promise<void> {
  const stat = await fsp.stat(path);
  let size = stat.size;
  if (stat.isDirectory()) {
    size = 0;
    for (const name of await fsp.readdir(path)) size += (await fsp.stat(join(path, name))).size;
  }
  if (size < stateBytes(spec)) throw new Error(`${path} has ${size} bytes, less than the state's ${stateBytes(spec)}`);
}

/** Resets the kernel's peak-RSS mark to the current RSS, so maxRSS afterwards is this operation's peak. */
function resetPeakMemory(): void {
  try {
    writeFileSync("/proc/self/clear_refs", "5");
  } catch {
    // Not Linux, or not allowed: the peak may then include an earlier one (startup, building).
  }
}

const collectGarbage = (globalThis as { gc?: () => void }).gc ?? (() => undefined);

/**
 * Runs `op` once: builds what it needs, records the baseline, times the operation and its peak.
 * `dir` holds the prepared files; `out` is a scratch directory for what saves write.
 */
async function measure(op: NodeOp, spec: ScenarioSpec, dir: string, out: string): Promise<Measurement> {
  const built = op.startsWith("save") || op === "write-plain" || op === "copy-memory" ? buildState(spec) : undefined;
  const targetPath = join(out, op === "save-manager" || op === "save-async" ? "ckpt" : "out.bin");
  let timed: () => Promise<void>;
  let check: () => Promise<void> = async () => undefined;
  /** Untimed work after the baseline (its memory counts in the peak). */
  let before: () => void = () => undefined;
  /** Untimed work after the timed part (its memory counts in the peak). */
  let after: (() => Promise<number>) | undefined;

  switch (op) {
    case "save-ours":
      timed = async () => void (await new TorchTensorDumper().dump(built!.state, targetPath));
      check = () => checkWritten(spec, targetPath);
      break;
    case "save-manager":
      timed = () => saveWithManager(built!.state, targetPath);
      check = () => checkWritten(spec, join(targetPath, `step_${STEP}`));
      break;
    case "save-async": {
      if (!hasBackgroundSave()) throw new Error("the checkpoint manager has no asynchronous save (waitForPendingSave)");
      const manager = new FileCheckpointManager({ checkpointDir: targetPath });
      const background = manager as unknown as BackgroundSaving;
      timed = async () => {
        await background.beginCheckpoint(STEP, { background: true });
        await manager.saveState(built!.state);
        await manager.commitCheckpoint();
      };
      after = async () => {
        const start = performance.now();
        await background.waitForPendingSave();
        const waited = (performance.now() - start) / 1000;
        await manager.close();
        return waited;
      };
      check = () => checkWritten(spec, join(targetPath, `step_${STEP}`));
      break;
    }
    case "write-plain":
      timed = () => plainWrite(built!.buffers, targetPath);
      check = () => checkWritten(spec, targetPath);
      break;
    case "load-ours": {
      let loaded: StateValue = null;
      timed = async () => void (loaded = await new TorchTensorLoader().load(join(dir, OURS_FILE)));
      check = async () => checkLoaded(spec, loaded, "TorchTensorLoader.load");
      break;
    }
    case "load-manager": {
      let loaded: StateValue = null;
      timed = async () => {
        const manager = new FileCheckpointManager({ checkpointDir: join(dir, CHECKPOINT_DIR) });
        loaded = await manager.loadCheckpoint(STEP);
        await manager.close();
      };
      check = async () => checkLoaded(spec, loaded, "loadCheckpoint");
      break;
    }
    case "read-plain": {
      let read: Uint8Array = new Uint8Array(0);
      const path = join(dir, PLAIN_FILE);
      timed = async () => void (read = await plainRead(path));
      check = async () => {
        if (read.byteLength !== stateBytes(spec)) throw new Error(`read ${read.byteLength} bytes of ${path}, expected ${stateBytes(spec)}`);
      };
      break;
    }
    case "copy-memory": {
      // Into buffers allocated and touched by a first copy, as a pool of snapshot buffers reused
      // across saves would be; only the second copy is timed. They are allocated after the
      // baseline, so the peak counts them: such a pool costs the state's size.
      const sources = built!.buffers;
      let targets: Uint8Array[] = [];
      before = () => {
        targets = sources.map((b) => new Uint8Array(b.byteLength));
        copyInto(targets, sources);
      };
      timed = async () => copyInto(targets, sources);
      check = async () => {
        if (targets.some((t, i) => t.byteLength !== sources[i]!.byteLength)) throw new Error("the memory copy has the wrong sizes");
      };
      break;
    }
  }

  collectGarbage();
  resetPeakMemory();
  const baselineBytes = process.memoryUsage().rss;
  before();
  const start = performance.now();
  await timed();
  const seconds = (performance.now() - start) / 1000;
  const waited = after === undefined ? undefined : await after();
  const peakBytes = process.resourceUsage().maxRSS * 1024 - baselineBytes;
  await check();
  const result: Measurement = { seconds, peakBytes, baselineBytes };
  if (waited !== undefined) result.totalSeconds = seconds + waited;
  return result;
}

async function main(): Promise<void> {
  const [op, specPath, dir] = process.argv.slice(2);
  if (op === undefined || specPath === undefined || dir === undefined) {
    throw new Error("usage: worker.ts <op> <spec.json> <work dir>");
  }
  const spec = JSON.parse(readFileSync(specPath, "utf8")) as ScenarioSpec;
  if (op === "prepare") {
    await prepare(spec, dir);
    console.log(JSON.stringify({ prepared: true }));
    return;
  }
  if (!(NODE_OPS as readonly string[]).includes(op)) throw new Error(`unknown operation ${op}; known: prepare, ${NODE_OPS.join(", ")}`);
  const nodeOp = op as NodeOp;

  // Warm-up: the same operation on a tiny state, so code is loaded and compiled before timing.
  const warmDir = await fsp.mkdtemp(join(dir, `warm-${nodeOp}-`));
  const out = await fsp.mkdtemp(join(dir, `out-${nodeOp}-`));
  try {
    const warmSpec = warmUpSpec();
    if (nodeOp.startsWith("load") || nodeOp === "read-plain") await prepare(warmSpec, warmDir);
    const warmOut = await fsp.mkdtemp(join(warmDir, "out-"));
    await measure(nodeOp, warmSpec, warmDir, warmOut);
    await fsp.rm(warmDir, { recursive: true, force: true });

    const result = await measure(nodeOp, spec, dir, out);
    console.log(JSON.stringify(result));
  } finally {
    await fsp.rm(warmDir, { recursive: true, force: true });
    await fsp.rm(out, { recursive: true, force: true });
  }
}

if (process.argv[1] !== undefined && import.meta.filename === process.argv[1]) {
  await main();
}
