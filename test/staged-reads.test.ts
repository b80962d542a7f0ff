/**
 * Reads into memory the process already uses go through small reused buffers (src/fs/staged-reads.ts):
 * every byte lands where it belongs whatever sizes the reads return, no read writes into the target
 * itself, a failure waits for the reads under way, and a local file's large reads into existing
 * tensors take this path.
 */
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { open, truncate, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { test } from "node:test";
import { STAGE_BYTES, keptStages, readThroughStages, type ReadAt } from "../src/fs/staged-reads.js";
import { LocalFileSystem, SafetensorsDumper, SafetensorsLoader, Tensor, TensorLoadError, TorchTensorDumper, TorchTensorLoader } from "../src/index.js";
import { seededRandom } from "../torture/plain-values.js";
import { useTempDirs } from "./helpers/checkpoint-helpers.js";
import { requireTorch, runPython } from "./helpers/torch-python.js";

const tempDir = useTempDirs("staged-reads");

/** A ReadAt over `file` that returns between 1 byte and what was asked, at random; it records the buffers it wrote into. */
function shortReads(file: Uint8Array, seed: number, written: Set<ArrayBufferLike>): ReadAt {
  const next = seededRandom(seed);
  return async (buffer, offset, length, position) => {
    written.add(buffer.buffer);
    await new Promise((resolve) => setImmediate(resolve));
    const count = Math.min(length, file.byteLength - position, 1 + Math.floor(next() * (next() < 0.5 ? length : 5000)));
    buffer.set(file.subarray(position, position + count), offset);
    return Math.max(count, 0);
  };
}

const endedAt = (at: number): Error => new Error(`ended at ${at}`);

test("every byte lands at its place, whatever the reads return, and the target is never read into", async () => {
  const file = randomBytes(3 * STAGE_BYTES + 12_345);
  for (const [seed, position, length] of [
    [1, 0, file.byteLength],
    [2, 777, 2 * STAGE_BYTES],
    [3, STAGE_BYTES - 1, STAGE_BYTES + 2],
    [4, 5, 100],
  ] as const) {
    const target = Buffer.alloc(length + 16, 0xee);
    const written = new Set<ArrayBufferLike>();
    await readThroughStages(shortReads(file, seed, written), target, position, length, endedAt);
    assert.ok(target.subarray(0, length).equals(file.subarray(position, position + length)), `seed ${seed}: bytes differ`);
    assert.ok(target.subarray(length).every((byte) => byte === 0xee), `seed ${seed}: written past the length`);
    assert.ok(!written.has(target.buffer), `seed ${seed}: a read went straight into the target`);
    assert.ok(written.size <= 3, `seed ${seed}: ${written.size} stages for one read`);
  }
});

test("a file that ends early is an error naming where it ended", async () => {
  const file = randomBytes(2 * STAGE_BYTES);
  // The last 1000 bytes are missing: reads there return 0.
  const readAt: ReadAt = async (buffer, offset, length, position) => {
    const count = Math.max(0, Math.min(length, file.byteLength - 1000 - position));
    buffer.set(file.subarray(position, position + count), offset);
    return count;
  };
  await assert.rejects(readThroughStages(readAt, new Uint8Array(file.byteLength), 0, file.byteLength, endedAt), { message: `ended at ${file.byteLength - 1000}` });
});

test("a failed read is reported after the reads under way have ended, and their stages kept", async () => {
  let running = 0;
  const readAt: ReadAt = async (_buffer, _offset, length, position) => {
    if (position === 0) throw Object.assign(new Error("EIO: i/o error, read"), { code: "EIO" });
    running++;
    await new Promise((resolve) => setTimeout(resolve, 20));
    running--;
    return length;
  };
  const error = await readThroughStages(readAt, new Uint8Array(3 * STAGE_BYTES), 0, 3 * STAGE_BYTES, endedAt).catch((e: unknown) => e);
  assert.equal((error as NodeJS.ErrnoException).code, "EIO");
  assert.equal(running, 0, "a read was still under way when the error came");
  assert.ok(keptStages().length > 0);
});

test("a local file's large reads into existing memory go through the kept stages, small ones straight in", async () => {
  const dir = await tempDir();
  const path = join(dir, "bytes.bin");
  const bytes = randomBytes(2 * STAGE_BYTES + 4097);
  await writeFile(path, bytes);
  const reader = await new LocalFileSystem().openReader(path);
  try {
    const target = Buffer.alloc(bytes.byteLength - 3);
    const read = await reader.readIntoExisting!(3, bytes.byteLength - 3, target);
    assert.ok(Buffer.from(read.buffer, read.byteOffset, read.byteLength).equals(bytes.subarray(3)));
    assert.equal(read.buffer, target.buffer, "not read into the target");
    // The last piece (4094 bytes from 2 stages + 3 on) went through a stage that is kept now.
    const lastPiece = bytes.subarray(2 * STAGE_BYTES + 3);
    assert.ok(keptStages().some((stage) => stage.byteLength === STAGE_BYTES && stage.subarray(0, lastPiece.byteLength).equals(lastPiece)), "the read did not go through the kept stages");
    // The same stages serve the next read (no fresh memory per read): kept stages of the first
    // read now hold what the second read brought.
    const firstReadStages = new Set(keptStages());
    await reader.readIntoExisting!(0, STAGE_BYTES + 1, Buffer.alloc(STAGE_BYTES + 1));
    assert.ok(keptStages().every((stage) => firstReadStages.has(stage)), "a stage was allocated anew");
    assert.ok(keptStages().some((stage) => stage.equals(bytes.subarray(0, STAGE_BYTES))), "the second read did not use the kept stages");
    // Below one stage, read straight in.
    const small = Buffer.alloc(100);
    await reader.readIntoExisting!(10, 100, small);
    assert.ok(small.equals(bytes.subarray(10, 110)));
    await assert.rejects(reader.readIntoExisting!(bytes.byteLength - STAGE_BYTES, STAGE_BYTES + 1, Buffer.alloc(STAGE_BYTES + 1)), RangeError);
    await assert.rejects(reader.readIntoExisting!(0, STAGE_BYTES, Buffer.alloc(STAGE_BYTES - 1)), RangeError);
    // Cut short after it was opened: named as a file that changed.
    await truncate(path, STAGE_BYTES + 10);
    await assert.rejects(reader.readIntoExisting!(0, 2 * STAGE_BYTES, Buffer.alloc(2 * STAGE_BYTES)), /bytes\.bin ended at \d+ bytes while \d+ were expected: it changed while being read/);
  } finally {
    await reader.close();
  }
});

/** Zeroes the kept stages, so what a later read leaves in them shows it went through them. */
function clearStages(): void {
  for (const stage of keptStages()) stage.fill(0);
}

/** A stage holds `tail` at its start: the last piece of a staged read. */
function stagedLast(tail: Uint8Array): boolean {
  return keptStages().some((stage) => stage.subarray(0, tail.byteLength).equals(tail));
}

/** 3 stages and 20 bytes of float32: the last piece of a staged read of it is 20 bytes. */
const values = (seed: number): Float32Array => Float32Array.from({ length: (3 * STAGE_BYTES) / 4 + 5 }, (_, i) => (i * 7 + seed) % 1013);
const bytesOf = (array: Float32Array): Buffer => Buffer.from(array.buffer, array.byteOffset, array.byteLength);
const liveState = (): { a: Tensor; b: Tensor } => ({ a: Tensor.from(new Float32Array(values(0).length).fill(-1)), b: Tensor.from(new Float32Array(values(0).length).fill(-1)) });

test("a load into existing tensors fills them through the stages, checked, and a damaged byte is still caught", async () => {
  const dir = await tempDir();
  const path = join(dir, "model.pt");
  await new TorchTensorDumper().dump({ a: Tensor.from(values(1)), b: Tensor.from(values(2)) }, path);
  const live = liveState();
  clearStages();
  const loaded = (await new TorchTensorLoader().load(path, { into: live })) as Record<string, Tensor>;
  assert.equal(loaded.a, live.a);
  assert.deepEqual(live.a.data, values(1));
  assert.deepEqual(live.b.data, values(2));
  assert.ok(stagedLast(bytesOf(values(2)).subarray(3 * STAGE_BYTES)), "b was not read through the stages");
  // One flipped byte in b's data: the CRC check of what the stages copied in names it.
  const handle = await open(path, "r+");
  const { size } = await handle.stat();
  const at = size - 4096; // inside b, before the zip directory
  const byte = Buffer.alloc(1);
  await handle.read(byte, 0, 1, at);
  await handle.write(Buffer.from([byte[0]! ^ 0x10]), 0, 1, at);
  await handle.close();
  await assert.rejects(new TorchTensorLoader().load(path, { into: live }), /fails its CRC-32 check/);
});

test("a safetensors load into existing tensors fills them through the stages, its digest checked", async () => {
  const dir = await tempDir();
  const path = join(dir, "model.safetensors");
  const digest = await new SafetensorsDumper().dump({ a: Tensor.from(values(3)), b: Tensor.from(values(4)) }, path);
  const live = liveState();
  clearStages();
  const loaded = (await new SafetensorsLoader().load(path, { into: live, expectedDigest: digest })) as Record<string, Tensor>;
  assert.equal(loaded.b, live.b);
  assert.deepEqual(live.a.data, values(3));
  assert.deepEqual(live.b.data, values(4));
  assert.ok(stagedLast(bytesOf(values(4)).subarray(3 * STAGE_BYTES)), "b was not read through the stages");
  // The digest covers the bytes read through the stages: another digest is refused.
  await assert.rejects(new SafetensorsLoader().load(path, { into: liveState(), expectedDigest: { ...digest, crc32: (digest.crc32 + 1) >>> 0 } }), TensorLoadError);
});

test("a legacy file (torch.save before 1.6) loaded into existing tensors goes through the stages", async (t) => {
  const python = requireTorch(t);
  if (python === null) return;
  const path = join(await tempDir(), "legacy.pt");
  const numel = (3 * STAGE_BYTES) / 4 + 5;
  runPython(python, `
import sys, torch
torch.save({"w": torch.arange(${numel}, dtype=torch.float32)}, sys.argv[1], _use_new_zipfile_serialization=False)
`, [path]);
  const live = { w: Tensor.from(new Float32Array(numel).fill(-1)) };
  clearStages();
  const loaded = (await new TorchTensorLoader().load(path, { into: live })) as Record<string, Tensor>;
  assert.equal(loaded.w, live.w);
  const expected = Float32Array.from({ length: numel }, (_, i) => i);
  assert.deepEqual(live.w.data, expected);
  assert.ok(stagedLast(bytesOf(expected).subarray(3 * STAGE_BYTES)), "w was not read through the stages");
});
