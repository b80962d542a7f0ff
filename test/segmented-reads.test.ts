// A file of small tensors is read into segments of up to 1 MiB (io/whole-file.ts), not into one
// buffer the size of the file: memory of that size is reused warm from one load to the next.
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { crc32 as zlibCrc32 } from "node:zlib";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { MemoryReader } from "../src/formats/byte-io.js";
import { SEGMENT_BYTES, SegmentedReader, segmentStarts } from "../src/formats/segmented-reader.js";
import { ZipReader } from "../src/formats/zip/zip-reader.js";
import { readFileInSegments, segmentsFitInBuffers } from "../src/io/whole-file.js";
import { SafetensorsDumper, SafetensorsLoader, Tensor, TensorLoadError, TorchTensorDumper, TorchTensorLoader, type StateDict } from "../src/index.js";

let dir: string;
before(async () => {
  dir = await mkdtemp(join(tmpdir(), "ckpt-segments-"));
});
after(async () => {
  await rm(dir, { recursive: true, force: true });
});

/** A seeded generator (mulberry32), so a failing case can be run again. */
function random(seed: number): () => number {
  return () => {
    seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 2 ** 32;
  };
}

/** The segments `starts` describes, as [start, end) pairs. */
function ranges(starts: Float64Array): [number, number][] {
  return Array.from({ length: starts.length - 1 }, (_, i) => [starts[i]!, starts[i + 1]!]);
}

describe("segmentStarts: where a file of parts is split", () => {
  it("groups whole parts up to the limit, and gives a larger part a segment of its own", () => {
    assert.deepEqual([...segmentStarts([0, 10, 5000, 5010], 5020, 100)], [0, 10, 5000, 5020]);
    assert.deepEqual([...segmentStarts([0, 40, 80, 120, 160], 200, 100)], [0, 80, 160, 200]);
    // Exactly the limit still fits in one segment.
    assert.deepEqual([...segmentStarts([0, 50, 100], 200, 100)], [0, 100, 200]);
  });

  it("covers the file with segments that start at cuts and each hold at most the limit or one part", () => {
    const next = random(14);
    for (let round = 0; round < 200; round++) {
      const max = 1 + Math.floor(next() * 500);
      const cuts = [0];
      for (let n = Math.floor(next() * 60); n > 0; n--) cuts.push(cuts[cuts.length - 1]! + 1 + Math.floor(next() * (next() < 0.1 ? 3000 : 200)));
      const size = cuts[cuts.length - 1]! + 1 + Math.floor(next() * 300);
      const starts = segmentStarts(cuts, size, max);
      assert.equal(starts[0], 0);
      assert.equal(starts[starts.length - 1], size);
      const cutSet = new Set([...cuts, size]);
      for (const [start, end] of ranges(starts)) {
        assert.ok(end > start, "no empty segment");
        assert.ok(cutSet.has(start) && cutSet.has(end), `segment [${start}, ${end}) starts and ends at cuts`);
        const inside = cuts.filter((c) => c > start && c < end);
        assert.ok(end - start <= max || inside.length === 0, `segment [${start}, ${end}) is over ${max} bytes with ${inside.length} cuts inside`);
      }
      // Grouped as far as allowed: a segment and the first part of the next would pass the limit.
      for (let i = 0; i + 2 < starts.length; i++) {
        const nextPartEnd = [...cuts, size].find((c) => c > starts[i + 1]!)!;
        assert.ok(nextPartEnd - starts[i]! > max, `segments at ${starts[i]} and ${starts[i + 1]} could be one`);
      }
    }
  });

  it("ignores cuts out of order, repeated or outside the file; an empty file has no segment", () => {
    assert.deepEqual([...segmentStarts([0, 60, 30, 60, 250, -5], 200, 50)], [0, 60, 200]);
    assert.deepEqual([...segmentStarts([], 0, 50)], [0]);
    assert.deepEqual([...segmentStarts([], 70, 50)], [0, 70]);
  });
});

it("a file of any size is read in segments, unless one part is larger than a Node.js buffer", () => {
  // 8 GiB of 16 MiB parts: past 2^31 and 2^32 bytes, each part a segment that fits.
  const part = 2 ** 24;
  const cuts = Array.from({ length: 512 }, (_, i) => i * part);
  assert.ok(segmentsFitInBuffers(segmentStarts(cuts, 512 * part)));
  assert.ok(segmentsFitInBuffers(segmentStarts([], 0)));
  // With a largest buffer of 1000 bytes: a segment's memory is its bytes and the padding that puts
  // them at their file offset modulo 64, so a part of 1000 bytes fits at offset 128, not at 100.
  assert.ok(segmentsFitInBuffers(segmentStarts([0, 128], 1128, 64), 1000));
  assert.ok(!segmentsFitInBuffers(segmentStarts([0, 128], 1129, 64), 1000));
  assert.ok(segmentsFitInBuffers(segmentStarts([0, 100], 1064, 64), 1000)); // 36 of padding + 964
  assert.ok(!segmentsFitInBuffers(segmentStarts([0, 100], 1065, 64), 1000));
});

describe("SegmentedReader", () => {
  const file = randomBytes(1000);
  const starts = new Float64Array([0, 100, 101, 600, 1000]);
  const reader = (): SegmentedReader => new SegmentedReader(ranges(starts).map(([s, e]) => file.subarray(s, e)), starts);

  it("gives ranges inside one segment as views of it, and nothing for ranges across segments", () => {
    const segmented = reader();
    for (const [position, length] of [[0, 100], [100, 1], [101, 499], [650, 10], [999, 1], [1000, 0], [300, 0]] as const) {
      const view = segmented.view(position, length);
      assert.ok(view !== undefined, `${length} at ${position}`);
      assert.deepEqual(Buffer.from(view), file.subarray(position, position + length));
    }
    assert.equal(segmented.view(99, 2), undefined);
    assert.equal(segmented.view(0, 1000), undefined);
  });

  it("reads any range, across segments by copying, into a target when given", async () => {
    const segmented = reader();
    const next = random(15);
    for (let round = 0; round < 300; round++) {
      const position = Math.floor(next() * 1000);
      const length = Math.floor(next() * (1001 - position));
      assert.deepEqual(Buffer.from(await segmented.read(position, length)), file.subarray(position, position + length));
      const target = new Uint8Array(length + 7);
      const read = await segmented.read(position, length, target);
      assert.equal(read.buffer, target.buffer);
      assert.deepEqual(Buffer.from(read), file.subarray(position, position + length));
    }
  });

  it("refuses ranges outside the file and segments that do not match their starts", async () => {
    const segmented = reader();
    assert.throws(() => segmented.view(995, 6), RangeError);
    await assert.rejects(segmented.read(-1, 2), RangeError);
    await assert.rejects(segmented.read(10, 5, new Uint8Array(4)), RangeError);
    assert.throws(() => new SegmentedReader([file.subarray(0, 10)], new Float64Array([0, 11])), RangeError);
    assert.throws(() => new SegmentedReader([file.subarray(0, 10)], new Float64Array([0])), RangeError);
  });

  it("is what readFileInSegments gives, with the CRC-32 of the whole file", async () => {
    const { reader: segmented, crc32 } = await readFileInSegments(new MemoryReader(file), starts, { crc: true });
    assert.deepEqual(Buffer.from(await segmented.read(0, 1000)), file);
    assert.equal(crc32, (await import("node:zlib")).crc32(file));
    await assert.rejects(readFileInSegments(new MemoryReader(file), new Float64Array([0, 999])), RangeError);
  });

  it("reads a file larger than what is kept in flight, a segment larger than one read in pieces", async () => {
    const big = randomBytes(100 << 20);
    const cuts = [0, 5, 1 << 20, 25 << 20, (25 << 20) + 3, 90 << 20, big.byteLength];
    const { reader: segmented, crc32 } = await readFileInSegments(new MemoryReader(big), new Float64Array(cuts), { crc: true });
    assert.equal(crc32, (await import("node:zlib")).crc32(big));
    assert.ok(Buffer.from((await segmented.read(0, big.byteLength))).equals(big));
    assert.equal(segmented.segments[2]!.byteLength, 24 << 20);
  });

  it("refuses a reader that returns fewer bytes than asked, instead of leaving memory unread", async () => {
    const short = Object.assign(new MemoryReader(file), {
      read: async (position: number, length: number, target?: Uint8Array) => (await new MemoryReader(file).read(position, length, target)).subarray(0, Math.max(0, length - 1)),
    });
    await assert.rejects(readFileInSegments(short, starts), /returned 99 bytes/);
  });
});

describe("a zip read from segments cut anywhere", () => {
  it("gives each entry's bytes: a view when header and data lie in one segment, else a copy", async () => {
    const path = join(dir, "cut.pt");
    const small: StateDict = {};
    for (let i = 0; i < 50; i++) small[`t${i}`] = Tensor.from(new Int32Array(100 + i).fill(i));
    await new TorchTensorDumper().dump(small, path);
    const bytes = await readFile(path);
    const zip = await ZipReader.open(new MemoryReader(bytes));
    for (const step of [7, 31, 333, 1000]) {
      const starts = new Float64Array([...Array.from({ length: Math.ceil(bytes.byteLength / step) }, (_, i) => i * step), bytes.byteLength]);
      const segmented = zip.withReader(new SegmentedReader(ranges(starts).map(([s, e]) => bytes.subarray(s, e)), starts));
      let views = 0;
      for (const [name, entry] of zip.entries) {
        const expected = Buffer.from(await zip.read(name));
        const view = segmented.viewInMemory(entry);
        if (view !== undefined) {
          views++;
          assert.deepEqual(Buffer.from(view), expected, `${name} as a view, segments of ${step}`);
        }
        assert.deepEqual(Buffer.from(await segmented.readEntry(entry)), expected, `${name} read, segments of ${step}`);
      }
      if (step === 1000) assert.ok(views > 0, "some entries are views");
    }
    const loaded = (await new TorchTensorLoader().load(path)) as Record<string, Tensor>;
    assert.deepEqual([...(loaded.t49!.data as Int32Array)], new Array(149).fill(49));
  });
});

describe("loading a file of small tensors in segments", () => {
  const SMALL = 3000;
  function state(): StateDict {
    const small: StateDict = {};
    for (let i = 0; i < SMALL; i++) small[`t${i}`] = Tensor.from(new Float32Array(256).fill(i));
    return { small, big: Tensor.from(new Float32Array(3 << 18).fill(-1)) };
  }

  it("loads every value, small tensors in shared segments of at most 1 MiB, a larger one in its own", async () => {
    const path = join(dir, "small.pt");
    await new TorchTensorDumper().dump(state(), path);
    const size = (await readFile(path)).byteLength;
    assert.ok(size > 5 * SEGMENT_BYTES);
    const loaded = (await new TorchTensorLoader().load(path)) as { small: Record<string, Tensor>; big: Tensor };
    const buffers = new Set<ArrayBufferLike>();
    for (let i = 0; i < SMALL; i++) {
      const data = loaded.small[`t${i}`]!.data as Float32Array;
      assert.equal(data.length, 256);
      assert.ok(data[0] === i && data[255] === i, `t${i}'s values`);
      assert.ok(data.buffer.byteLength <= SEGMENT_BYTES, `t${i} is in a buffer of ${data.buffer.byteLength} bytes`);
      buffers.add(data.buffer);
    }
    // 3000 KiB of small tensors: a few segments, each shared by many tensors.
    assert.ok(buffers.size >= 3 && buffers.size <= 5, `${buffers.size} segments`);
    const big = loaded.big.data as Float32Array;
    assert.ok(big.every((x) => x === -1));
    assert.ok(big.buffer.byteLength >= big.byteLength && big.buffer.byteLength < size, "the large tensor has a segment of its own");
    assert.ok(!buffers.has(big.buffer));
  });

  it("keeps each storage's data aligned as in the file, so a tensor's typed array is a view, not a copy", async () => {
    // Odd-sized storages put the next entry's header, where a segment may start, at an odd offset.
    const mixed: StateDict = { a: Tensor.from(new Uint8Array([1, 2, 3])), big: Tensor.from(new Float32Array(300_000).fill(2)), c: Tensor.from(new Uint16Array(3).fill(7), { dtype: "float16" }) };
    for (let i = 0; i < 400; i++) mixed[`s${i}`] = i % 2 === 0 ? Tensor.from(new Float64Array(3 + i).fill(i)) : Tensor.from(new Uint8Array(5 + i).fill(i & 0xff));
    const path = join(dir, "mixed.pt");
    await new TorchTensorDumper().dump(mixed, path);
    const loaded = (await new TorchTensorLoader().load(path)) as Record<string, Tensor>;
    const buffers = new Set<ArrayBufferLike>();
    for (const [name, tensor] of Object.entries(loaded)) {
      const data = tensor.data;
      assert.equal(data.buffer, tensor.storage.bytes.buffer, `${name} is a view of its storage`);
      assert.equal(data.byteOffset % 64, 0, `${name} starts 64-byte aligned`);
      data[0] = 9;
      assert.equal(tensor.data[0], 9, `a write to ${name}'s data reaches the tensor`);
      buffers.add(data.buffer);
    }
    assert.ok(buffers.size >= 3, `${buffers.size} segments`);
  });

  it("still names the entry whose bytes are damaged", async () => {
    const path = join(dir, "damaged.pt");
    await new TorchTensorDumper().dump(state(), path);
    const bytes = await readFile(path);
    const zip = await ZipReader.open(new MemoryReader(bytes));
    const entry = zip.find(`${[...zip.entries.keys()][0]!.split("/")[0]}/data/1234`)!;
    const at = (await zip.dataOffset(entry)) + 100;
    bytes[at] = bytes[at]! ^ 0x10;
    await writeFile(path, bytes);
    await assert.rejects(new TorchTensorLoader().load(path), (error: unknown) => {
      assert.ok(error instanceof TensorLoadError, String(error));
      assert.match(String((error as Error).message) + String((error as Error).cause), /data\/1234" fails its CRC-32 check/);
      return true;
    });
  });
});

describe("loading a safetensors file of small tensors in segments", () => {
  it("loads every value, the tensors views of segments of at most 1 MiB, aligned as in the file", async () => {
    const flat: StateDict = { odd: Tensor.from(new Uint8Array([1, 2, 3])) };
    for (let i = 0; i < 3000; i++) flat[`t${i}`] = Tensor.from(new Float32Array(256).fill(i));
    flat.empty = Tensor.from(new Float32Array(0));
    flat.big = Tensor.from(new Float64Array(300_000).fill(0.5));
    flat.last = Tensor.from(new Int16Array(0));
    const path = join(dir, "small.safetensors");
    await new SafetensorsDumper().dump(flat, path);
    const loaded = (await new SafetensorsLoader().load(path)) as Record<string, Tensor>;
    const buffers = new Set<ArrayBufferLike>();
    for (let i = 0; i < 3000; i++) {
      const tensor = loaded[`t${i}`]!;
      const data = tensor.data as Float32Array;
      assert.ok(data.length === 256 && data[0] === i && data[255] === i, `t${i}'s values`);
      assert.equal(data.buffer, tensor.storage.bytes.buffer, `t${i} is a view`);
      assert.ok(data.buffer.byteLength <= SEGMENT_BYTES + 64, `t${i} is in a buffer of ${data.buffer.byteLength} bytes`);
      buffers.add(data.buffer);
    }
    assert.ok(buffers.size >= 3 && buffers.size <= 5, `${buffers.size} segments`);
    const big = loaded.big!.data as Float64Array;
    assert.ok(big.buffer === loaded.big!.storage.bytes.buffer && big.every((x) => x === 0.5));
    assert.ok(loaded.empty!.numel === 0 && loaded.last!.numel === 0 && loaded.last!.dtype === "int16");
  });

  it("with a digest, names the damage by the digest first, even where the header no longer parses", async () => {
    const path = join(dir, "damaged.safetensors");
    const digest = await new SafetensorsDumper().dump({ w: Tensor.from(new Float32Array(1000).fill(1)) }, path);
    const bytes = await readFile(path);
    bytes[8] = 0x20; // the header's "{"
    await writeFile(path, bytes);
    await assert.rejects(new SafetensorsLoader().load(path), /SAFETENSORS_JSON|does not start with/);
    const namesTheDigest = (error: unknown): boolean => {
      assert.match(String((error as Error).message) + String((error as Error).cause), /its CRC-32 is [0-9a-f]{8}, it should be/);
      return true;
    };
    await assert.rejects(new SafetensorsLoader().load(path, { expectedDigest: digest }), namesTheDigest);
    // In place too, where the file is read in order rather than in segments.
    await assert.rejects(new SafetensorsLoader().load(path, { expectedDigest: digest, into: { w: Tensor.from(new Float32Array(1000)) } }), namesTheDigest);
    // The digest given is the damaged file's own: the header's error itself.
    const damaged = { ...digest, crc32: zlibCrc32(bytes) };
    await assert.rejects(new SafetensorsLoader().load(path, { expectedDigest: damaged }), /SAFETENSORS_JSON|does not start with/);
    await assert.rejects(new SafetensorsLoader().load(path, { expectedDigest: damaged, into: { w: Tensor.from(new Float32Array(1000)) } }), /SAFETENSORS_JSON|does not start with/);
  });
});
