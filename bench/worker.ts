// One measured operation in a fresh process, so that its peak memory is its own.
//
//   node --expose-gc --import tsx bench/worker.ts <op>[,<op>…] <spec.json> <work dir>
//
// Prints one line of JSON per operation: { op, seconds, peakBytes, baselineBytes, … }. Several
// operations in one process (the harness does that only for --quick) run one after the other.
// `<op>-steady` times the operation after two untimed runs of it at full size (see STEADY_SUFFIX).
// `prepare` writes the files the loads read (ours.pt, ckpt/, plain.bin) into the work dir.
import { constants, promises as fsp, readFileSync, writeFileSync } from "node:fs";
import type { FileHandle } from "node:fs/promises";
import { join } from "node:path";
import { crc32 } from "node:zlib";
import { crc32 as fastCrc32 } from "@node-rs/crc32";
import {
  FileCheckpointManager,
  LocalFileSystem,
  Storage,
  Tensor,
  TorchTensorDumper,
  TorchTensorLoader,
  type FileSystem,
  type FileWriter,
  type StateDict,
  type StateValue,
} from "./library.js";
import { buildState, collectTensors, countTensorBytes, stateBytes, warmUpSpec, type BuiltState, type ScenarioSpec } from "./scenarios.js";

export const NODE_OPS = [
  "save-ours",
  "load-ours",
  "load-into-ours",
  "save-manager",
  "load-manager",
  "load-into-manager",
  "save-async",
  "write-plain",
  "read-plain",
  "copy-memory",
  // Diagnostics: measurements that explain where the time of the operations above goes.
  "crc-memory",
  "write-plain-crc",
  "read-plain-crc",
  "dump-discard",
  "load-ours-nocrc",
  "load-into-nocrc",
  // Issue 14: loads of the file torch.save wrote (bench/torch_peer.py prepare), and the disk's best.
  "load-torchfile",
  "load-into-torchfile",
  "write-best",
  "read-best",
  "load-floor",
  "write-direct",
] as const;
export type NodeOp = (typeof NODE_OPS)[number];

/**
 * `<op>-steady`: the op timed after STEADY_WARM_UPS untimed runs of the same size in the same
 * process, as a training job's later saves run, instead of after a warm-up on a tiny state (the
 * first operation of a fresh process, as a resume's load runs).
 */
export const STEADY_SUFFIX = "-steady";
const STEADY_WARM_UPS = 2;

function baseOp(name: string): NodeOp | undefined {
  const op = name.endsWith(STEADY_SUFFIX) ? name.slice(0, -STEADY_SUFFIX.length) : name;
  return (NODE_OPS as readonly string[]).includes(op) ? (op as NodeOp) : undefined;
}

export interface Measurement {
  op?: string;
  /** For save-async, the time training is blocked; otherwise the whole operation. */
  seconds: number;
  /** Peak resident memory during the operation above the resident memory just before it. */
  peakBytes: number;
  baselineBytes: number;
  /** CPU time of the whole process (every thread: user + system) during the operation. */
  cpuSeconds: number;
  /** save-async only: from beginCheckpoint until waitForPendingSave resolved. */
  totalSeconds?: number;
  /** save-async only: CPU time until waitForPendingSave resolved. */
  totalCpuSeconds?: number;
  /** save-async only: peak memory until waitForPendingSave resolved (peakBytes is at commit's return). */
  totalPeakBytes?: number;
  /** save-async only: the worst lateness of a 1 ms interval timer while the checkpoint was written. */
  loopDelaySeconds?: number;
  /** save-async only: the 99th percentile of that lateness. */
  loopP99Seconds?: number;
  /** save-async only: how many times that timer fired while the checkpoint was written. */
  loopTicks?: number;
  /** save-async only: the worst lateness of the same timer afterwards, as long, with nothing to do. */
  idleLoopDelaySeconds?: number;
}

/** Where `prepare` puts the files that the loads read. */
export const OURS_FILE = "ours.pt";
export const CHECKPOINT_DIR = "ckpt";
export const PLAIN_FILE = "plain.bin";
/** Written by `torch_peer.py prepare` into the same work dir. */
export const TORCH_FILE = "torch.pt";
const STEP = 1;

/** Buffers per writev call: IOV_MAX on Linux. */
const IOV_MAX = 1024;

/** Bytes per writev call: Linux writes at most 0x7ffff000 per call, and Node reports more wrongly (an int32). */
const MAX_WRITEV_BYTES = 1 << 30;

/** `buffers` in batches of at most IOV_MAX buffers and (but for a single larger buffer) MAX_WRITEV_BYTES. */
function writevBatches(buffers: Uint8Array[]): Uint8Array[][] {
  const batches: Uint8Array[][] = [];
  let batch: Uint8Array[] = [];
  let bytes = 0;
  for (const buffer of buffers) {
    if (batch.length > 0 && (batch.length >= IOV_MAX || bytes + buffer.byteLength > MAX_WRITEV_BYTES)) {
      batches.push(batch);
      batch = [];
      bytes = 0;
    }
    batch.push(buffer);
    bytes += buffer.byteLength;
  }
  if (batch.length > 0) batches.push(batch);
  return batches;
}

async function writeAll(handle: FileHandle, buffers: Uint8Array[]): Promise<void> {
  for (const batch of writevBatches(buffers)) {
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

/** Concurrent writers (libuv runs each in its own thread) of the disk's best write. */
const BEST_WRITERS = 4;

/** Splits `buffers` into `parts` runs of about equal bytes, each with the file position it starts at. */
function splitRuns(buffers: Uint8Array[], parts: number): { position: number; buffers: Uint8Array[] }[] {
  const total = buffers.reduce((sum, b) => sum + b.byteLength, 0);
  const runs: { position: number; buffers: Uint8Array[] }[] = [];
  let position = 0;
  let current: { position: number; buffers: Uint8Array[]; bytes: number } = { position: 0, buffers: [], bytes: 0 };
  for (const buffer of buffers) {
    current.buffers.push(buffer);
    current.bytes += buffer.byteLength;
    position += buffer.byteLength;
    if (current.bytes >= total / parts && runs.length < parts - 1) {
      runs.push(current);
      current = { position, buffers: [], bytes: 0 };
    }
  }
  if (current.buffers.length > 0) runs.push(current);
  return runs;
}

/**
 * The disk's best write here: the same bytes as the plain write, as BEST_WRITERS runs written at
 * once with positioned writev calls (libuv's threads: several writes in flight), then one fsync.
 * Where one writev stream is not the fastest way to this disk, this is the honest limit.
 */
async function bestWrite(buffers: Uint8Array[], path: string): Promise<void> {
  const handle = await fsp.open(path, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL, 0o644);
  try {
    await Promise.all(
      splitRuns(buffers, BEST_WRITERS).map(async (run) => {
        let position = run.position;
        for (const batch of writevBatches(run.buffers)) {
          const expected = batch.reduce((sum, b) => sum + b.byteLength, 0);
          const { bytesWritten } = await handle.writev(batch, position);
          if (bytesWritten !== expected) {
            // A short write (rare): the rest of the batch buffer by buffer, at explicit positions.
            let at = position;
            for (const buffer of batch) {
              const start = Math.max(0, position + bytesWritten - at);
              for (let done = start; done < buffer.byteLength; ) done += (await handle.write(buffer, done, buffer.byteLength - done, at + done)).bytesWritten;
              at += buffer.byteLength;
            }
          }
          position += expected;
        }
      }),
    );
    await handle.sync();
  } finally {
    await handle.close();
  }
}

/** O_DIRECT's alignment of memory, file offsets and lengths (4 KiB: enough for 512-byte and 4K-sector disks). */
const DIRECT_ALIGNMENT = 4096;
/** The blocks an O_DIRECT write copies the tensors into and writes, two at once. */
const DIRECT_BLOCK = 16 << 20;

/**
 * The tensors' bytes written around the page cache (O_DIRECT) and fsynced: copied into aligned
 * blocks (`directBlocks`, made beforehand as a writer would keep them), each written while the
 * next is filled, the last one padded and the file then cut to its size.
 */
async function directWrite(buffers: Uint8Array[], path: string, blocks: Buffer[]): Promise<void> {
  const handle = await fsp.open(path, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_DIRECT, 0o644);
  try {
    let block = 0;
    let filled = 0;
    let position = 0;
    let writing: Promise<unknown> = Promise.resolve();
    const flush = async (length: number): Promise<void> => {
      await writing; // the other block's write: its buffer is filled next
      const bytes = blocks[block]!.subarray(0, length);
      writing = handle.write(bytes, 0, length, position).then(({ bytesWritten }) => {
        if (bytesWritten !== length) throw new Error(`an O_DIRECT write of ${length} bytes wrote ${bytesWritten}`);
      });
      position += length;
      block = 1 - block;
      filled = 0;
    };
    for (const buffer of buffers) {
      for (let done = 0; done < buffer.byteLength; ) {
        const take = Math.min(DIRECT_BLOCK - filled, buffer.byteLength - done);
        blocks[block]!.set(buffer.subarray(done, done + take), filled);
        filled += take;
        done += take;
        if (filled === DIRECT_BLOCK) await flush(DIRECT_BLOCK);
      }
    }
    const size = position + filled;
    if (filled > 0) await flush(Math.ceil(filled / DIRECT_ALIGNMENT) * DIRECT_ALIGNMENT);
    await writing;
    await handle.truncate(size);
    await handle.sync();
  } finally {
    await handle.close();
  }
}

/**
 * Two DIRECT_BLOCK views of touched memory that start at a DIRECT_ALIGNMENT boundary. Node.js
 * cannot say where a buffer's memory starts, so the aligned start is found by trying O_DIRECT
 * writes of 4 KiB from offsets 0, 8, 16, … (to a scratch file in `dir`) until one is accepted.
 */
async function directBlocks(dir: string): Promise<Buffer[]> {
  const scratch = join(dir, "direct-probe.bin");
  const handle = await fsp.open(scratch, constants.O_WRONLY | constants.O_CREAT | constants.O_TRUNC | constants.O_DIRECT, 0o644);
  try {
    const aligned = async (): Promise<Buffer> => {
      const memory = Buffer.alloc(DIRECT_BLOCK + DIRECT_ALIGNMENT);
      for (let offset = 0; offset < DIRECT_ALIGNMENT; offset += 8) {
        try {
          await handle.write(memory, offset, DIRECT_ALIGNMENT, 0);
          return memory.subarray(offset, offset + DIRECT_BLOCK);
        } catch (error) {
          if ((error as NodeJS.ErrnoException).code !== "EINVAL") throw error;
        }
      }
      throw new Error("no offset of a buffer is aligned for O_DIRECT here (the file system may not support it)");
    };
    return [await aligned(), await aligned()];
  } finally {
    await handle.close();
    await fsp.rm(scratch, { force: true });
  }
}

/** The file holds exactly the buffers' bytes, in order (its size, and the first and last 16 tensors compared). */
async function checkExactCopy(buffers: Uint8Array[], path: string): Promise<void> {
  const size = buffers.reduce((sum, b) => sum + b.byteLength, 0);
  const file = await fsp.readFile(path);
  if (file.byteLength !== size) throw new Error(`${path} has ${file.byteLength} bytes, not ${size}`);
  const head = Buffer.concat(buffers.slice(0, 16));
  const tail = Buffer.concat(buffers.slice(-16));
  if (!file.subarray(0, head.byteLength).equals(head)) throw new Error(`${path} does not start with the tensors' bytes`);
  if (!file.subarray(size - tail.byteLength).equals(tail)) throw new Error(`${path} does not end with the tensors' bytes`);
}

/** The disk's (here: the page cache's) best read: the file in BEST_WRITERS pieces read at once into fresh memory. */
async function bestRead(path: string): Promise<Uint8Array> {
  const handle = await fsp.open(path, constants.O_RDONLY);
  try {
    const { size } = await handle.stat();
    const buffer = Buffer.allocUnsafeSlow(size);
    const piece = Math.ceil(size / BEST_WRITERS / 4096) * 4096;
    await Promise.all(
      Array.from({ length: BEST_WRITERS }, async (_, i) => {
        const end = Math.min(size, (i + 1) * piece);
        for (let done = i * piece; done < end; ) {
          const { bytesRead } = await handle.read(buffer, done, Math.min(end - done, 1 << 30), done);
          if (bytesRead === 0) throw new Error(`${path} ended at ${done} of ${size} bytes`);
          done += bytesRead;
        }
      }),
    );
    return buffer;
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

/** A diagnostic: zlib's CRC-32 (what our files carry) of the state's bytes in one pass, in memory. */
function crcAll(buffers: Uint8Array[]): number {
  let crc = 0;
  for (const buffer of buffers) crc = crc32(buffer, crc);
  return crc;
}

/** Batches for the checksummed plain write: up to IOV_MAX buffers or CRC_BATCH_BYTES each. */
const CRC_BATCH_BYTES = 8 << 20;

/**
 * A diagnostic: the plain write, with one CRC-32 pass over every byte on the main thread while the
 * previous batch is being written (as our writer does): the most a save that checksums its data
 * once can reach here, with the checksum and the kernel's copy into the page cache sharing the cores.
 */
async function plainWriteWithCrc(buffers: Uint8Array[], path: string): Promise<number> {
  const handle = await fsp.open(path, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL, 0o644);
  try {
    let crc = 0;
    let writing: Promise<void> = Promise.resolve();
    let batch: Uint8Array[] = [];
    let batchBytes = 0;
    const send = async (): Promise<void> => {
      const ready = batch;
      batch = [];
      batchBytes = 0;
      const previous = writing;
      writing = previous.then(() => writeAll(handle, ready));
      writing.catch(() => undefined);
      // Let the finished write start the next one while the next batch is checksummed.
      await new Promise((resolve) => setImmediate(resolve));
    };
    for (const buffer of buffers) {
      crc = crc32(buffer, crc);
      batch.push(buffer);
      batchBytes += buffer.byteLength;
      if (batch.length >= IOV_MAX || batchBytes >= CRC_BATCH_BYTES) await send();
    }
    if (batch.length > 0) await send();
    await writing;
    await handle.sync();
    return crc;
  } finally {
    await handle.close();
  }
}

/** Pieces of the checksummed plain read, as the loader's whole-file read uses. */
const READ_PIECE_BYTES = 16 << 20;

/**
 * A diagnostic: the plain read into fresh memory in pieces, the CRC-32 of each piece computed on
 * the main thread while the next one is read (as the loader's whole-file read does): the most a
 * load that checks the CRC of every byte once can reach here.
 */
async function plainReadWithCrc(path: string): Promise<{ bytes: Uint8Array; crc: number }> {
  const handle = await fsp.open(path, constants.O_RDONLY);
  try {
    const { size } = await handle.stat();
    const bytes = Buffer.allocUnsafeSlow(size);
    const readPiece = async (position: number): Promise<Uint8Array> => {
      const length = Math.min(READ_PIECE_BYTES, size - position);
      let done = 0;
      while (done < length) {
        const { bytesRead } = await handle.read(bytes, position + done, length - done, position + done);
        if (bytesRead === 0) throw new Error(`${path} ended at ${position + done} of ${size} bytes`);
        done += bytesRead;
      }
      return bytes.subarray(position, position + length);
    };
    let crc = 0;
    let next = size > 0 ? readPiece(0) : undefined;
    for (let position = 0; next !== undefined; ) {
      const piece = await next;
      position += piece.byteLength;
      next = position < size ? readPiece(position) : undefined;
      crc = crc32(piece, crc);
    }
    return { bytes, crc };
  } finally {
    await handle.close();
  }
}

/**
 * Runs a 1 ms interval timer until `work` resolves: the worst and the 99th-percentile lateness of
 * its callbacks (time between two callbacks beyond the 1 ms asked for, and from the last one to the end).
 */
async function timerLateness(work: () => Promise<unknown>): Promise<{ seconds: number; worst: number; p99: number; ticks: number }> {
  const start = performance.now();
  let last = start;
  const late: number[] = [];
  const timer = setInterval(() => {
    const now = performance.now();
    late.push(Math.max(0, now - last - 1));
    last = now;
  }, 1);
  try {
    await work();
  } finally {
    clearInterval(timer);
  }
  const end = performance.now();
  const ticks = late.length;
  late.push(Math.max(0, end - last - 1));
  late.sort((a, b) => a - b);
  const p99 = late[Math.min(late.length - 1, Math.floor(0.99 * late.length))]!;
  return { seconds: (end - start) / 1000, worst: late.at(-1)! / 1000, p99: p99 / 1000, ticks };
}

/** A file system whose files are thrown away as they are written: a save's work without its I/O. */
function discardingFileSystem(): FileSystem {
  const local = new LocalFileSystem();
  const writer: FileWriter = { write: async () => undefined, close: async () => undefined, abort: async () => undefined };
  return Object.assign(Object.create(local) as FileSystem, { createWriter: async () => writer });
}

/**
 * The state a training process that resumes already has: built, then every byte overwritten, so
 * its memory is touched (warm) and a load that fills it in place is visible.
 */
function liveState(spec: ScenarioSpec): { state: StateDict; tensors: Set<Tensor>; buffers: Uint8Array[]; expected: number[] } {
  const { state, buffers } = buildState(spec);
  const expected = buffers.map((b) => new Float32Array(b.buffer, b.byteOffset, 1)[0]!);
  for (const buffer of buffers) buffer.fill(0);
  return { state, tensors: collectTensors(state), buffers, expected };
}

/** Checks that a load into `live` filled every one of its tensors in place and returned them. */
function checkLoadedInto(spec: ScenarioSpec, live: ReturnType<typeof liveState>, loaded: StateValue, what: string): void {
  checkLoaded(spec, loaded, what);
  const returned = collectTensors(loaded);
  const inPlace = [...live.tensors].filter((t) => returned.has(t)).length;
  if (inPlace !== live.tensors.size) throw new Error(`${what} returned ${inPlace} of the ${live.tensors.size} existing tensors: the others were allocated anew`);
  live.buffers.forEach((buffer, i) => {
    const floats = new Float32Array(buffer.buffer, buffer.byteOffset, buffer.byteLength / 4);
    if (floats[0] !== live.expected[i] || floats[floats.length - 1] !== live.expected[i]) throw new Error(`${what} did not fill tensor ${i} in place`);
  });
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

/** The shapes of the tensors in plain.bin, in its order: the parameters, then each one's two Adam moments. */
function tensorShapesInPlainFile(spec: ScenarioSpec): number[][] {
  const shapes = spec.parameters.map((p) => p.shape);
  if (spec.adam) for (const p of spec.parameters) shapes.push(p.shape, p.shape);
  return shapes;
}

function numelOf(shape: readonly number[]): number {
  return shape.reduce((product, n) => product * n, 1);
}

function checkLoaded(spec: ScenarioSpec, value: StateValue, what: string): void {
  const bytes = countTensorBytes(value);
  if (bytes !== stateBytes(spec)) throw new Error(`${what} gave ${bytes} bytes of tensors, expected ${stateBytes(spec)}`);
  checkValues(spec, value, what);
}

/**
 * Checks the values, not only the byte count: buildState (and torch_peer.py's build_state) fill
 * the n-th tensor made with n · 10⁻³ — the model's parameters in order, then each parameter's
 * exp_avg and exp_avg_sq — so every tensor's first and last element must be that.
 */
function checkValues(spec: ScenarioSpec, value: StateValue, what: string): void {
  const state = value as { model?: Record<string, unknown>; optimizer?: { state?: unknown } };
  let seed = 0;
  const expect = (tensor: unknown, where: string): void => {
    const expected = Math.fround(++seed * 1e-3);
    const data = (tensor as Tensor | undefined)?.data;
    if (!(data instanceof Float32Array) || data[0] !== expected || data[data.length - 1] !== expected) {
      throw new Error(`${what}: ${where} does not hold the values saved (expected ${expected} throughout)`);
    }
  };
  for (const p of spec.parameters) expect(state.model?.[p.name], `model["${p.name}"]`);
  if (!spec.adam) return;
  const perParameter = state.optimizer?.state;
  spec.parameters.forEach((_, i) => {
    const moments = (perParameter instanceof Map ? perParameter.get(i) : (perParameter as Record<number, unknown> | undefined)?.[i]) as Record<string, unknown> | undefined;
    expect(moments?.exp_avg, `optimizer.state[${i}].exp_avg`);
    expect(moments?.exp_avg_sq, `optimizer.state[${i}].exp_avg_sq`);
  });
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

/** User + system CPU time of every thread of this process since `start`. */
function cpuSecondsSince(start: NodeJS.CpuUsage): number {
  const { user, system } = process.cpuUsage(start);
  return (user + system) / 1e6;
}

const collectGarbage = (globalThis as { gc?: () => void }).gc ?? (() => undefined);

/**
 * Runs `op` once: builds what it needs, records the baseline, times the operation and its peak.
 * `dir` holds the prepared files; `out` is a scratch directory for what saves write.
 */
async function measure(op: NodeOp, spec: ScenarioSpec, dir: string, out: string): Promise<Measurement> {
  const needsState = ["save-ours", "save-manager", "save-async", "write-plain", "write-best", "write-direct", "write-plain-crc", "copy-memory", "crc-memory", "dump-discard"];
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
    case "save-manager":
      timed = () => saveWithManager(built!.state, targetPath);
      check = () => checkWritten(spec, join(targetPath, `step_${STEP}`));
      break;
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
      // The least any load that returns these tensors, checksummed, does here: the best read of
      // their bytes alone (plain.bin: no file format around them), then per tensor a CRC-32 pass,
      // a view, a Storage, a Tensor and a dict entry. No pickle, no zip directory, no headers.
      let loaded: Record<string, Tensor> = {};
      let crcs: number[] = [];
      const path = join(dir, PLAIN_FILE);
      const shapes = tensorShapesInPlainFile(spec);
      timed = async () => {
        const bytes = await bestRead(path);
        const state: Record<string, Tensor> = {};
        const sums: number[] = [];
        let at = 0;
        for (let i = 0; i < shapes.length; i++) {
          const shape = shapes[i]!;
          const view = new Uint8Array(bytes.buffer, bytes.byteOffset + at, numelOf(shape) * 4);
          sums.push(fastCrc32(view));
          state[`tensor.${i}`] = new Tensor({ storage: new Storage("float32", view), shape });
          at += view.byteLength;
        }
        loaded = state;
        crcs = sums;
      };
      check = async () => {
        // Tensor i of plain.bin is filled with (i + 1) · 10⁻³ (bench/scenarios.ts buildState).
        shapes.forEach((_, i) => {
          const data = loaded[`tensor.${i}`]!.data as Float32Array;
          if (data[0] !== Math.fround((i + 1) * 1e-3) || data[data.length - 1] !== data[0]) throw new Error(`the floor load's tensor ${i} holds ${data[0]}`);
        });
        if (crcs.length !== shapes.length) throw new Error("the floor load checksummed too few tensors");
      };
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
  await before();
  const cpuStart = process.cpuUsage();
  const start = performance.now();
  await timed();
  const seconds = (performance.now() - start) / 1000;
  const cpuSeconds = cpuSecondsSince(cpuStart);
  const peakBytes = process.resourceUsage().maxRSS * 1024 - baselineBytes;
  const result: Measurement = { seconds, peakBytes, baselineBytes, cpuSeconds };
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
        for (let i = 0; i < STEADY_WARM_UPS; i++) await measure(op, spec, dir, await fsp.mkdtemp(join(warmDir, "out-")));
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

      const result = await measure(op, spec, dir, out);
      console.log(JSON.stringify({ op: name, ...result }));
    } finally {
      await fsp.rm(warmDir, { recursive: true, force: true });
      await fsp.rm(out, { recursive: true, force: true });
    }
  }
}

if (process.argv[1] !== undefined && import.meta.filename === process.argv[1]) {
  await main();
}
