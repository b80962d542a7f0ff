// The objects of a save and of a load must end in the shape (V8 map) of their class's kept
// instance (src/keep-shapes.ts): if they do not, the kept instance keeps nothing alive, and V8
// throws away what it optimized for a save or load when its objects die. A number past 2^31 in a
// field (a CRC, an offset, a byte count) is what moves an object to another shape, so each real
// object here gets such values. Compared with V8's own %HaveSameMap.
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { setFlagsFromString } from "node:v8";
import { crc32 } from "../src/formats/crc32.js";
import { MemoryReader, MemorySink } from "../src/formats/byte-io.js";
import { PickleMemo } from "../src/formats/pickle/pickle-memo.js";
import { PickleReader } from "../src/formats/pickle/pickle-reader.js";
import { Pickler } from "../src/formats/pickle/pickler.js";
import { RebuildWriter } from "../src/formats/torch/rebuild-writer.js";
import { TorchStorageType, findTorchGlobal } from "../src/formats/torch/torch-globals.js";
import { ZipReader } from "../src/formats/zip/zip-reader.js";
import { ZipWriter } from "../src/formats/zip/zip-writer.js";
import { DigestingSink } from "../src/io/digesting-sink.js";
import { readFileInSegments } from "../src/io/whole-file.js";
import { segmentStarts } from "../src/formats/segmented-reader.js";
import { keptInstances } from "../src/keep-shapes.js";
import { Storage } from "../src/tensor/storage.js";
import { Tensor } from "../src/tensor/tensor.js";
import { StateWalk } from "../src/values/state-walk.js";

setFlagsFromString("--allow-natives-syntax");
// eslint-disable-next-line @typescript-eslint/no-implied-eval -- the only way to reach a V8 intrinsic
const haveSameMap = new Function("a", "b", "return %HaveSameMap(a, b)") as (a: object, b: object) => boolean;
// eslint-disable-next-line @typescript-eslint/no-implied-eval
const hasHoleyElements = new Function("a", "return %HasHoleyElements(a)") as (a: unknown[]) => boolean;

/** The kept instance of `real`'s class. */
function keptLike(real: object): object {
  const kept = keptInstances().filter((k) => Object.getPrototypeOf(k) === Object.getPrototypeOf(real));
  assert.equal(kept.length, 1, `one kept ${real.constructor.name}`);
  return kept[0]!;
}

function assertKeptShape(real: object): void {
  assert.ok(haveSameMap(real, keptLike(real)), `a real ${real.constructor.name} has the shape of the kept one`);
}

/** `length` bytes whose CRC-32 is past 2^31 (half of all CRCs are). */
function bytesWithHighCrc(length: number): Uint8Array {
  for (let seed = 0; ; seed++) {
    const bytes = new Uint8Array(length).fill(seed & 0xff);
    bytes[0] = seed >> 8;
    if (crc32(bytes) >= 2 ** 31) return bytes;
  }
}

/** A small archive as a save writes one: a pickle, numbered storages, a large entry; CRCs past 2^31. */
async function writeArchive(): Promise<{ writer: ZipWriter; digest: DigestingSink; bytes: Uint8Array }> {
  const sink = new MemorySink();
  const digest = new DigestingSink(sink);
  const writer = new ZipWriter(digest);
  await writer.addEntry("archive/data.pkl", bytesWithHighCrc(100));
  for (let i = 0; i < 3; i++) await writer.addNumbered("archive/data/", i, bytesWithHighCrc(4096 + i));
  await writer.addEntry("archive/data/3", bytesWithHighCrc(3 << 20));
  await writer.finish();
  assert.ok(digest.digest.crc32 >= 0 && writer.digest.size > 3 << 20);
  return { writer, digest, bytes: sink.toBytes() };
}

describe("kept shapes (keep-shapes.ts): real objects of a save and a load end in the kept shape", () => {
  test("the intrinsic tells shapes apart, so the checks below can fail", () => {
    class Point {
      constructor(public x: number) {}
    }
    assert.ok(haveSameMap(new Point(1), new Point(2)));
    assert.ok(!haveSameMap(new Point(1), { x: 1 }));
  });

  test("a save's zip writer and digesting sink", async () => {
    const { writer, digest } = await writeArchive();
    assertKeptShape(writer);
    assertKeptShape(digest);
  });

  test("a load's reader, zip directory and entries", async () => {
    const { bytes } = await writeArchive();
    const memory = new MemoryReader(bytes);
    const zip = await ZipReader.open(memory);
    assertKeptShape(memory);
    assertKeptShape(zip);
    assertKeptShape((zip as unknown as { directory: object }).directory);
    const big = zip.find("archive/data/3")!;
    assert.ok(big.crc >= 2 ** 31);
    assertKeptShape(big);
    assertKeptShape(zip.numberedEntry("archive/data/", 1)!);
    assertKeptShape(zip.find("archive/data.pkl")!);
    // A file of small storages is read in segments (io/whole-file.ts): its reader too, past a lookup.
    const { reader: segmented } = await readFileInSegments(memory, segmentStarts(zip.entryStarts(), bytes.byteLength, 8192));
    assert.ok(segmented.view(bytes.byteLength - 10, 10) !== undefined);
    assertKeptShape(segmented);
  });

  test("numbered entries filed in PyTorch's name order (0, 1, 10, 100, …) are looked up in an array without holes", async () => {
    const sink = new MemorySink();
    const writer = new ZipWriter(sink);
    const names = Array.from({ length: 120 }, (_, i) => String(i)).sort();
    for (const name of names) await writer.addEntry(`archive/data/${name}`, new Uint8Array([Number(name)]));
    await writer.finish();
    const zip = await ZipReader.open(new MemoryReader(sink.toBytes()));
    const numbered = (zip as unknown as { directory: { numbered: Map<string, number[]> } }).directory.numbered;
    const numbers = numbered.get("archive/data/")!;
    assert.equal(numbers.length, 120);
    assert.ok(!hasHoleyElements(numbers), "packed after parsing");
    assert.equal((await zip.read("archive/data/100"))[0], 100);
  });

  test("the pickle cursor, memo and storage types", () => {
    const reader = new PickleReader(Buffer.from([0x80, 0x02, 0x4b, 0x07, 0x2e]));
    reader.u8("the protocol");
    assertKeptShape(reader);
    const memo = new PickleMemo();
    memo.put(0, "x");
    assertKeptShape(memo);
    const type = findTorchGlobal("torch", "FloatStorage");
    assert.ok(type instanceof TorchStorageType);
    assertKeptShape(type);
  });

  test("a save's pickler and rebuild writer, past a grown buffer and long memo references", () => {
    const pickler = new Pickler(() => false, () => false);
    const rebuilds = new RebuildWriter();
    for (let i = 0; i < 2000; i++) {
      rebuilds.write(pickler, Tensor.from(new Float32Array(3), { shape: [3] }), i);
      pickler.putMemo();
    }
    assert.ok(pickler.written().byteLength > 1 << 16, "the buffer grew");
    assertKeptShape(pickler);
    assertKeptShape(rebuilds);
  });

  test("the state walk, over a state of more than 2 GiB (storages left pending: nothing allocated)", () => {
    const huge = Storage.pending("float32", 2 ** 29 + 1);
    const walk = new StateWalk("state", (message) => new Error(message), true);
    walk.run({ model: { weight: new Tensor({ storage: huge, shape: [2 ** 29 + 1] }) } });
    assert.equal(walk.storageBytes, (2 ** 29 + 1) * 4);
    assertKeptShape(walk);
    const checkOnly = new StateWalk("state", (message) => new Error(message));
    checkOnly.run({ a: 1 });
    assertKeptShape(checkOnly);
  });
});
