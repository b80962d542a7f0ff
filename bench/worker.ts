// One measured operation in a fresh process, so that its peak memory is its own.
//
//   node --expose-gc --import tsx bench/worker.ts <op>[,<op>…] <spec.json> <work dir>
//
// Prints one line of JSON per operation: { op, seconds, peakBytes, baselineBytes, … }. Several
// operations in one process (the harness does that only for --quick) run one after the other.
// `<op>-steady` times the operation after two untimed runs of it at full size (see STEADY_SUFFIX).
// `prepare` writes the files the loads read (ours.pt, ckpt/, plain.bin) into the work dir.
import { promises as fsp, readFileSync } from "node:fs";
import { join } from "node:path";
import {
  FileCheckpointManager,
  LocalFileSystem,
  TorchTensorDumper,
  TorchTensorLoader,
  type FileSystem,
  type FileWriter,
  type StateValue,
} from "./library.js";
import { bestRead, bestWrite, checkExactCopy, copyInto, crcAll, directBlocks, directWrite, plainRead, plainReadWithCrc, plainWrite, plainWriteWithCrc } from "./plain-io.js";
import { checkLoaded, checkLoadedInto, checkWritten, liveState, tensorShapesInPlainFile } from "./checks.js";
import { buildState, stateBytes, warmUpSpec, type BuiltState, type ScenarioSpec } from "./scenarios.js";
import { checkFloorTensors, loadFloor, saveFloor } from "./floors.js";
import { collectGarbage, cpuSecondsSince, diskWriteRequests, resetPeakMemory, timerLateness } from "./process-stats.js";
import { NODE_OPS, STEADY_SUFFIX, type Measurement, type NodeOp } from "./worker-protocol.js";

/** `<op>-steady`: untimed runs of the op at full size before the timed one (see STEADY_SUFFIX). */
const STEADY_WARM_UPS = 2;

function baseOp(name: string): NodeOp | undefined {
  const op = name.endsWith(STEADY_SUFFIX) ? name.slice(0, -STEADY_SUFFIX.length) : name;
  return (NODE_OPS as readonly string[]).includes(op) ? (op as NodeOp) : undefined;
}

/** Where `prepare` puts the files that the loads read. */
export const OURS_FILE = "ours.pt";
export const CHECKPOINT_DIR = "ckpt";
export const PLAIN_FILE = "plain.bin";
/** Written by `torch_peer.py prepare` into the same work dir. */
export const TORCH_FILE = "torch.pt";
const STEP = 1;
/** copy-memory-idle: how long its memory rests before the timed copy, about as long as (a)'s background write. */
const SNAPSHOT_IDLE_MS = 1000;

/**
 * The manager of `save-manager-steady`: one for the process, as a training loop has, kept across
 * the untimed runs and the timed one (each saves a new step), where the first-run row makes a new
 * one in a fresh process. Making a manager (its lock, its directory) cost about 30 ms per save of
 * 20,000 small tensors here, once per job in a training loop.
 */
let steadyManager: { manager: FileCheckpointManager; checkpointDir: string; step: number } | undefined;

/** A file system whose files are thrown away as they are written: a save's work without its I/O. */
function discardingFileSystem(): FileSystem {
  const local = new LocalFileSystem();
  const writer: FileWriter = { write: async () => undefined, close: async () => undefined, abort: async () => undefined };
  return Object.assign(Object.create(local) as FileSystem, { createWriter: async () => writer });
}

async function saveWithManager(state: BuiltState["state"], checkpointDir: string, fileSystem?: FileSystem): Promise<void> {
  const manager = new FileCheckpointManager({ checkpointDir, ...(fileSystem === undefined ? {} : { fileSystem }) });
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
  // The files loads read are written through the page cache, as the plain file and torch's are:
  // every load then reads from memory (a save's default direct writes would leave ours on disk only).
  const throughPageCache = new LocalFileSystem({ directWrites: false });
  await new TorchTensorDumper({ fileSystem: throughPageCache }).dump(state, join(dir, OURS_FILE));
  await saveWithManager(state, join(dir, CHECKPOINT_DIR), throughPageCache);
  await plainWrite(buffers, join(dir, PLAIN_FILE));
}

/**
 * Runs `op` once: builds what it needs, records the baseline, times the operation and its peak.
 * `dir` holds the prepared files; `out` is a scratch directory for what saves write.
 */
async function measure(op: NodeOp, spec: ScenarioSpec, dir: string, out: string, steady = false): Promise<Measurement> {
  const needsState = ["save-ours", "save-manager", "save-async", "write-plain", "write-best", "write-direct", "write-plain-crc", "copy-memory", "copy-memory-idle", "crc-memory", "dump-discard", "save-floor"];
  const built = needsState.includes(op) ? buildState(spec) : undefined;
  const live = op.startsWith("load-into") ? liveState(spec) : undefined;
  const targetPath = join(out, op === "save-manager" || op === "save-async" ? "ckpt" : "out.bin");
  let timed: () => Promise<void>;
  let check: () => Promise<void> = async () => undefined;
  /** Untimed work after the baseline (its memory counts in the peak). */
  let before: () => void | Promise<void> = () => undefined;
  /** Untimed work after the timed part (its memory counts in the peak); adds to the measurement. */
  let after: ((result: Measurement) => Promise<void>) | undefined;

  switch (op) {
    case "save-ours":
      timed = async () => void (await new TorchTensorDumper().dump(built!.state, targetPath));
      check = () => checkWritten(spec, targetPath);
      break;
    case "save-manager": {
      if (!steady) {
        timed = () => saveWithManager(built!.state, targetPath);
        check = () => checkWritten(spec, join(targetPath, `step_${STEP}`));
        break;
      }
      const checkpointDir = join(dir, "steady-manager");
      // Untimed: the manager is made at the first run (on an empty directory); later, the last
      // run's checkpoint goes (disk space), its deletion finished first.
      before = async () => {
        if (steadyManager === undefined) {
          await fsp.rm(checkpointDir, { recursive: true, force: true });
          steadyManager = { manager: new FileCheckpointManager({ checkpointDir }), checkpointDir, step: 0 };
          return;
        }
        await steadyManager.manager.deleteCheckpoint(steadyManager.step);
        await steadyManager.manager.waitForPendingDeletions();
      };
      timed = async () => {
        const kept = steadyManager!;
        await kept.manager.beginCheckpoint(++kept.step);
        await kept.manager.saveState(built!.state);
        await kept.manager.commitCheckpoint();
      };
      check = () => checkWritten(spec, join(checkpointDir, `step_${steadyManager!.step}`));
      break;
    }
    case "save-async": {
      // A training loop's second and later checkpoints: the manager keeps the snapshot memory of
      // the last one and copies into it, so one background checkpoint (untimed, but after the
      // baseline: its memory counts in the peak) comes first.
      const manager = new FileCheckpointManager({ checkpointDir: targetPath });
      const step = STEP + 1;
      before = async () => {
        await manager.beginCheckpoint(STEP, { background: true });
        await manager.saveState(built!.state);
        await manager.commitCheckpoint();
        await manager.waitForPendingSave();
      };
      // Training is blocked from beginCheckpoint until commitCheckpoint returns.
      timed = async () => {
        await manager.beginCheckpoint(step, { background: true });
        await manager.saveState(built!.state);
        await manager.commitCheckpoint();
      };
      after = async (result) => {
        // While the checkpoint is written, a 1 ms timer shows how late the event loop runs callbacks.
        const writing = await timerLateness(() => manager.waitForPendingSave());
        result.totalSeconds = result.seconds + writing.seconds;
        result.totalCpuSeconds = cpuSecondsSince(cpuStart);
        result.totalPeakBytes = process.resourceUsage().maxRSS * 1024 - result.baselineBytes;
        result.loopDelaySeconds = writing.worst;
        result.loopP99Seconds = writing.p99;
        result.loopTicks = writing.ticks;
        await manager.close();
        // The same timer for as long with nothing to do: what the machine (other processes) adds.
        const idle = await timerLateness(() => new Promise((resolve) => setTimeout(resolve, Math.min(writing.seconds, 5) * 1000)));
        result.idleLoopDelaySeconds = idle.worst;
      };
      check = () => checkWritten(spec, join(targetPath, `step_${step}`));
      break;
    }
    case "write-direct": {
      let blocks: Buffer[] = [];
      before = async () => void (blocks = await directBlocks(out));
      timed = () => directWrite(built!.buffers, targetPath, blocks);
      check = () => checkExactCopy(built!.buffers, targetPath);
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
    case "load-into-ours":
    case "load-into-nocrc": {
      let loaded: StateValue = null;
      const loader = new TorchTensorLoader({ verifyCrc: op === "load-into-ours" });
      timed = async () => void (loaded = await loader.load(join(dir, OURS_FILE), { into: live!.state }));
      check = async () => checkLoadedInto(spec, live!, loaded, "TorchTensorLoader.load({ into })");
      break;
    }
    case "load-into-manager": {
      let loaded: StateValue = null;
      timed = async () => {
        const manager = new FileCheckpointManager({ checkpointDir: join(dir, CHECKPOINT_DIR) });
        loaded = await manager.loadCheckpoint(STEP, { into: live!.state });
        await manager.close();
      };
      check = async () => checkLoadedInto(spec, live!, loaded, "loadCheckpoint({ into })");
      break;
    }
    case "load-torchfile": {
      let loaded: StateValue = null;
      timed = async () => void (loaded = await new TorchTensorLoader().load(join(dir, TORCH_FILE)));
      check = async () => checkLoaded(spec, loaded, "TorchTensorLoader.load of the torch.save file");
      break;
    }
    case "load-into-torchfile": {
      let loaded: StateValue = null;
      timed = async () => void (loaded = await new TorchTensorLoader().load(join(dir, TORCH_FILE), { into: live!.state }));
      check = async () => checkLoadedInto(spec, live!, loaded, "TorchTensorLoader.load(torch.save file, { into })");
      break;
    }
    case "write-best":
      timed = () => bestWrite(built!.buffers, targetPath);
      check = () => checkWritten(spec, targetPath);
      break;
    case "read-best": {
      let read: Uint8Array = new Uint8Array(0);
      const path = join(dir, PLAIN_FILE);
      timed = async () => void (read = await bestRead(path));
      check = async () => {
        if (read.byteLength !== stateBytes(spec)) throw new Error(`read ${read.byteLength} bytes of ${path}, expected ${stateBytes(spec)}`);
      };
      break;
    }
    case "load-floor": {
      let loaded: StateValue = null;
      const shapes = tensorShapesInPlainFile(spec);
      timed = async () => void ({ state: loaded } = await loadFloor(join(dir, PLAIN_FILE), shapes));
      check = async () => checkFloorTensors(loaded, shapes.length, "the floor load");
      break;
    }
    case "save-floor": {
      const shapes = tensorShapesInPlainFile(spec);
      timed = () => saveFloor(built!.buffers, shapes, targetPath);
      // Read back by the library: a real PyTorch file of the same tensors.
      check = async () => checkFloorTensors(await new TorchTensorLoader().load(targetPath), shapes.length, "the save floor's file");
      break;
    }
    case "load-ours-nocrc": {
      let loaded: StateValue = null;
      timed = async () => void (loaded = await new TorchTensorLoader({ verifyCrc: false }).load(join(dir, OURS_FILE)));
      check = async () => checkLoaded(spec, loaded, "TorchTensorLoader.load");
      break;
    }
    case "crc-memory": {
      let crc = 0;
      timed = async () => void (crc = crcAll(built!.buffers));
      check = async () => {
        if (!Number.isInteger(crc)) throw new Error("no CRC");
      };
      break;
    }
    case "write-plain-crc":
      timed = async () => void (await plainWriteWithCrc(built!.buffers, targetPath));
      check = () => checkWritten(spec, targetPath);
      break;
    case "read-plain-crc": {
      let read: Uint8Array = new Uint8Array(0);
      const path = join(dir, PLAIN_FILE);
      timed = async () => void ({ bytes: read } = await plainReadWithCrc(path));
      check = async () => {
        if (read.byteLength !== stateBytes(spec)) throw new Error(`read ${read.byteLength} bytes of ${path}, expected ${stateBytes(spec)}`);
      };
      break;
    }
    case "dump-discard": {
      let digest: { size: number } | void = undefined;
      timed = async () => void (digest = await new TorchTensorDumper({ fileSystem: discardingFileSystem() }).dump(built!.state, targetPath));
      check = async () => {
        if (digest === undefined || digest.size < stateBytes(spec)) throw new Error(`the discarded file had ${digest?.size} bytes, less than the state's ${stateBytes(spec)}`);
      };
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
    case "copy-memory":
    case "copy-memory-idle": {
      // Into buffers allocated and touched by a first copy, as a pool of snapshot buffers reused
      // across saves would be; only the second copy is timed. They are allocated after the
      // baseline, so the peak counts them: such a pool costs the state's size. The idle variant
      // rests first, as a background checkpoint's snapshot memory does between checkpoints: on
      // this VM such a copy is slower than one right after another (design.md, "Limits measured
      // the way our rows are"), so (d) compares like with like.
      const sources = built!.buffers;
      const restMs = op === "copy-memory-idle" ? SNAPSHOT_IDLE_MS : 0;
      let targets: Uint8Array[] = [];
      before = async () => {
        targets = sources.map((b) => new Uint8Array(b.byteLength));
        copyInto(targets, sources);
        if (restMs > 0) await new Promise((resolve) => setTimeout(resolve, restMs));
      };
      timed = async () => copyInto(targets, sources);
      check = async () => {
        if (targets.some((t, i) => t.byteLength !== sources[i]!.byteLength || t[0] !== sources[i]![0] || t.at(-1) !== sources[i]!.at(-1))) throw new Error("the memory copy is not a copy of the state");
      };
      break;
    }
  }

  collectGarbage();
  resetPeakMemory();
  const baselineBytes = process.memoryUsage().rss;
  await before();
  const requestsBefore = diskWriteRequests(out);
  const cpuStart = process.cpuUsage();
  const start = performance.now();
  await timed();
  const seconds = (performance.now() - start) / 1000;
  const cpuSeconds = cpuSecondsSince(cpuStart);
  const requestsAfter = diskWriteRequests(out);
  const peakBytes = process.resourceUsage().maxRSS * 1024 - baselineBytes;
  const result: Measurement = { seconds, peakBytes, baselineBytes, cpuSeconds };
  if (requestsBefore !== undefined && requestsAfter !== undefined) result.writeRequests = requestsAfter - requestsBefore;
  await after?.(result);
  await check();
  return result;
}

async function main(): Promise<void> {
  const [ops, specPath, dir] = process.argv.slice(2);
  if (ops === undefined || specPath === undefined || dir === undefined) {
    throw new Error("usage: worker.ts <op>[,<op>…] <spec.json> <work dir>");
  }
  const spec = JSON.parse(readFileSync(specPath, "utf8")) as ScenarioSpec;
  if (ops === "prepare") {
    await prepare(spec, dir);
    console.log(JSON.stringify({ prepared: true }));
    return;
  }
  for (const name of ops.split(",")) {
    if (baseOp(name) === undefined) throw new Error(`unknown operation ${name}; known: prepare, ${NODE_OPS.join(", ")}, each also with ${STEADY_SUFFIX}`);
  }
  for (const name of ops.split(",")) {
    const op = baseOp(name)!;
    const warmDir = await fsp.mkdtemp(join(dir, `warm-${op}-`));
    const out = await fsp.mkdtemp(join(dir, `out-${op}-`));
    try {
      if (name.endsWith(STEADY_SUFFIX)) {
        // The same operation at full size, untimed, until V8 has optimized its per-tensor code.
        for (let i = 0; i < STEADY_WARM_UPS; i++) await measure(op, spec, dir, await fsp.mkdtemp(join(warmDir, "out-")), true);
      } else {
        // Warm-up: the same operation on a tiny state, so code is loaded and compiled before timing.
        const warmSpec = warmUpSpec();
        if (op.startsWith("load") || op.startsWith("read-")) await prepare(warmSpec, warmDir);
        // The warm-up's torch file: ours under its name (the same format; torch is not run here).
        if (op.endsWith("torchfile")) await fsp.copyFile(join(warmDir, OURS_FILE), join(warmDir, TORCH_FILE));
        const warmOut = await fsp.mkdtemp(join(warmDir, "out-"));
        await measure(op, warmSpec, warmDir, warmOut);
      }
      await fsp.rm(warmDir, { recursive: true, force: true });

      const result = await measure(op, spec, dir, out, name.endsWith(STEADY_SUFFIX));
      console.log(JSON.stringify({ op: name, ...result }));
    } finally {
      await fsp.rm(warmDir, { recursive: true, force: true });
      await fsp.rm(out, { recursive: true, force: true });
      if (steadyManager !== undefined) {
        await steadyManager.manager.close();
        await fsp.rm(steadyManager.checkpointDir, { recursive: true, force: true });
        steadyManager = undefined;
      }
    }
  }
}

if (process.argv[1] !== undefined && import.meta.filename === process.argv[1]) {
  await main();
}
