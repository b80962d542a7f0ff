// A file of small tensors is read into segments of up to 1 MiB (io/whole-file.ts), not into one
// buffer the size of the file: memory of that size is reused warm from one load to the next.
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { MemoryReader } from "../src/formats/byte-io.js";
import { SegmentedReader } from "../src/formats/segmented-reader.js";
import { ZipReader } from "../src/formats/zip/zip-reader.js";
import { SEGMENT_BYTES, readFileInSegments, segmentStarts } from "../src/io/whole-file.js";
import { Tensor, TensorLoadError, TorchTensorDumper, TorchTensorLoader, type StateDict } from "../src/index.js";

let dir: string;
before(async () => {
  dir = await mkdtemp(join(tmpdir(), "ckpt-segments-"));
});
after(async () => {
  await rm(dir, { recursive: true, force: true });
});

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
    for (let round = 0; round < 200; round++) {
      const max = 1 + Math.floor(Math.random() * 500);
      const cuts = [0];
      for (let n = Math.floor(Math.random() * 60); n > 0; n--) cuts.push(cuts[cuts.length - 1]! + 1 + Math.floor(Math.random() * (Math.random() < 0.1 ? 3000 : 200)));
      const size = cuts[cuts.length - 1]! + 1 + Math.floor(Math.random() * 300);
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
    }
  });

  it("ignores cuts out of order, repeated or outside the file; an empty file has no segment", () => {
    assert.deepEqual([...segmentStarts([0, 60, 30, 60, 250, -5], 200, 50)], [0, 60, 200]);
    assert.deepEqual([...segmentStarts([], 0, 50)], [0]);
    assert.deepEqual([...segmentStarts([], 70, 50)], [0, 70]);
  });
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
    for (let round = 0; round < 300; round++) {
      const position = Math.floor(Math.random() * 1000);
      const length = Math.floor(Math.random() * (1001 - position));
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
