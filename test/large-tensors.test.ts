/**
 * Tensors over 2 GiB (issue 9): Node's fs reads and writes take at most 2^31 − 1 bytes per call
 * (a larger read aborted the process, a larger write threw), and zlib's crc32 takes a 32-bit
 * length. One tensor just over 2^31 bytes goes through every path: the manager, torch.load,
 * torch.save, safetensors. It is held once per test and compared by CRC and samples; files are
 * removed as soon as a test is done with them. Storages beyond the largest Node buffer are built as
 * sparse files (no disk, no memory) and must be refused by name.
 */
import assert from "node:assert/strict";
import { open, readFile, rm, stat, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { crc32 as zlibCrc32 } from "node:zlib";

import { MAX_BUFFER_BYTES, type ByteSink } from "../src/formats/byte-io.js";
import { crc32 } from "../src/formats/crc32.js";
import { Op } from "../src/formats/pickle/opcodes.js";
import { crc32Combine } from "../src/formats/zip/crc32-combine.js";
import { ZipReader } from "../src/formats/zip/zip-reader.js";
import { ZipWriter } from "../src/formats/zip/zip-writer.js";
import { FileCheckpointManager, LocalFileSystem, SafetensorsDumper, SafetensorsLoader, Tensor, TorchTensorLoader, type StateDict } from "../src/index.js";
import { useTempDirs } from "./helpers/checkpoint-helpers.js";
import { requireTorch, runPython } from "./helpers/torch-python.js";

const tempDir = useTempDirs("large");

/** Just over 2 GiB: past the 2^31 − 1 bytes one fs call takes, under the 4 GiB a Node 20 buffer holds. */
const BIG_BYTES = 2 ** 31 + 2 ** 16;
/** The content repeats with this prime period: a piece put at a wrong offset (pieces are powers of two) changes it. */
const PERIOD = 1_000_003;
/** Where the content is checked byte by byte, besides the CRC: around every power-of-two piece boundary. */
const SAMPLES = [0, 1, PERIOD - 1, PERIOD, 2 ** 30 - 1, 2 ** 30, 2 ** 31 - 1, 2 ** 31, 2 ** 31 + 1, BIG_BYTES - 1];

function patternByte(index: number): number {
  return Math.imul(index % PERIOD, 2654435761) >>> 24;
}

/** `length` bytes of the pattern, written once and then doubled by copies (fast, one buffer). */
function patterned(length: number): Buffer {
  const bytes = Buffer.allocUnsafeSlow(length);
  for (let i = 0; i < Math.min(PERIOD, length); i++) bytes[i] = patternByte(i);
  for (let filled = PERIOD; filled < length; filled *= 2) bytes.copyWithin(filled, 0, Math.min(filled, length - filled));
  return bytes;
}

/** The pattern in Python (numpy), for torch.save: the same bytes as `patterned`. */
const PYTHON_PATTERN = `
import numpy as np
def patterned(n, period):
    i = np.arange(period, dtype=np.uint64)
    pattern = (((i * np.uint64(2654435761)) & np.uint64(0xFFFFFFFF)) >> np.uint64(24)).astype(np.uint8)
    return np.resize(pattern, n)
`;

/** CRC-32 by zlib in 256 MiB pieces, independent of the code under test. */
function referenceCrc(bytes: Uint8Array): number {
  let crc = 0;
  for (let offset = 0; offset < bytes.byteLength; offset += 2 ** 28) crc = zlibCrc32(bytes.subarray(offset, offset + 2 ** 28), crc);
  return crc;
}

/** CRC-32 of a file read with plain fs calls in 256 MiB pieces, independent of the code under test. */
async function referenceFileCrc(path: string): Promise<number> {
  const handle = await open(path, "r");
  try {
    const buffer = Buffer.allocUnsafeSlow(2 ** 28);
    let crc = 0;
    for (let position = 0; ; ) {
      const { bytesRead } = await handle.read(buffer, 0, buffer.length, position);
      if (bytesRead === 0) return crc;
      crc = zlibCrc32(buffer.subarray(0, bytesRead), crc);
      position += bytesRead;
    }
  } finally {
    await handle.close();
  }
}

/** The loaded tensor holds exactly the pattern: dtype, shape, CRC and the samples. */
function assertPatterned(value: unknown, expectedCrc: number): void {
  assert.ok(value instanceof Tensor, "a tensor");
  assert.equal(value.dtype, "uint8");
  assert.deepEqual(value.shape, [BIG_BYTES]);
  const bytes = value.storage.bytes;
  assert.equal(bytes.byteLength, BIG_BYTES);
  for (const at of SAMPLES) assert.equal(bytes[at], patternByte(at), `byte ${at}`);
  assert.equal(referenceCrc(bytes), expectedCrc, "the CRC-32 of the tensor's bytes");
}

describe("a tensor over 2 GiB", () => {
  let source: Buffer;
  let sourceCrc: number;
  before(() => {
    source = patterned(BIG_BYTES);
    sourceCrc = referenceCrc(source);
  });
  after(() => {
    source = Buffer.alloc(0); // let go of 2 GiB before the next describe
  });

  test("saved by the manager loads back, in place too, and its model.pt opens in torch.load", async (t) => {
    const python = requireTorch(t);
    if (python === null) return;
    const dir = await tempDir();
    try {
      const manager = new FileCheckpointManager({ checkpointDir: dir });
      const embed = Tensor.from(source, { dtype: "uint8" });
      await manager.beginCheckpoint(1);
      await manager.saveState({ model: { embed }, step_nr: 1 }, { modelKey: "model" });
      await manager.commitCheckpoint();

      // Our own checks of what was written: the entry's size and CRC, and the file CRC in the manifest.
      const modelPath = join(dir, "step_1", "model.pt");
      const reader = await new LocalFileSystem().openReader(modelPath);
      try {
        const zip = await ZipReader.open(reader);
        const entry = zip.entry("archive/data/0");
        assert.equal(entry.size, BIG_BYTES);
        assert.equal(entry.crc >>> 0, sourceCrc >>> 0, "the zip entry's CRC-32");
      } finally {
        await reader.close();
      }
      const manifest = JSON.parse(await readFile(join(dir, "step_1", "manifest.json"), "utf8")) as { files: Record<string, { size: number; crc32: string }> };
      assert.equal(manifest.files["model.pt"]!.size, (await stat(modelPath)).size);
      assert.equal(Number.parseInt(manifest.files["model.pt"]!.crc32, 16), (await referenceFileCrc(modelPath)) >>> 0, "the manifest's CRC-32 of model.pt");

      const seen = JSON.parse(
        runPython(
          python,
          `import json, sys, zlib, torch
state = torch.load(sys.argv[1])
t = state["model"]["embed"]
a = t.numpy()
print(json.dumps({"key": state["model_key"], "dtype": str(t.dtype), "shape": list(t.shape), "crc": zlib.crc32(a), "samples": [int(a[i]) for i in json.loads(sys.argv[2])]}))`,
          [modelPath, JSON.stringify(SAMPLES)],
        ),
      ) as { key: string; dtype: string; shape: number[]; crc: number; samples: number[] };
      assert.deepEqual(seen, { key: "model", dtype: "torch.uint8", shape: [BIG_BYTES], crc: sourceCrc >>> 0, samples: SAMPLES.map(patternByte) });

      const loaded = await manager.loadCheckpoint(1);
      assertPatterned((loaded.model as StateDict).embed, sourceCrc);
      assert.equal(loaded.step_nr, 1);

      // In place: the file's bytes are read straight into the live tensor (zeroed first).
      source.fill(0);
      const inPlace = await manager.loadCheckpoint(1, { into: { model: { embed } } });
      assert.equal((inPlace.model as StateDict).embed, embed, "the live tensor is returned");
      assertPatterned(embed, sourceCrc);
      await manager.close();
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  test("saved as safetensors loads back into a tensor, its digest checked", async () => {
    const dir = await tempDir();
    const path = join(dir, "big.safetensors");
    try {
      const embed = Tensor.from(source, { dtype: "uint8" });
      const digest = await new SafetensorsDumper().dump({ embed }, path);
      assert.equal(digest.size, (await stat(path)).size);
      assert.equal(digest.crc32 >>> 0, (await referenceFileCrc(path)) >>> 0, "the digest's CRC-32");
      // Into the (zeroed) tensor it was saved from: no second 2 GiB of fresh memory, which is slow to touch.
      source.fill(0);
      const loaded = (await new SafetensorsLoader().load(path, { expectedDigest: digest, into: { embed } })) as StateDict;
      assert.equal(loaded.embed, embed, "the live tensor is returned");
      assertPatterned(embed, sourceCrc);
    } finally {
      await rm(path, { force: true });
    }
  });
});

test("a tensor over 2 GiB written by torch.save loads, and a flipped byte past 2 GiB is caught", async (t) => {
  const python = requireTorch(t);
  if (python === null) return;
  const dir = await tempDir();
  const path = join(dir, "from-torch.pt");
  try {
    const torchCrc = Number(
      runPython(python, `${PYTHON_PATTERN}
import sys, zlib, torch
a = patterned(int(sys.argv[2]), int(sys.argv[3]))
torch.save({"embed": torch.from_numpy(a)}, sys.argv[1])
print(zlib.crc32(a))`, [path, String(BIG_BYTES), String(PERIOD)]),
    );
    const loader = new TorchTensorLoader();
    const embed = ((await loader.load(path)) as StateDict).embed as Tensor;
    assertPatterned(embed, torchCrc);

    // PyTorch does not check CRCs; we do, also for bytes beyond the first 2 GiB of an entry.
    const reader = await new LocalFileSystem().openReader(path);
    const zip = await ZipReader.open(reader);
    const root = [...zip.entries.keys()].find((name) => name.endsWith("/data/0"))!;
    const dataStart = await zip.dataOffset(zip.entry(root));
    await reader.close();
    const handle = await open(path, "r+");
    const at = dataStart + 2 ** 31 + 5;
    await handle.write(Uint8Array.of(patternByte(2 ** 31 + 5) ^ 0xff), 0, 1, at);
    await handle.close();
    // Read into the tensor loaded above, to spare 2 GiB of fresh memory.
    await assert.rejects(loader.load(path, { into: { embed } }), /from-torch\.pt: not a valid PyTorch file: entry ".*\/data\/0" fails its CRC-32 check/);
  } finally {
    await rm(path, { force: true });
  }
});

describe("a storage larger than a Node buffer (sparse files: no disk, no memory)", () => {
  /** One byte more than 4 GiB, rounded to 64: too large for one Node 20 buffer. */
  const HUGE = MAX_BUFFER_BYTES + 64;

  test("a .pt file with one is refused by name, before anything is read", async () => {
    const dir = await tempDir();
    const path = join(dir, "huge.pt");
    try {
      await writeSparseTorchFile(path, HUGE);
      assert.ok((await stat(path)).size > HUGE);
      await assert.rejects(new TorchTensorLoader().load(path), {
        name: "TensorLoadError",
        message: new RegExp(`huge\\.pt: not a valid PyTorch file: storage "0" has ${HUGE} bytes, more than the ${MAX_BUFFER_BYTES} one Node\\.js buffer can hold`),
      });
    } finally {
      await rm(path, { force: true });
    }
  });

  test("a safetensors file with one is refused by name", async () => {
    const dir = await tempDir();
    const path = join(dir, "huge.safetensors");
    try {
      const json = new TextEncoder().encode(`{"embed":{"dtype":"U8","shape":[${HUGE}],"data_offsets":[0,${HUGE}]}}`);
      const headerLength = Math.ceil(json.length / 8) * 8;
      const head = new Uint8Array(8 + headerLength).fill(0x20);
      new DataView(head.buffer).setBigUint64(0, BigInt(headerLength), true);
      head.set(json, 8);
      await writeFile(path, head);
      const handle = await open(path, "r+");
      await handle.truncate(head.length + HUGE); // a hole: the tensor's bytes take no disk
      await handle.close();
      await assert.rejects(new SafetensorsLoader().load(path), {
        name: "TensorLoadError",
        message: new RegExp(`huge\\.safetensors: not a valid safetensors file: tensor "embed" has ${HUGE} bytes, more than the ${MAX_BUFFER_BYTES} one Node\\.js buffer can hold`),
      });
    } finally {
      await rm(path, { force: true });
    }
  });
});

test("the CRC-32 of a 4 GiB buffer covers all of it (zlib's takes a 32-bit length), and combines", () => {
  const bytes = new Uint8Array(MAX_BUFFER_BYTES); // zero pages: reading them costs no memory
  bytes[MAX_BUFFER_BYTES - 1] = 1;
  const expected = referenceCrc(bytes);
  assert.notEqual(expected, 0);
  assert.equal(crc32(bytes), expected);
  const head = zlibCrc32(bytes.subarray(0, 1));
  assert.equal(crc32Combine(head, crc32(bytes.subarray(1)), MAX_BUFFER_BYTES - 1), expected, "combined from its parts");
});

// ---------------------------------------------------------------------------------------------
// A .pt file with one uint8 storage of `numel` zero bytes, whose data is a hole in a sparse file
// ---------------------------------------------------------------------------------------------

const utf8 = (text: string): Uint8Array => new TextEncoder().encode(text);

function u32(value: number): number[] {
  return [value & 0xff, (value >>> 8) & 0xff, (value >>> 16) & 0xff, value >>> 24];
}

function str(text: string): number[] {
  const bytes = utf8(text);
  return [Op.BINUNICODE, ...u32(bytes.length), ...bytes];
}

function global(module: string, name: string): number[] {
  return [Op.GLOBAL, ...utf8(`${module}\n${name}\n`)];
}

/** LONG1 of a non-negative integer below 2^63. */
function long(value: number): number[] {
  const bytes = new Uint8Array(8);
  new DataView(bytes.buffer).setBigUint64(0, BigInt(value), true);
  return [Op.LONG1, 8, ...bytes];
}

/** `{"embed": <uint8 tensor of numel elements>}`, as torch.save pickles it. */
function hugeTensorPickle(numel: number): Uint8Array {
  return Uint8Array.from([
    Op.PROTO, 2, Op.EMPTY_DICT, ...str("embed"),
    ...global("torch._utils", "_rebuild_tensor_v2"), Op.MARK,
    Op.MARK, ...str("storage"), ...global("torch", "ByteStorage"), ...str("0"), ...str("cpu"), ...long(numel), Op.TUPLE, Op.BINPERSID,
    Op.BININT, 0, 0, 0, 0,
    Op.MARK, ...long(numel), Op.TUPLE,
    Op.MARK, Op.BININT, 1, 0, 0, 0, Op.TUPLE,
    Op.NEWFALSE,
    ...global("collections", "OrderedDict"), Op.EMPTY_TUPLE, Op.REDUCE,
    Op.TUPLE, Op.REDUCE, Op.SETITEM, Op.STOP,
  ]);
}

async function writeSparseTorchFile(path: string, numel: number): Promise<void> {
  const hole = new Uint8Array(2 ** 30); // never written to: its pages stay unallocated
  const handle = await open(path, "w");
  let position = 0;
  const sink: ByteSink = {
    write: async (chunk) => {
      if (chunk !== hole) await handle.write(chunk, 0, chunk.byteLength, position);
      position += chunk.byteLength;
    },
  };
  try {
    const zip = new ZipWriter(sink);
    await zip.addEntry("archive/data.pkl", hugeTensorPickle(numel));
    await zip.addEntry("archive/byteorder", utf8("little"));
    const parts: Uint8Array[] = [];
    for (let left = numel; left > 0; left -= Math.min(left, hole.length)) parts.push(left >= hole.length ? hole : new Uint8Array(left));
    await zip.addEntry("archive/data/0", parts);
    await zip.addEntry("archive/version", utf8("3\n"));
    await zip.finish();
  } finally {
    await handle.close();
  }
}
