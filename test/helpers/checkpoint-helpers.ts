import assert from "node:assert/strict";
import { mkdtemp, readFile, readdir, rm, stat } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after } from "node:test";
import { crc32 } from "node:zlib";

import {
  FileCheckpointManager,
  InProcessGang,
  PyDType,
  PyFloat,
  Tensor,
  isFloatSlot,
  isTuple,
  tuple,
  type Gangs,
  type Manifest,
  type StateDict,
} from "../../src/index.js";

/** Temporary directories for one test file, removed when the file's tests are done. */
export function useTempDirs(prefix: string): () => Promise<string> {
  const dirs: string[] = [];
  after(async () => {
    await Promise.all(dirs.map((dir) => rm(dir, { recursive: true, force: true })));
  });
  return async () => {
    const dir = await mkdtemp(join(tmpdir(), `ckpt-${prefix}-`));
    dirs.push(dir);
    return dir;
  };
}

/** A float32 tensor of `shape` whose elements are `start, start + 1, ...`. */
export function arange(start: number, shape: number[]): Tensor {
  const numel = shape.reduce((a, b) => a * b, 1);
  return Tensor.from(Float32Array.from({ length: numel }, (_, i) => start + i), { shape });
}

/** A model state dict whose values depend on `seed`, so checkpoints can be told apart. */
export function modelState(seed: number): StateDict {
  return {
    "encoder.weight": arange(seed, [2, 3]),
    "encoder.bias": Tensor.from(new Float64Array([seed + 0.5, -seed])),
    "head.weight": Tensor.from(new BigInt64Array([BigInt(seed), -1n, 2n ** 40n])),
  };
}

/**
 * A training state with what a real one holds: a model, an optimizer state keyed by int with
 * tuples inside, counters, strings, booleans, null, bytes, a dtype and a few tensor dtypes.
 */
export function trainingState(seed: number): StateDict {
  return {
    model: modelState(seed),
    optimizer: {
      state: new Map([
        [0, { step: seed, exp_avg: Tensor.from(new Float32Array([seed, seed / 4])) }],
        [1, { step: seed, exp_avg: Tensor.from(new Int32Array([seed, 7])) }],
      ]),
      param_groups: [{ lr: 0.001, betas: tuple(0.9, 0.999), params: [0, 1], amsgrad: false }],
    },
    step_nr: seed,
    epoch: 3,
    data_reader: { position: 1234, shard: "train-00001", exhausted: null },
    rng: Uint8Array.from([1, 2, 3, seed & 0xff]),
    mask: Tensor.from(Uint8Array.from([1, 0, 1]), { dtype: "bool" }),
    half: Tensor.from(Uint16Array.from([0x3c00, 0xc000]), { dtype: "float16" }),
    dtype: new PyDType("float32"),
    big: 2n ** 60n,
    lr_scale: new PyFloat(1),
  };
}

/**
 * The value with tensors replaced by their dtype, shape and elements, and the marks JavaScript
 * cannot see (tuples, byte strings, PyFloat) spelled out, so deepStrictEqual compares everything
 * that matters and nothing that does not (a loaded tensor's bytes are a Buffer, not a Uint8Array).
 */
export function plain(value: unknown, container?: object, key?: unknown): unknown {
  if (value instanceof Tensor) {
    return { tensor: value.dtype, shape: [...value.shape], data: Array.from(value.data as ArrayLike<number | bigint>) };
  }
  // A Python float, whether a PyFloat, a fraction, or a whole number marked as float in its container.
  if (value instanceof PyFloat) return { float: value.value };
  if (typeof value === "number" && (!Number.isSafeInteger(value) || (container !== undefined && isFloatSlot(container, key)))) return { float: value };
  if (value instanceof Uint8Array) return { bytes: Array.from(value) };
  if (value instanceof PyDType) return { dtype: value.name };
  if (value instanceof Map) return new Map([...value].map(([k, item]) => [k, plain(item, value, k)]));
  if (Array.isArray(value)) {
    const items = value.map((item, index) => plain(item, value, index));
    return isTuple(value) ? { tuple: items } : items;
  }
  if (typeof value === "object" && value !== null) {
    return Object.fromEntries(Object.entries(value).map(([k, item]) => [k, plain(item, value, k)]));
  }
  return value;
}

/** Asserts that a loaded state holds the same values, types and tensor data as the saved one. */
export function assertSameState(actual: unknown, expected: unknown, message?: string): void {
  assert.deepStrictEqual(plain(actual), plain(expected), message);
}

/** Every file under `dir`, as sorted paths relative to it ("cc" subdirectories included). */
export async function listFiles(dir: string, prefix = ""): Promise<string[]> {
  const names: string[] = [];
  for (const entry of await readdir(dir, { withFileTypes: true })) {
    const name = prefix === "" ? entry.name : `${prefix}/${entry.name}`;
    if (entry.isDirectory()) names.push(...(await listFiles(join(dir, entry.name), name)));
    else names.push(name);
  }
  return names.sort();
}

/** The entries of a directory, sorted. */
export async function entries(dir: string): Promise<string[]> {
  return (await readdir(dir)).sort();
}

export async function readManifest(checkpointDir: string, stepNr: number): Promise<Manifest> {
  return JSON.parse(await readFile(join(checkpointDir, `step_${stepNr}`, "manifest.json"), "utf8")) as Manifest;
}

/** Asserts that the manifest names exactly the files beside it, with their real sizes and CRC-32s. */
export async function assertManifestMatchesFiles(checkpointDir: string, stepNr: number): Promise<Manifest> {
  const dir = join(checkpointDir, `step_${stepNr}`);
  const manifest = await readManifest(checkpointDir, stepNr);
  const files = (await listFiles(dir)).filter((name) => name !== "manifest.json");
  assert.deepStrictEqual(Object.keys(manifest.files).sort(), files, `the manifest of step ${stepNr} lists exactly its files`);
  for (const name of files) {
    const bytes = await readFile(join(dir, name));
    assert.equal(manifest.files[name]!.size, (await stat(join(dir, name))).size, `size of ${name}`);
    assert.equal(manifest.files[name]!.crc32, crc32(bytes).toString(16).padStart(8, "0"), `CRC-32 of ${name}`);
  }
  return manifest;
}

/**
 * Gangs for `dpSize × tpSize` members of one process that really exchange values, indexed by root
 * rank (`dpRank * tpSize + tpRank`, as fakeGangs numbers them).
 */
export function inProcessGangs(dpSize: number, tpSize: number): Gangs[] {
  const root = InProcessGang.create(dpSize * tpSize);
  const dpGroups = Array.from({ length: tpSize }, () => InProcessGang.create(dpSize));
  const tpGroups = Array.from({ length: dpSize }, () => InProcessGang.create(tpSize));
  return root.map((rootGang, rank) => {
    const dpRank = Math.floor(rank / tpSize);
    const tpRank = rank % tpSize;
    return { root: rootGang, dp: dpGroups[tpRank]![dpRank]!, tp: tpGroups[dpRank]![tpRank]! };
  });
}

/** One manager per member of `gangs`, all on `checkpointDir`. */
export function managersFor(checkpointDir: string, gangs: Gangs[]): FileCheckpointManager[] {
  return gangs.map((g) => new FileCheckpointManager({ checkpointDir, gangs: g }));
}

/** Runs `work` on every manager at once, as the ranks of a job do; rejects if any rank rejects. */
export function onAllRanks<T>(managers: FileCheckpointManager[], work: (manager: FileCheckpointManager, rank: number) => Promise<T>): Promise<T[]> {
  return Promise.all(managers.map((manager, rank) => work(manager, rank)));
}

/** Every rank's outcome, settled, within `ms` milliseconds; a rank still waiting then fails the test. */
export async function settleWithin<T>(ms: number, promises: Promise<T>[]): Promise<PromiseSettledResult<T>[]> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`a rank was still waiting after ${ms} ms: it hangs`)), ms);
  });
  try {
    return await Promise.race([Promise.allSettled(promises), timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/** Saves and commits one simple checkpoint with a single-process manager. */
export async function saveStep(
  manager: FileCheckpointManager,
  stepNr: number,
  options: { score?: number; lowerBetter?: boolean; metadata?: StateDict; state?: StateDict } = {},
): Promise<StateDict> {
  const state = options.state ?? trainingState(stepNr);
  await manager.beginCheckpoint(stepNr);
  await manager.saveState(state, { replicatedKeys: ["epoch"] });
  if (options.metadata !== undefined) await manager.saveMetadata(options.metadata);
  if (options.score !== undefined) await manager.saveScore(options.score, { lowerBetter: options.lowerBetter ?? false });
  await manager.commitCheckpoint();
  return state;
}
