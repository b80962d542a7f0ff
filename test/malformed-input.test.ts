/**
 * Hostile and damaged files: every one must be refused with a TensorLoadError that names the file
 * and says what is wrong, quickly and without allocating more than the file holds. The files are
 * built byte by byte here (or written by the dumper and then damaged), never taken from elsewhere.
 */
import assert from "node:assert/strict";
import { mkdir, mkdtemp, readFile, readdir, rm, stat, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { FormatError, TensorDumpError, TensorLoadError } from "../src/errors.js";
import { MemorySink } from "../src/formats/byte-io.js";
import { Op } from "../src/formats/pickle/opcodes.js";
import { assertSameState } from "./helpers/checkpoint-helpers.js";
import { bytesOf, float, global, int, pickle, str, u16, u32, u64, utf8, torchZip as buildTorchZip, type Part } from "./helpers/pickle-bytes.js";
import { ZipWriter } from "../src/formats/zip/zip-writer.js";
import type { FileReader, FileWriter } from "../src/fs/file-system.js";
import { LocalFileSystem } from "../src/fs/local-file-system.js";
import { TorchTensorDumper, TorchTensorLoader } from "../src/io/torch-tensor-io.js";
import { Tensor } from "../src/tensor/tensor.js";
import type { StateDict, StateValue } from "../src/values/py-values.js";

// ---------------------------------------------------------------------------------------------
// Byte builders for .pt files (the pickle ones are in helpers/pickle-bytes.ts)
// ---------------------------------------------------------------------------------------------

function float32Bytes(...values: number[]): Uint8Array {
  return new Uint8Array(Float32Array.from(values).buffer);
}

interface TensorSpec {
  storageType?: string;
  key?: string;
  numel?: Part;
  offset?: Part;
  size?: Part[];
  stride?: Part[];
}

/** `torch._utils._rebuild_tensor_v2(persistent storage, offset, size, stride, False, OrderedDict())`, as torch.save writes it. */
function rebuildTensor(spec: TensorSpec = {}): Part[] {
  const { storageType = "FloatStorage", key = "0", numel = int(4), offset = int(0), size = [int(4)], stride = [int(1)] } = spec;
  return [
    global("torch._utils", "_rebuild_tensor_v2"),
    Op.MARK,
    Op.MARK, str("storage"), global("torch", storageType), str(key), str("cpu"), numel, Op.TUPLE, Op.BINPERSID,
    offset,
    Op.MARK, ...size, Op.TUPLE,
    Op.MARK, ...stride, Op.TUPLE,
    Op.NEWFALSE,
    global("collections", "OrderedDict"), Op.EMPTY_TUPLE, Op.REDUCE,
    Op.TUPLE,
    Op.REDUCE,
  ];
}

/** `{"w": <tensor>}` pickled. */
function tensorStatePickle(spec: TensorSpec = {}): Uint8Array {
  return pickle(Op.EMPTY_DICT, str("w"), ...rebuildTensor(spec), Op.SETITEM);
}

const FOUR_FLOATS = float32Bytes(1, 2, 3, 4);

/** A .pt archive around a hand-built pickle, with the storages given (by default "0": four floats). */
const torchZip = (pickleBytes: Uint8Array, storages: Record<string, Uint8Array> = { "0": FOUR_FLOATS }): Promise<Uint8Array> => buildTorchZip(pickleBytes, storages);

// ---------------------------------------------------------------------------------------------
// Reading and patching zip structures of files built above (no comment, no zip64 unless asked)
// ---------------------------------------------------------------------------------------------

interface CentralRecord {
  /** Offset of the central header in the file. */
  at: number;
  name: string;
  headerOffset: number;
}

interface ZipLayout {
  endOffset: number;
  directoryOffset: number;
  directorySize: number;
  central: CentralRecord[];
}

function view(bytes: Uint8Array): DataView {
  return new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

function zipLayout(bytes: Uint8Array): ZipLayout {
  const v = view(bytes);
  const endOffset = bytes.length - 22;
  assert.equal(v.getUint32(endOffset, true), 0x06054b50, "the test file ends with an end record");
  const count = v.getUint16(endOffset + 10, true);
  const directorySize = v.getUint32(endOffset + 12, true);
  const directoryOffset = v.getUint32(endOffset + 16, true);
  const central: CentralRecord[] = [];
  let at = directoryOffset;
  for (let i = 0; i < count; i++) {
    const nameLength = v.getUint16(at + 28, true);
    const name = new TextDecoder().decode(bytes.subarray(at + 46, at + 46 + nameLength));
    central.push({ at, name, headerOffset: v.getUint32(at + 42, true) });
    at += 46 + nameLength + v.getUint16(at + 30, true) + v.getUint16(at + 32, true);
  }
  return { endOffset, directoryOffset, directorySize, central };
}

function centralOf(layout: ZipLayout, name: string): CentralRecord {
  const record = layout.central.find((r) => r.name === name);
  assert.ok(record !== undefined, `the test file has an entry ${name}`);
  return record;
}

/** Where an entry's data starts, from its local header. */
function dataStart(bytes: Uint8Array, record: CentralRecord): number {
  const v = view(bytes);
  return record.headerOffset + 30 + v.getUint16(record.headerOffset + 26, true) + v.getUint16(record.headerOffset + 28, true);
}

function patched(bytes: Uint8Array, patch: (v: DataView, bytes: Uint8Array) => void): Uint8Array {
  const copy = Uint8Array.from(bytes); // a copy even of a Buffer, whose slice() is a view
  patch(view(copy), copy);
  return copy;
}

/** Replaces an entry's name in the central directory only, with one of the same byte length. */
function renameInDirectory(bytes: Uint8Array, from: string, to: string): Uint8Array {
  const record = centralOf(zipLayout(bytes), from);
  const name = utf8(to);
  assert.equal(name.length, utf8(from).length, "same length keeps every offset valid");
  return patched(bytes, (_, b) => b.set(name, record.at + 46));
}

// ---------------------------------------------------------------------------------------------
// Files on disk and the assertion every test shares
// ---------------------------------------------------------------------------------------------

let dir = "";
let fileCounter = 0;
const loader = new TorchTensorLoader();

/**
 * A small file is read in a handful of pieces (format sniffing, the zip's end record and directory,
 * the whole file), each byte a few times at most: a claimed length never makes the reader read more.
 */
const MAX_READ_PASSES = 4;
const MAX_READS_OF_A_SMALL_FILE = 16;

/** A local disk that counts the reads made through it and the bytes they return. */
class CountingFileSystem extends LocalFileSystem {
  reads = 0;
  bytesRead = 0;

  override async openReader(path: string): Promise<FileReader> {
    const reader = await super.openReader(path);
    const count = (bytes: Uint8Array): Uint8Array => {
      this.reads++;
      this.bytesRead += bytes.byteLength;
      return bytes;
    };
    return {
      size: reader.size,
      read: async (position: number, length: number, target?: Uint8Array) => count(await reader.read(position, length, target)),
      close: () => reader.close(),
    };
  }
}

before(async () => {
  dir = await mkdtemp(join(tmpdir(), "ckpt-malformed-"));
});

after(async () => {
  await rm(dir, { recursive: true, force: true });
});

async function fileWith(bytes: Uint8Array): Promise<string> {
  const path = join(dir, `file-${++fileCounter}.pt`);
  await writeFile(path, bytes);
  return path;
}

interface Expected {
  /** The `code` of the FormatError chained as `cause` (or of the system error, for ENOENT and the like). */
  code?: string;
  /** Matched against the TensorLoadError's message, which includes the cause's. */
  message?: RegExp;
}

/** Loads `path` and checks that it is refused the way the library promises. Returns the cause. */
async function refused(path: string, expected: Expected = {}, using: TorchTensorLoader = loader): Promise<unknown> {
  let caught: unknown;
  let loaded: StateValue | undefined;
  try {
    loaded = await using.load(path);
  } catch (error) {
    caught = error;
  }
  assert.ok(caught !== undefined, `${path} loaded (${describeValue(loaded)}) but should have been refused`);
  assert.ok(caught instanceof TensorLoadError, `expected a TensorLoadError, got ${String(caught)}`);
  assert.equal(caught.path, path);
  assert.equal(caught.code, "TENSOR_LOAD");
  assert.ok(caught.message.startsWith(`${path}: `), "the message starts with the path");
  const cause = caught.cause as { code?: unknown } | undefined;
  if (expected.code !== undefined) {
    assert.equal(cause?.code, expected.code, `cause code for: ${caught.message}`);
  }
  if (expected.message !== undefined) assert.match(caught.message, expected.message);
  return caught.cause;
}

/** Either loads or is refused with a FormatError cause: never a TypeError, RangeError or a hang. */
async function loadsOrRefusedCleanly(path: string, what: string): Promise<"loaded" | string> {
  try {
    await loader.load(path);
    return "loaded";
  } catch (error) {
    assert.ok(error instanceof TensorLoadError, `${what}: expected a TensorLoadError, got ${String(error)}`);
    assert.equal(error.path, path);
    assert.ok(error.cause instanceof FormatError, `${what}: the cause is not a FormatError but ${String(error.cause)}`);
    return error.cause.code;
  }
}

function describeValue(value: unknown): string {
  if (value === undefined) return "nothing";
  try {
    return JSON.stringify(value, (_, v: unknown) => (typeof v === "bigint" ? `${v}n` : v))?.slice(0, 200) ?? String(value);
  } catch {
    return String(value);
  }
}

/** Runs `body` and checks that neither the resident set nor array buffers grew by more than 200 MB. */
async function withinMemoryBudget(body: () => Promise<void>): Promise<void> {
  const limit = 200 << 20;
  const before = process.memoryUsage();
  const maxRssBefore = process.resourceUsage().maxRSS * 1024;
  await body();
  const afterUsage = process.memoryUsage();
  const maxRssAfter = process.resourceUsage().maxRSS * 1024;
  assert.ok(afterUsage.rss - before.rss < limit, `rss grew by ${(afterUsage.rss - before.rss) >> 20} MB`);
  assert.ok(maxRssAfter - maxRssBefore < limit, `peak rss grew by ${(maxRssAfter - maxRssBefore) >> 20} MB`);
  assert.ok(afterUsage.arrayBuffers - before.arrayBuffers < limit, `array buffers grew by ${(afterUsage.arrayBuffers - before.arrayBuffers) >> 20} MB`);
}

/** A small, valid state written by the dumper: two storages, a few plain values. */
function smallState(): StateDict {
  return {
    w: Tensor.from(new Float32Array([1, 2, 3, 4, 5, 6]), { shape: [2, 3] }),
    b: Tensor.from(new BigInt64Array([7n, 8n])),
    step: 3,
    lr: 0.5,
  };
}

async function dumpedBytes(state: StateValue = smallState(), options: { forceZip64?: boolean } = {}): Promise<Uint8Array> {
  const path = join(dir, `dumped-${++fileCounter}.pt`);
  await new TorchTensorDumper(options).dump(state, path);
  return Uint8Array.from(await readFile(path));
}

// ---------------------------------------------------------------------------------------------
// The tests
// ---------------------------------------------------------------------------------------------

describe("the files the hostile ones are made from are valid", () => {
  test("a hand-built tensor pickle in a hand-built archive loads as the tensor it describes", async () => {
    const path = await fileWith(await torchZip(tensorStatePickle({ numel: int(4), size: [int(2), int(2)], stride: [int(2), int(1)] })));
    const state = (await loader.load(path)) as { w: Tensor };
    assert.ok(state.w instanceof Tensor);
    assert.deepEqual(state.w.shape, [2, 2]);
    assert.deepEqual([...state.w.data], [1, 2, 3, 4]);
  });

  test("a state written by the dumper loads, with and without zip64 records", async () => {
    for (const forceZip64 of [false, true]) {
      const state = (await loader.load(await fileWith(await dumpedBytes(smallState(), { forceZip64 })))) as { w: Tensor; b: Tensor; step: number };
      assert.deepEqual([...state.w.data], [1, 2, 3, 4, 5, 6]);
      assert.deepEqual([...state.b.data], [7n, 8n]);
      assert.equal(state.step, 3);
    }
  });
});

describe("truncated files", () => {
  test("a valid file cut at every length is refused, never loaded and never a crash", { timeout: 120_000 }, async () => {
    const bytes = await dumpedBytes();
    const path = join(dir, "truncated.pt");
    const codes = new Map<string, number>();
    for (let length = 0; length < bytes.length; length++) {
      await writeFile(path, bytes.subarray(0, length));
      const cause = await refused(path, { message: /not a valid PyTorch file/ });
      assert.ok(cause instanceof FormatError, `cut at ${length}: the cause is ${String(cause)}`);
      assert.ok(["ZIP_TRUNCATED", "ZIP_END"].includes(cause.code), `cut at ${length}: ${cause.code} ${cause.message}`);
      codes.set(cause.code, (codes.get(cause.code) ?? 0) + 1);
    }
    assert.equal(codes.get("ZIP_TRUNCATED"), 22, "shorter than an end record");
    assert.equal(codes.get("ZIP_END"), bytes.length - 22, "the end record is cut off");
  });

  test("a zip64 file cut at every length is refused", { timeout: 120_000 }, async () => {
    const bytes = await dumpedBytes(smallState(), { forceZip64: true });
    const path = join(dir, "truncated64.pt");
    for (let length = 0; length < bytes.length; length++) {
      await writeFile(path, bytes.subarray(0, length));
      const cause = await refused(path);
      assert.ok(cause instanceof FormatError, `cut at ${length}: the cause is ${String(cause)}`);
    }
  });

  test("a file with bytes cut out of its middle loads or is refused cleanly, never crashes", { timeout: 120_000 }, async () => {
    const bytes = await dumpedBytes();
    const path = join(dir, "cut-middle.pt");
    let refusedCount = 0;
    for (let start = 0; start < bytes.length - 22; start += 3) {
      for (const cut of [1, 4, 64]) {
        await writeFile(path, Buffer.concat([bytes.subarray(0, start), bytes.subarray(start + cut)]));
        if ((await loadsOrRefusedCleanly(path, `${cut} bytes cut at ${start}`)) !== "loaded") refusedCount++;
      }
    }
    assert.ok(refusedCount > 0);
  });

  test("a file with any one byte flipped is refused cleanly, or loads with exactly the values saved; every flip in a storage's bytes fails its CRC", { timeout: 120_000 }, async () => {
    const bytes = await dumpedBytes();
    const original = await loader.load(await fileWith(bytes));
    const layout = zipLayout(bytes);
    const storages = layout.central.filter((r) => /\/data\/\d+$/.test(r.name)).map((r) => {
      const start = dataStart(bytes, r);
      return { name: r.name, start, end: start + view(bytes).getUint32(r.at + 20, true) };
    });
    assert.ok(storages.length >= 2, "the test file has storages");
    const path = join(dir, "flipped.pt");
    const outcomes = new Map<string, number>();
    for (let at = 0; at < bytes.length; at++) {
      await writeFile(path, patched(bytes, (_, b) => (b[at] = b[at]! ^ 0xff)));
      const outcome = await loadsOrRefusedCleanly(path, `byte ${at} flipped`);
      outcomes.set(outcome, (outcomes.get(outcome) ?? 0) + 1);
      // A flip no check catches must be one that changes no value (times, versions, padding).
      if (outcome === "loaded") assertSameState(await loader.load(path), original, `byte ${at} flipped: the file loaded with other values`);
      const storage = storages.find((s) => at >= s.start && at < s.end);
      if (storage !== undefined) assert.equal(outcome, "ZIP_CRC", `byte ${at} of ${storage.name} flipped: ${outcome}`);
    }
    assert.ok((outcomes.get("ZIP_CRC") ?? 0) >= storages.reduce((sum, s) => sum + s.end - s.start, 0), `outcomes: ${JSON.stringify([...outcomes])}`);
  });
});

describe("bad zip structures", () => {
  let valid: Uint8Array;
  let layout: ZipLayout;
  before(async () => {
    valid = await dumpedBytes();
    layout = zipLayout(valid);
  });

  test("a file with no end record is refused", async () => {
    await refused(await fileWith(valid.subarray(0, layout.endOffset)), { code: "ZIP_END", message: /no zip end record/ });
    await refused(await fileWith(patched(valid, (v) => v.setUint32(layout.endOffset, 0x06054b51, true))), { code: "ZIP_END" });
  });

  test("an end record whose comment length disagrees with the file is not taken for one", async () => {
    await refused(await fileWith(patched(valid, (v) => v.setUint16(layout.endOffset + 20, 5, true))), { code: "ZIP_END" });
  });

  test("a central directory offset beyond the file is refused", async () => {
    const path = await fileWith(patched(valid, (v) => v.setUint32(layout.endOffset + 16, 0x7fff0000, true)));
    await refused(path, { code: "ZIP_BOUNDS", message: /central directory .* runs past its end/ });
  });

  test("a central directory size beyond the file is refused", async () => {
    await refused(await fileWith(patched(valid, (v) => v.setUint32(layout.endOffset + 12, 0x7fff0000, true))), { code: "ZIP_BOUNDS" });
    await refused(await fileWith(patched(valid, (v) => v.setUint32(layout.endOffset + 12, layout.directorySize + 1, true))), { code: "ZIP_BOUNDS" });
  });

  test("an entry count larger than the central directory can hold is refused", async () => {
    const path = await fileWith(patched(valid, (v) => v.setUint16(layout.endOffset + 10, 0xfffe, true)));
    await refused(path, { code: "ZIP_DIRECTORY", message: /65534 entries cannot fit in a central directory/ });
  });

  test("an entry count one larger than the entries present is refused", async () => {
    const count = layout.central.length;
    const path = await fileWith(patched(valid, (v) => v.setUint16(layout.endOffset + 10, count + 1, true)));
    await refused(path, { code: "ZIP_DIRECTORY", message: new RegExp(`central directory entry ${count} is missing or damaged`) });
  });

  test("saturated end-record fields without zip64 records are refused", async () => {
    await refused(await fileWith(patched(valid, (v) => v.setUint16(layout.endOffset + 10, 0xffff, true))), { code: "ZIP_END", message: /needs zip64 records/ });
  });

  test("a compressed (deflate, method 8) entry is refused by name", async () => {
    const record = centralOf(layout, "archive/data.pkl");
    const path = await fileWith(patched(valid, (v) => v.setUint16(record.at + 10, 8, true)));
    await refused(path, { code: "ZIP_UNSUPPORTED", message: /entry "archive\/data.pkl" is compressed \(method 8\)/ });
  });

  test("an encrypted entry is refused by name", async () => {
    const record = centralOf(layout, "archive/data/0");
    const path = await fileWith(patched(valid, (v) => v.setUint16(record.at + 8, 0x0001, true)));
    await refused(path, { code: "ZIP_UNSUPPORTED", message: /entry "archive\/data\/0" is encrypted/ });
  });

  test("an entry name that appears twice is refused", async () => {
    const path = await fileWith(renameInDirectory(valid, "archive/data/1", "archive/data/0"));
    await refused(path, { code: "ZIP_NAME", message: /entry "archive\/data\/0" appears twice/ });
  });

  test("an entry name that is not UTF-8 is refused", async () => {
    const record = centralOf(layout, "archive/data/1");
    const path = await fileWith(patched(valid, (_, b) => b.set([0xc0, 0xaf], record.at + 46 + "archive/data/".length - 1)));
    await refused(path, { code: "ZIP_NAME", message: /not UTF-8/ });
  });

  test("a local header with a bad signature is refused", async () => {
    const record = centralOf(layout, "archive/data.pkl");
    const path = await fileWith(patched(valid, (v) => v.setUint32(record.headerOffset, 0x04034b51, true)));
    await refused(path, { code: "ZIP_HEADER", message: /entry "archive\/data.pkl" has no local header/ });
  });

  test("a central header with a bad signature is refused", async () => {
    const record = centralOf(layout, "archive/byteorder");
    const index = layout.central.indexOf(record);
    assert.ok(index > 0, "a header after the first, so the damage is found past a good one");
    const path = await fileWith(patched(valid, (v) => v.setUint32(record.at, 0, true)));
    await refused(path, { code: "ZIP_DIRECTORY", message: new RegExp(`central directory entry ${index} is missing or damaged`) });
  });

  test("an entry whose size runs into the central directory is refused", async () => {
    const record = centralOf(layout, "archive/data/0");
    const huge = layout.directoryOffset;
    const path = await fileWith(patched(valid, (v) => {
      v.setUint32(record.at + 20, huge, true);
      v.setUint32(record.at + 24, huge, true);
    }));
    await refused(path, { code: "ZIP_BOUNDS", message: /entry "archive\/data\/0" .* runs into the central directory/ });
  });

  test("an entry whose data, after its local header, runs into the central directory is refused", async () => {
    // Small enough to pass the central directory check, too large once the local name and padding count.
    const record = centralOf(layout, "archive/version");
    const room = layout.directoryOffset - dataStart(valid, record);
    const path = await fileWith(patched(valid, (v) => {
      v.setUint32(record.at + 20, room + 1, true);
      v.setUint32(record.at + 24, room + 1, true);
    }));
    await refused(path, { code: "ZIP_BOUNDS", message: /entry "archive\/version" .* runs past the end of the entry data/ });
  });

  test("a local header whose extra field pushes the data past the central directory is refused", async () => {
    const record = centralOf(layout, "archive/data/1");
    const path = await fileWith(patched(valid, (v) => v.setUint16(record.headerOffset + 28, 0xffff, true)));
    await refused(path, { code: "ZIP_BOUNDS" });
  });

  test("a stored entry whose two sizes differ is refused", async () => {
    const record = centralOf(layout, "archive/data/0");
    const path = await fileWith(patched(valid, (v) => v.setUint32(record.at + 20, 4, true)));
    await refused(path, { code: "ZIP_DIRECTORY", message: /differing sizes/ });
  });

  test("a central header whose name and extra fields run past the directory is refused", async () => {
    const last = layout.central[layout.central.length - 1]!;
    const path = await fileWith(patched(valid, (v) => v.setUint16(last.at + 30, 0x1000, true)));
    await refused(path, { code: "ZIP_DIRECTORY", message: /runs past the directory/ });
  });

  test("a flipped byte in a storage fails the CRC check, and loads altered when the check is off", async () => {
    const record = centralOf(layout, "archive/data/0");
    const damaged = patched(valid, (_, b) => (b[dataStart(valid, record)] = b[dataStart(valid, record)]! ^ 0x40));
    const path = await fileWith(damaged);
    await refused(path, { code: "ZIP_CRC", message: /entry "archive\/data\/0" fails its CRC-32 check/ });
    const state = (await new TorchTensorLoader({ verifyCrc: false }).load(path)) as { w: Tensor };
    assert.notEqual(state.w.data[0], 1, "without the check the damage goes unnoticed: that is why it is on");
  });

  test("a flipped byte in the pickle fails the CRC check", async () => {
    const record = centralOf(layout, "archive/data.pkl");
    const at = dataStart(valid, record) + 5;
    await refused(await fileWith(patched(valid, (_, b) => (b[at] = b[at]! ^ 0x01))), { code: "ZIP_CRC", message: /archive\/data.pkl/ });
  });

  describe("zip64 records", () => {
    let valid64: Uint8Array;
    let locator: number;
    let zip64End: number;
    before(async () => {
      valid64 = await dumpedBytes(smallState(), { forceZip64: true });
      locator = valid64.length - 22 - 20;
      zip64End = locator - 56;
      assert.equal(view(valid64).getUint32(locator, true), 0x07064b50);
      assert.equal(view(valid64).getUint32(zip64End, true), 0x06064b50);
    });

    test("a zip64 locator pointing at something else than a zip64 end record is refused", async () => {
      const path = await fileWith(patched(valid64, (v) => v.setBigUint64(locator + 8, 0n, true)));
      await refused(path, { code: "ZIP_END", message: /zip64 locator points at no zip64 end record/ });
    });

    test("a zip64 locator pointing beyond the file is refused", async () => {
      const path = await fileWith(patched(valid64, (v) => v.setBigUint64(locator + 8, 2n ** 62n, true)));
      await refused(path, { code: "ZIP_BOUNDS", message: /zip64 end record offset/ });
    });

    test("a zip64 locator pointing into itself is refused", async () => {
      const path = await fileWith(patched(valid64, (v) => v.setBigUint64(locator + 8, BigInt(locator - 10), true)));
      await refused(path, { code: "ZIP_BOUNDS" });
    });

    test("zip64 counts and offsets beyond the file are refused", async () => {
      await refused(await fileWith(patched(valid64, (v) => v.setBigUint64(zip64End + 32, 2n ** 40n, true))), { code: "ZIP_BOUNDS", message: /zip64 entry count/ });
      await refused(await fileWith(patched(valid64, (v) => v.setBigUint64(zip64End + 40, 2n ** 63n, true))), { code: "ZIP_BOUNDS", message: /zip64 central directory size/ });
      await refused(await fileWith(patched(valid64, (v) => v.setBigUint64(zip64End + 48, 2n ** 64n - 1n, true))), { code: "ZIP_BOUNDS", message: /zip64 central directory offset/ });
    });

    test("a zip64 entry count larger than the directory can hold is refused", async () => {
      const path = await fileWith(patched(valid64, (v) => v.setBigUint64(zip64End + 32, 1000n, true)));
      await refused(path, { code: "ZIP_DIRECTORY", message: /1000 entries cannot fit/ });
    });

    test("a zip64 entry size or offset beyond the directory is refused", async () => {
      const directoryOffset = Number(view(valid64).getBigUint64(zip64End + 48, true));
      // The first central header's zip64 extra field: id, length, size, compressed size, offset.
      const nameLength = view(valid64).getUint16(directoryOffset + 28, true);
      const extra = directoryOffset + 46 + nameLength;
      assert.equal(view(valid64).getUint16(extra, true), 0x0001);
      await refused(await fileWith(patched(valid64, (v) => v.setBigUint64(extra + 4, 2n ** 50n, true))), { code: "ZIP_BOUNDS", message: /zip64 size/ });
      await refused(await fileWith(patched(valid64, (v) => v.setBigUint64(extra + 20, 2n ** 50n, true))), { code: "ZIP_BOUNDS", message: /zip64 offset/ });
    });

    test("a zip64 extra field too short for the saturated fields is refused", async () => {
      const directoryOffset = Number(view(valid64).getBigUint64(zip64End + 48, true));
      const nameLength = view(valid64).getUint16(directoryOffset + 28, true);
      const extra = directoryOffset + 46 + nameLength;
      const path = await fileWith(patched(valid64, (v) => v.setUint16(extra + 2, 8, true)));
      await refused(path, { code: "ZIP_DIRECTORY" });
    });
  });
});

describe("unsafe entry names in the central directory", () => {
  const cases: [written: string, patchedTo: string][] = [
    ["archive/xx/evil", "archive/../evil"],
    ["xx/archive/evil", "../archive/evil"],
    ["xarchive/evil", "/archive/evil"],
    ["archive/x/evil", "archive/./evil"],
    ["archive/evil", "archive\\evil"],
    ["archive/x", "archive/\0"],
    ["archive/xx", "archive/.."],
  ];
  for (const [written, name] of cases) {
    test(`an entry named ${JSON.stringify(name)} is refused`, async () => {
      const sink = new MemorySink();
      const zip = new ZipWriter(sink);
      await zip.addEntry("archive/data.pkl", pickle(Op.EMPTY_DICT));
      await zip.addEntry(written, utf8("x"));
      await zip.finish();
      const path = await fileWith(renameInDirectory(sink.toBytes(), written, name));
      const escaped = JSON.stringify(name).replace(/[\\.^$|?*+()[\]{}]/g, "\\$&");
      await refused(path, { code: "ZIP_NAME", message: new RegExp(`unsafe zip entry name ${escaped}`) });
    });
  }
});

describe("bad pickles", () => {
  interface PickleCase {
    name: string;
    bytes: Uint8Array;
    code: string;
    message: RegExp;
  }

  function pickleCases(cases: PickleCase[]): void {
    for (const { name, bytes, code, message } of cases) {
      test(name, { timeout: 10_000 }, async () => {
        await refused(await fileWith(await torchZip(bytes)), { code, message });
      });
    }
  }

  describe("globals outside the allow-list are refused by name", () => {
    pickleCases(
      [
        ["os", "system"],
        ["posix", "system"],
        ["builtins", "eval"],
        ["builtins", "exec"],
        ["builtins", "getattr"],
        ["__builtin__", "eval"],
        ["subprocess", "Popen"],
        ["torch.nn", "Module"],
        ["torch", "load"],
        ["torch._utils", "_rebuild_qtensor"],
        ["collections", "defaultdict"],
        ["numpy.core.multiarray", "_reconstruct"],
      ].map(([module, name]) => ({
        name: `the global ${module}.${name} is refused, naming it`,
        bytes: pickle(global(module!, name!), str("echo pwned"), Op.TUPLE1, Op.REDUCE),
        code: "PICKLE_GLOBAL",
        message: new RegExp(`refusing to load the global ${module!.replace(/\./g, "\\.")}\\.${name}`),
      })),
    );
    pickleCases([
      {
        name: "a global reached through STACK_GLOBAL is refused, naming it",
        bytes: pickle(str("os"), str("system"), Op.STACK_GLOBAL, str("id"), Op.TUPLE1, Op.REDUCE),
        code: "PICKLE_GLOBAL",
        message: /os\.system/,
      },
      {
        name: "a global whose name is not UTF-8 is refused",
        bytes: pickle(Op.GLOBAL, 0x6f, 0x73, 0x0a, 0xff, 0xfe, 0x0a),
        code: "PICKLE_STRING",
        message: /GLOBAL name .* is not valid UTF-8/,
      },
      {
        name: "a STACK_GLOBAL of things that are not strings is refused",
        bytes: pickle(int(1), int(2), Op.STACK_GLOBAL),
        code: "PICKLE_TYPE",
        message: /STACK_GLOBAL needs two strings/,
      },
    ]);
  });

  describe("opcodes outside a state pickle are refused", () => {
    const opcodes: [string, Part[]][] = [
      ["INST", [Op.MARK, 0x69, ...utf8("os\nsystem\n")]],
      ["OBJ", [Op.MARK, ...global("collections", "OrderedDict"), 0x6f]],
      ["EXT1", [0x82, 1]],
      ["EXT2", [0x83, 1, 0]],
      ["EXT4", [0x84, 1, 0, 0, 0]],
      ["PERSID", [0x50, ...utf8("0\n")]],
      ["STRING", [0x53, ...utf8("'x'\n")]],
      ["INT", [0x49, ...utf8("1\n")]],
      ["NEWOBJ_EX", [Op.NEWOBJ_EX]],
      ["EMPTY_SET", [Op.EMPTY_SET]],
      ["FROZENSET", [Op.MARK, Op.FROZENSET]],
      ["BYTEARRAY8", [Op.BYTEARRAY8, ...u64(0n)]],
      ["NEXT_BUFFER", [Op.NEXT_BUFFER]],
      ["a byte that is no opcode", [0xff]],
    ];
    pickleCases(
      opcodes.map(([name, parts]) => {
        const opcode = parts.find((p) => p !== Op.MARK) as number;
        return {
          name: `${name} is refused`,
          bytes: pickle(...parts),
          code: "PICKLE_OPCODE",
          message: new RegExp(`opcode 0x${(opcode === Op.GLOBAL ? 0x6f : opcode).toString(16).padStart(2, "0")} is not allowed`),
        };
      }),
    );
  });

  describe("stack and MARK misuse is refused", () => {
    pickleCases([
      { name: "POP on an empty stack is refused", bytes: pickle(Op.POP, Op.NONE), code: "PICKLE_STACK", message: /stack underflow/ },
      { name: "REDUCE with nothing on the stack is refused", bytes: pickle(Op.REDUCE), code: "PICKLE_STACK", message: /stack underflow/ },
      { name: "SETITEM with only a key is refused", bytes: pickle(Op.EMPTY_DICT, Op.POP, str("k"), Op.SETITEM), code: "PICKLE_STACK", message: /stack underflow/ },
      { name: "TUPLE3 with two items is refused", bytes: pickle(Op.NONE, Op.NONE, Op.TUPLE3), code: "PICKLE_STACK", message: /stack underflow/ },
      { name: "DUP on an empty stack is refused", bytes: pickle(Op.DUP), code: "PICKLE_STACK", message: /stack underflow/ },
      { name: "BINPUT on an empty stack is refused", bytes: pickle(Op.BINPUT, 0), code: "PICKLE_STACK", message: /stack underflow/ },
      { name: "TUPLE without a MARK is refused", bytes: pickle(Op.NONE, Op.TUPLE), code: "PICKLE_STACK", message: /no MARK to pop to/ },
      { name: "APPENDS without a MARK is refused", bytes: pickle(Op.EMPTY_LIST, Op.APPENDS), code: "PICKLE_STACK", message: /no MARK to pop to/ },
      { name: "POP_MARK without a MARK is refused", bytes: pickle(Op.POP_MARK, Op.NONE), code: "PICKLE_STACK", message: /no MARK to pop to/ },
      { name: "a MARK still open at STOP is refused", bytes: pickle(Op.EMPTY_DICT, Op.MARK, str("k"), int(1)), code: "PICKLE_STACK", message: /STOP with an unbalanced stack/ },
      { name: "STOP with two values on the stack is refused", bytes: pickle(Op.NONE, Op.NONE), code: "PICKLE_STACK", message: /STOP with an unbalanced stack/ },
      { name: "STOP with an empty stack is refused", bytes: pickle(), code: "PICKLE_STACK", message: /STOP with an unbalanced stack/ },
      { name: "APPENDS onto a dict is refused", bytes: pickle(Op.EMPTY_DICT, Op.MARK, int(1), Op.APPENDS), code: "PICKLE_TYPE", message: /APPENDS on a dict, not a list/ },
    ]);
  });

  describe("memo misuse is refused", () => {
    pickleCases([
      { name: "BINGET before any BINPUT is refused", bytes: pickle(Op.BINGET, 0), code: "PICKLE_MEMO", message: /memo entry 0 read before it was written/ },
      { name: "LONG_BINGET of an index never written is refused", bytes: pickle(Op.NONE, Op.BINPUT, 1, Op.POP, Op.LONG_BINGET, ...u32(0xffffffff)), code: "PICKLE_MEMO", message: /memo entry 4294967295/ },
      { name: "BINGET of a neighbouring index is refused", bytes: pickle(Op.NONE, Op.BINPUT, 1, Op.POP, Op.BINGET, 2), code: "PICKLE_MEMO", message: /memo entry 2/ },
    ]);
  });

  describe("protocols other than 2 to 5 are refused", () => {
    pickleCases([
      { name: "a protocol-0 text pickle is refused", bytes: bytesOf(...utf8("(dp0\n.")), code: "PICKLE_PROTOCOL", message: /not a pickle of protocol 2 or newer/ },
      { name: "a protocol-1 binary pickle is refused", bytes: bytesOf(Op.EMPTY_DICT, Op.BINPUT, 0, Op.STOP), code: "PICKLE_PROTOCOL", message: /not a pickle of protocol 2 or newer/ },
      { name: "PROTO 0 is refused", bytes: bytesOf(Op.PROTO, 0, Op.NONE, Op.STOP), code: "PICKLE_PROTOCOL", message: /protocol 0 is not supported/ },
      { name: "PROTO 1 is refused", bytes: bytesOf(Op.PROTO, 1, Op.NONE, Op.STOP), code: "PICKLE_PROTOCOL", message: /protocol 1 is not supported/ },
      { name: "PROTO 6 is refused", bytes: bytesOf(Op.PROTO, 6, Op.NONE, Op.STOP), code: "PICKLE_PROTOCOL", message: /protocol 6 is not supported/ },
      { name: "PROTO 255 is refused", bytes: bytesOf(Op.PROTO, 255, Op.NONE, Op.STOP), code: "PICKLE_PROTOCOL", message: /protocol 255 is not supported/ },
      { name: "an empty pickle is refused", bytes: bytesOf(), code: "PICKLE_TRUNCATED", message: /pickle ends inside the protocol/ },
    ]);
  });

  describe("truncated pickles are refused", () => {
    const withoutStop = (...parts: Part[]): Uint8Array => bytesOf(Op.PROTO, 2, ...parts);
    pickleCases([
      { name: "a pickle cut in the middle of a string is refused", bytes: withoutStop(Op.BINUNICODE, ...u32(10), ...utf8("hello")), code: "PICKLE_TRUNCATED", message: /pickle ends inside a string .*needs 10 more bytes, has 5/ },
      { name: "a pickle cut in the middle of a string's length is refused", bytes: withoutStop(Op.BINUNICODE, 10, 0), code: "PICKLE_TRUNCATED", message: /inside BINUNICODE/ },
      { name: "a pickle cut in a SHORT_BINUNICODE is refused", bytes: withoutStop(Op.SHORT_BINUNICODE, 200, ...utf8("abc")), code: "PICKLE_TRUNCATED", message: /a string/ },
      { name: "a pickle cut in a BININT is refused", bytes: withoutStop(Op.BININT, 1, 2), code: "PICKLE_TRUNCATED", message: /inside BININT/ },
      { name: "a pickle cut in a BINFLOAT is refused", bytes: withoutStop(Op.BINFLOAT, 0x3f, 0xf0), code: "PICKLE_TRUNCATED", message: /inside BINFLOAT/ },
      { name: "a pickle cut in a GLOBAL line is refused", bytes: withoutStop(Op.GLOBAL, ...utf8("torch\nSiz")), code: "PICKLE_TRUNCATED", message: /inside a GLOBAL name/ },
      { name: "a pickle with no STOP is refused", bytes: withoutStop(Op.EMPTY_DICT, str("k"), int(1), Op.SETITEM), code: "PICKLE_TRUNCATED", message: /pickle ends inside an opcode/ },
      { name: "a pickle of only PROTO is refused", bytes: withoutStop(), code: "PICKLE_TRUNCATED", message: /an opcode/ },
    ]);
  });

  describe("lengths claiming more than the pickle holds fail fast without allocating", () => {
    const huge: [string, Part[], string, RegExp][] = [
      ["BINUNICODE8 claiming 2^60 bytes", [Op.BINUNICODE8, ...u64(2n ** 60n), ...utf8("abc")], "PICKLE_TRUNCATED", /BINUNICODE8 claims 1152921504606846976 bytes but only 4 are left/],
      ["BINUNICODE8 claiming 2^64-1 bytes", [Op.BINUNICODE8, ...u64(2n ** 64n - 1n)], "PICKLE_TRUNCATED", /BINUNICODE8 claims 18446744073709551615 bytes/],
      ["BINBYTES8 claiming 2^60 bytes", [Op.BINBYTES8, ...u64(2n ** 60n)], "PICKLE_TRUNCATED", /BINBYTES8 claims 1152921504606846976 bytes/],
      ["BINBYTES8 claiming 2^31 bytes", [Op.BINBYTES8, ...u64(2n ** 31n)], "PICKLE_TRUNCATED", /BINBYTES8 claims 2147483648 bytes/],
      ["FRAME claiming 2^60 bytes", [Op.FRAME, ...u64(2n ** 60n)], "PICKLE_TRUNCATED", /a frame claims/],
      ["LONG4 claiming 2^31 bytes", [Op.LONG4, ...u32(2 ** 31)], "PICKLE_LIMIT", /an int of 2147483648 bytes exceeds the limit/],
      ["LONG4 claiming 2^32-1 bytes", [Op.LONG4, ...u32(2 ** 32 - 1)], "PICKLE_LIMIT", /exceeds the limit/],
      ["LONG4 of 5000 bytes that are present", [Op.LONG4, ...u32(5000), ...new Uint8Array(5000)], "PICKLE_LIMIT", /an int of 5000 bytes/],
      ["BINUNICODE claiming 2^31 bytes", [Op.BINUNICODE, ...u32(2 ** 31)], "PICKLE_TRUNCATED", /needs 2147483648 more bytes/],
      ["BINUNICODE claiming 2^32-1 bytes", [Op.BINUNICODE, ...u32(2 ** 32 - 1)], "PICKLE_TRUNCATED", /needs 4294967295 more bytes/],
      ["BINBYTES claiming 2^32-1 bytes", [Op.BINBYTES, ...u32(2 ** 32 - 1)], "PICKLE_TRUNCATED", /needs 4294967295 more bytes/],
      ["BINSTRING claiming 2^31-1 bytes", [Op.BINSTRING, ...u32(2 ** 31 - 1)], "PICKLE_TRUNCATED", /needs 2147483647 more bytes/],
      ["BINSTRING with a negative length", [Op.BINSTRING, ...u32(2 ** 32 - 1)], "PICKLE_LENGTH", /BINSTRING with a negative length/],
    ];
    for (const [name, parts, code, message] of huge) {
      test(`${name} is refused after reading no more than the file, in a few reads`, async () => {
        const path = await fileWith(await torchZip(pickle(...parts)));
        const { size } = await stat(path);
        // A bound on work, not on time (the machine is shared): what the reader reads, and how often.
        const fileSystem = new CountingFileSystem();
        await withinMemoryBudget(async () => {
          await refused(path, { code, message }, new TorchTensorLoader({ fileSystem }));
        });
        assert.ok(fileSystem.bytesRead <= MAX_READ_PASSES * size, `read ${fileSystem.bytesRead} bytes of a ${size}-byte file`);
        assert.ok(fileSystem.reads <= MAX_READS_OF_A_SMALL_FILE, `${fileSystem.reads} reads`);
      });
    }
  });

  describe("calls and containers of the wrong kind are refused", () => {
    pickleCases([
      { name: "REDUCE on a string is refused", bytes: pickle(str("os.system"), Op.EMPTY_TUPLE, Op.REDUCE), code: "PICKLE_TYPE", message: /REDUCE on string, which cannot be called/ },
      { name: "REDUCE on None is refused", bytes: pickle(Op.NONE, Op.EMPTY_TUPLE, Op.REDUCE), code: "PICKLE_TYPE", message: /REDUCE on None/ },
      { name: "REDUCE on a dtype is refused", bytes: pickle(global("torch", "float32"), Op.EMPTY_TUPLE, Op.REDUCE), code: "PICKLE_TYPE", message: /REDUCE on PyDType/ },
      { name: "REDUCE on a storage class is refused", bytes: pickle(global("torch", "FloatStorage"), Op.EMPTY_TUPLE, Op.REDUCE), code: "PICKLE_TYPE", message: /REDUCE on TorchStorageType/ },
      { name: "NEWOBJ on an int is refused", bytes: pickle(int(1), Op.EMPTY_TUPLE, Op.NEWOBJ), code: "PICKLE_TYPE", message: /NEWOBJ on number/ },
      { name: "REDUCE with arguments that are not a tuple is refused", bytes: pickle(global("collections", "OrderedDict"), Op.NONE, Op.REDUCE), code: "PICKLE_TYPE", message: /arguments must be a tuple, got None/ },
      { name: "an allowed call with wrong arguments is refused", bytes: pickle(global("_codecs", "encode"), str("x"), str("rot13"), Op.TUPLE2, Op.REDUCE), code: "TORCH_PICKLE", message: /_codecs.encode is only allowed/ },
      { name: "bytes() with arguments is refused", bytes: pickle(global("builtins", "bytes"), int(10), Op.TUPLE1, Op.REDUCE), code: "TORCH_PICKLE", message: /bytes\(\.\.\.\) is only allowed without arguments/ },
      { name: "OrderedDict of items that are not pairs is refused", bytes: pickle(global("collections", "OrderedDict"), Op.MARK, int(1), Op.LIST, Op.TUPLE1, Op.REDUCE), code: "TORCH_PICKLE", message: /OrderedDict items must be \(key, value\) pairs/ },
      { name: "SETITEM on a list is refused", bytes: pickle(Op.EMPTY_LIST, str("k"), int(1), Op.SETITEM), code: "PICKLE_TYPE", message: /SETITEM on a list or tuple, not a dict/ },
      { name: "APPEND on a dict is refused", bytes: pickle(Op.EMPTY_DICT, int(1), Op.APPEND), code: "PICKLE_TYPE", message: /APPEND on a dict, not a list/ },
      { name: "a dict key that Python could not hash is refused", bytes: pickle(Op.EMPTY_DICT, Op.EMPTY_DICT, int(1), Op.SETITEM), code: "PICKLE_TYPE", message: /a dict key must be/ },
      { name: "SETITEMS with an odd number of items is refused", bytes: pickle(Op.EMPTY_DICT, Op.MARK, str("k"), Op.SETITEMS), code: "PICKLE_TYPE", message: /odd number of items/ },
      { name: "BUILD on a plain dict is refused", bytes: pickle(Op.EMPTY_DICT, Op.EMPTY_DICT, Op.BUILD), code: "PICKLE_BUILD", message: /sets the state of an object that has none/ },
      { name: "a persistent id that is not a storage tuple is refused", bytes: pickle(str("storage"), Op.BINPERSID), code: "TORCH_PERSID", message: /persistent id is not \('storage'/ },
      { name: "a persistent id with fields of the wrong type is refused", bytes: pickle(Op.MARK, str("storage"), str("FloatStorage"), str("0"), str("cpu"), int(4), Op.TUPLE, Op.BINPERSID), code: "TORCH_PERSID", message: /fields of the wrong type/ },
      { name: "a tensor whose storage is not a storage is refused", bytes: pickle(global("torch._utils", "_rebuild_tensor_v2"), Op.MARK, Op.NONE, int(0), Op.EMPTY_TUPLE, Op.EMPTY_TUPLE, Op.NEWFALSE, Op.NONE, Op.TUPLE, Op.REDUCE), code: "TORCH_PICKLE", message: /a tensor's storage is not a storage/ },
      { name: "_rebuild_tensor_v2 with too few arguments is refused", bytes: pickle(global("torch._utils", "_rebuild_tensor_v2"), Op.EMPTY_TUPLE, Op.REDUCE), code: "TORCH_PICKLE", message: /takes 6 or 7 arguments, got 0/ },
    ]);
  });

  describe("strings that are not UTF-8 are refused", () => {
    const invalid: [string, number[]][] = [
      ["a stray continuation byte", [0x80]],
      ["an 0xff byte", [0x61, 0xff]],
      ["an overlong encoding of /", [0xc0, 0xaf]],
      ["an encoded lone surrogate", [0xed, 0xa0, 0x80]],
      ["a sequence cut short", [0xe6, 0x97]],
      ["a code point beyond U+10FFFF", [0xf4, 0x90, 0x80, 0x80]],
    ];
    pickleCases(
      invalid.flatMap(([what, bytes]) => [
        { name: `BINUNICODE with ${what} is refused`, bytes: pickle(Op.BINUNICODE, ...u32(bytes.length), ...bytes), code: "PICKLE_STRING", message: /a string is not valid UTF-8/ },
        { name: `SHORT_BINUNICODE with ${what} is refused`, bytes: pickle(Op.SHORT_BINUNICODE, bytes.length, ...bytes), code: "PICKLE_STRING", message: /a string is not valid UTF-8/ },
      ]),
    );
  });
});

describe("storages shorter than their tensors", () => {
  test("a persistent id claiming more elements than the storage entry holds is refused", async () => {
    const path = await fileWith(await torchZip(tensorStatePickle({ numel: int(100) })));
    await refused(path, { code: "TORCH_STORAGE", message: /storage "0" should hold 100 float32 elements \(400 bytes\) but its entry has 16 bytes/ });
  });

  test("a persistent id claiming fewer elements than the storage entry holds is refused", async () => {
    const path = await fileWith(await torchZip(tensorStatePickle({ numel: int(2), size: [int(2)] })));
    await refused(path, { code: "TORCH_STORAGE", message: /should hold 2 float32 elements/ });
  });

  test("a storage entry that is not a whole number of elements is refused", async () => {
    const path = await fileWith(await torchZip(tensorStatePickle({ numel: int(1), size: [int(1)] }), { "0": new Uint8Array(5) }));
    await refused(path, { code: "TORCH_STORAGE", message: /its entry has 5 bytes/ });
  });

  test("a persistent id claiming an absurd element count is refused without allocating", async () => {
    await withinMemoryBudget(async () => {
      await refused(await fileWith(await torchZip(tensorStatePickle({ numel: int(2 ** 40) }))), { code: "TORCH_STORAGE" });
      await refused(await fileWith(await torchZip(tensorStatePickle({ numel: int(2n ** 70n) }))), { code: "TORCH_PERSID", message: /wrong type/ });
      await refused(await fileWith(await torchZip(tensorStatePickle({ numel: int(-4) }))), { code: "TORCH_STORAGE" });
      await refused(await fileWith(await torchZip(tensorStatePickle({ numel: float(4.5) }))), { code: "TORCH_STORAGE" });
    });
  });

  test("a tensor view running past the end of its storage is refused", async () => {
    const cases: [TensorSpec, RegExp][] = [
      [{ size: [int(5)] }, /reaches element 4 of a storage of 4 elements/],
      [{ offset: int(3), size: [int(2)] }, /offset 3: reaches element 4/],
      [{ offset: int(4), size: [int(1)] }, /reaches element 4/],
      [{ size: [int(3)], stride: [int(2)] }, /strides \[2\].*reaches element 4/],
      [{ size: [int(2), int(2)], stride: [int(1), int(3)] }, /reaches element 4/],
    ];
    for (const [spec, message] of cases) {
      await refused(await fileWith(await torchZip(tensorStatePickle(spec))), { code: "PICKLE_CALL", message });
    }
  });

  test("a storage key with no entry in the archive is refused, naming the entry", async () => {
    const path = await fileWith(await torchZip(tensorStatePickle({ key: "7" })));
    await refused(path, { code: "TORCH_STORAGE", message: /storage "7" has no entry archive\/data\/7/ });
  });

  test("a storage key that would climb out of the data folder is just a missing entry", async () => {
    const path = await fileWith(await torchZip(tensorStatePickle({ key: "../data.pkl" })));
    await refused(path, { code: "TORCH_STORAGE", message: /has no entry archive\/data\/\.\.\/data\.pkl/ });
  });

  test("one storage read as two dtypes is refused", async () => {
    const bytes = pickle(
      Op.MARK,
      ...rebuildTensor({ storageType: "FloatStorage" }),
      ...rebuildTensor({ storageType: "IntStorage" }),
      Op.LIST,
    );
    await refused(await fileWith(await torchZip(bytes)), { code: "TORCH_STORAGE", message: /storage "0" is used as both float32 and int32/ });
  });
});

describe("sizes that would need absurd memory", () => {
  const cases: [string, TensorSpec, string, RegExp][] = [
    ["shape [2^40, 2^40] over four elements", { size: [int(2 ** 40), int(2 ** 40)], stride: [int(2 ** 40), int(1)] }, "PICKLE_CALL", /too many elements/],
    ["shape [2^40, 2^40] with zero strides", { size: [int(2 ** 40), int(2 ** 40)], stride: [int(0), int(0)] }, "PICKLE_CALL", /too many elements/],
    ["shape [2^31] over four elements", { size: [int(2 ** 31)] }, "PICKLE_CALL", /reaches element 2147483647/],
    ["a size beyond 2^53", { size: [int(2n ** 60n)] }, "TORCH_PICKLE", /offset, size, stride or requires_grad has the wrong type/],
    ["a stride beyond 2^53", { size: [int(2)], stride: [int(2n ** 60n)] }, "TORCH_PICKLE", /wrong type/],
    ["a negative size", { size: [int(-1)] }, "PICKLE_CALL", /bad size in dimension 0/],
    ["negative sizes whose product is positive", { size: [int(-2), int(-2)], stride: [int(2), int(1)] }, "PICKLE_CALL", /bad size in dimension 0/],
    ["a negative stride", { offset: int(3), size: [int(4)], stride: [int(-1)] }, "PICKLE_CALL", /bad stride in dimension 0/],
    ["a negative offset", { offset: int(-1), size: [int(1)] }, "PICKLE_CALL", /bad offset/],
    ["a fractional size", { size: [float(2.5)] }, "TORCH_PICKLE", /wrong type/],
    ["a whole-valued float size", { size: [float(4)] }, "TORCH_PICKLE", /wrong type/],
    ["an infinite size", { size: [float(Number.POSITIVE_INFINITY)] }, "TORCH_PICKLE", /wrong type/],
    ["a NaN size", { size: [float(Number.NaN)] }, "TORCH_PICKLE", /wrong type/],
    ["a size that is a string", { size: [str("4")] }, "TORCH_PICKLE", /wrong type/],
    ["a size that is None", { size: [Op.NONE] }, "TORCH_PICKLE", /wrong type/],
    ["a fractional offset", { offset: float(0.5) }, "PICKLE_CALL", /offset 0.5: bad offset/],
    ["a whole-valued float offset", { offset: float(0) }, "TORCH_PICKLE", /wrong type/],
    ["shape and stride of different lengths", { size: [int(2), int(2)], stride: [int(1)] }, "PICKLE_CALL", /differ in length/],
  ];

  test("every absurd or ill-typed tensor view is refused, and memory stays flat", { timeout: 30_000 }, async () => {
    await withinMemoryBudget(async () => {
      for (const [what, spec, code, message] of cases) {
        const path = await fileWith(await torchZip(tensorStatePickle(spec)));
        const cause = await refused(path, { code, message });
        assert.ok(cause instanceof FormatError, `${what}: ${String(cause)}`);
      }
    });
  });

  for (const [what, spec, code, message] of cases) {
    test(`a tensor with ${what} is refused`, async () => {
      await refused(await fileWith(await torchZip(tensorStatePickle(spec))), { code, message });
    });
  }
});

describe("files that are not PyTorch zip archives", () => {
  /** Deterministic noise (xorshift32), so a failure can be replayed. */
  function noise(length: number, seed: number): Uint8Array {
    const out = new Uint8Array(length);
    let x = seed;
    for (let i = 0; i < length; i++) {
      x ^= x << 13;
      x ^= x >>> 17;
      x ^= x << 5;
      out[i] = x & 0xff;
    }
    return out;
  }

  test("random bytes are refused as not a zip", async () => {
    for (const [length, seed] of [[22, 1], [4096, 2], [100_000, 3]] as const) {
      await refused(await fileWith(noise(length, seed)), { code: "ZIP_END" });
    }
  });

  test("an empty file and files shorter than an end record are refused as too short", async () => {
    await refused(await fileWith(new Uint8Array(0)), { code: "ZIP_TRUNCATED", message: /0 bytes is too short for a zip file/ });
    await refused(await fileWith(utf8("{}")), { code: "ZIP_TRUNCATED", message: /2 bytes is too short/ });
    await refused(await fileWith(new Uint8Array(21)), { code: "ZIP_TRUNCATED" });
  });

  test("a directory is refused as not a file", async () => {
    const path = join(dir, "a-directory.pt");
    await mkdir(path);
    await refused(path, { code: "EISDIR", message: /cannot open the file/ });
  });

  test("a missing file is refused, naming it", async () => {
    const path = join(dir, "no-such-file.pt");
    await refused(path, { code: "ENOENT", message: /cannot open the file/ });
  });

  test("a valid zip without <root>/data.pkl is refused", async () => {
    const sink = new MemorySink();
    const zip = new ZipWriter(sink);
    await zip.addEntry("model.safetensors", utf8("{}"));
    await zip.finish();
    await refused(await fileWith(sink.toBytes()), { code: "TORCH_LAYOUT", message: /no <root>\/data.pkl entry/ });
  });

  test("an archive with two data.pkl roots is refused", async () => {
    const sink = new MemorySink();
    const zip = new ZipWriter(sink);
    await zip.addEntry("a/data.pkl", pickle(Op.NONE));
    await zip.addEntry("b/data.pkl", pickle(Op.NONE));
    await zip.finish();
    await refused(await fileWith(sink.toBytes()), { code: "TORCH_LAYOUT", message: /more than one data.pkl/ });
  });

  test("an archive version this reader does not know is refused", async () => {
    for (const version of ["99\n", "x", "0"]) {
      const sink = new MemorySink();
      const zip = new ZipWriter(sink);
      await zip.addEntry("archive/data.pkl", pickle(Op.NONE));
      await zip.addEntry("archive/version", utf8(version));
      await zip.finish();
      await refused(await fileWith(sink.toBytes()), { code: "TORCH_VERSION", message: /archive version .* is not one this reader knows/ });
    }
  });

  test("an unknown byte order and an oversized version entry are refused", async () => {
    const sink = new MemorySink();
    const zip = new ZipWriter(sink);
    await zip.addEntry("archive/data.pkl", pickle(Op.NONE));
    await zip.addEntry("archive/byteorder", utf8("middle"));
    await zip.finish();
    await refused(await fileWith(sink.toBytes()), { code: "TORCH_LAYOUT", message: /unknown byte order "middle"/ });

    const sink2 = new MemorySink();
    const zip2 = new ZipWriter(sink2);
    await zip2.addEntry("archive/data.pkl", pickle(Op.NONE));
    await zip2.addEntry("archive/version", new Uint8Array(1 << 20).fill(0x33));
    await zip2.finish();
    await refused(await fileWith(sink2.toBytes()), { code: "TORCH_LAYOUT", message: /archive\/version is 1048576 bytes/ });
  });
});

describe("the dumper refuses bad states and never damages the target", () => {
  class Optimizer {
    lr = 0.1;
  }
  const badStates: [string, StateValue, RegExp][] = [
    ["a function", { hook: (() => 1) as unknown as StateValue }, /a function cannot be saved/],
    ["a symbol", { tag: Symbol("x") as unknown as StateValue }, /a symbol cannot be saved/],
    ["undefined", { missing: undefined as unknown as StateValue }, /state\.missing: undefined cannot be saved in a state/],
    ["a Float32Array not wrapped in a Tensor", { weight: new Float32Array(4) as unknown as StateValue }, /a Float32Array cannot be saved as it is; wrap it with Tensor.from/],
    ["a DataView", { raw: new DataView(new ArrayBuffer(4)) as unknown as StateValue }, /a DataView cannot be saved as it is/],
    ["a class instance", { optimizer: new Optimizer() as unknown as StateValue }, /state\.optimizer: an Optimizer cannot be saved/],
    ["a Set", { ids: new Set([1]) as unknown as StateValue }, /a Set cannot be saved/],
  ];

  for (const [what, state, message] of badStates) {
    test(`a state holding ${what} is refused with a TensorDumpError and leaves no file`, async () => {
      const target = join(dir, `bad-${++fileCounter}.pt`);
      const before = (await readdir(dir)).sort();
      await assert.rejects(new TorchTensorDumper().dump(state, target), (error: unknown) => {
        assert.ok(error instanceof TensorDumpError, `expected a TensorDumpError, got ${String(error)}`);
        assert.equal(error.path, target);
        assert.equal(error.code, "TENSOR_DUMP");
        assert.ok(error.cause instanceof FormatError);
        assert.equal(error.cause.code, "PICKLE_UNSUPPORTED");
        assert.match(error.message, message);
        return true;
      });
      assert.deepEqual((await readdir(dir)).sort(), before, "no file and no partial file appears");
    });
  }

  test("a failed dump over an existing file leaves that file byte for byte as it was", async () => {
    const target = join(dir, `existing-${++fileCounter}.pt`);
    await new TorchTensorDumper().dump(smallState(), target);
    const original = await readFile(target);
    const entries = (await readdir(dir)).sort();
    for (const [, state] of badStates) {
      await assert.rejects(new TorchTensorDumper().dump({ ...smallState(), bad: state }, target), TensorDumpError);
    }
    assert.ok((await readFile(target)).equals(original));
    assert.deepEqual((await readdir(dir)).sort(), entries);
    const loaded = (await loader.load(target)) as { w: Tensor };
    assert.deepEqual([...loaded.w.data], [1, 2, 3, 4, 5, 6]);
  });

  test("a dump that fails halfway through writing keeps the old file whole and leaves no partial file", async () => {
    const target = join(dir, `halfway-${++fileCounter}.pt`);
    await new TorchTensorDumper().dump(smallState(), target);
    const original = await readFile(target);

    let partialSizeAtFailure = -1;
    /** Writes to disk like LocalFileSystem, then runs out of space after 6 MiB. */
    class DiskFullFileSystem extends LocalFileSystem {
      override async createWriter(path: string): Promise<FileWriter> {
        const writer = await super.createWriter(path);
        let written = 0;
        return {
          write: async (chunk: Uint8Array) => {
            if (written + chunk.byteLength > 6 << 20) {
              const partial = (await readdir(dir)).find((name) => name.endsWith(".partial"));
              partialSizeAtFailure = partial === undefined ? -1 : (await stat(join(dir, partial))).size;
              throw Object.assign(new Error("no space left on device (simulated)"), { code: "ENOSPC" });
            }
            written += chunk.byteLength;
            await writer.write(chunk);
          },
          close: () => writer.close(),
          abort: () => writer.abort(),
        };
      }
    }

    const big = { a: Tensor.zeros([5 << 18]), b: Tensor.zeros([5 << 18]) }; // two 5 MiB storages
    const before = (await readdir(dir)).sort();
    await assert.rejects(new TorchTensorDumper({ fileSystem: new DiskFullFileSystem() }).dump(big, target), (error: unknown) => {
      assert.ok(error instanceof TensorDumpError);
      assert.equal(error.path, target);
      assert.match(error.message, /no space left on device/);
      return true;
    });
    assert.ok(partialSizeAtFailure >= 5 << 20, `the failure came after real bytes reached the disk (${partialSizeAtFailure})`);
    assert.ok((await readFile(target)).equals(original), "the old file is untouched");
    assert.deepEqual((await readdir(dir)).sort(), before, "the partial file is removed");
  });

  test("a dump into a directory that does not exist is refused with a TensorDumpError", async () => {
    const target = join(dir, "missing-dir", "model.pt");
    await assert.rejects(new TorchTensorDumper().dump(smallState(), target), (error: unknown) => {
      assert.ok(error instanceof TensorDumpError);
      assert.equal(error.path, target);
      assert.match(error.message, /cannot create the file/);
      assert.equal((error.cause as { code?: string }).code, "ENOENT");
      return true;
    });
  });
});

describe("legacy torch.save files (before PyTorch 1.6)", () => {
  const MAGIC = pickle(Op.LONG1, 10, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19); // 0x1950a86a20f9469cfc6c
  const PROTOCOL_VERSION = pickle(Op.BININT2, ...u16(1001));
  const SYS_INFO = pickle(Op.EMPTY_DICT, Op.MARK, str("protocol_version"), Op.BININT2, ...u16(1001), str("little_endian"), Op.NEWTRUE, Op.SETITEMS);

  interface LegacyTensor {
    key?: string;
    storageType?: string;
    numel?: Part;
    /** The persistent id's last field: None, or (view key, offset, numel). */
    view?: Part[];
    offset?: Part;
    size?: number;
  }

  /** `_rebuild_tensor_v2` over a legacy persistent id `('storage', type, key, 'cpu', numel, view)`. */
  function legacyTensor(spec: LegacyTensor = {}): Part[] {
    const { key = "94512", storageType = "FloatStorage", numel = int(2), view = [Op.NONE], offset = int(0), size = 2 } = spec;
    return [
      global("torch._utils", "_rebuild_tensor_v2"), Op.MARK,
      Op.MARK, str("storage"), global("torch", storageType), str(key), str("cpu"), numel, ...view, Op.TUPLE, Op.BINPERSID,
      offset, int(size), Op.TUPLE1, int(1), Op.TUPLE1, Op.NEWFALSE, global("collections", "OrderedDict"), Op.EMPTY_TUPLE, Op.REDUCE,
      Op.TUPLE, Op.REDUCE,
    ];
  }

  /** A storage record: the element count as an int64, then the bytes. */
  function record(count: bigint, data: Uint8Array): Uint8Array {
    return bytesOf(u64(count), data);
  }

  interface LegacyParts {
    magic?: Uint8Array;
    protocolVersion?: Uint8Array;
    sysInfo?: Uint8Array;
    object?: Uint8Array;
    keys?: Uint8Array;
    storages?: Uint8Array;
  }

  /** Five pickles (magic, protocol version, sys info, state, storage keys), then the storage records. By default `{"w": [1.5, 2.5]}`. */
  function legacyFile(parts: LegacyParts = {}): Uint8Array {
    return bytesOf(
      parts.magic ?? MAGIC,
      parts.protocolVersion ?? PROTOCOL_VERSION,
      parts.sysInfo ?? SYS_INFO,
      parts.object ?? pickle(Op.EMPTY_DICT, str("w"), ...legacyTensor(), Op.SETITEM),
      parts.keys ?? pickle(Op.EMPTY_LIST, str("94512"), Op.APPEND),
      parts.storages ?? record(2n, float32Bytes(1.5, 2.5)),
    );
  }

  test("a legacy file built byte by byte loads", async () => {
    const state = (await loader.load(await fileWith(legacyFile()))) as StateDict;
    assert.deepEqual(Object.keys(state), ["w"]);
    assert.deepEqual(Array.from((state.w as Tensor).data as Float32Array), [1.5, 2.5]);
  });

  test("tensors over one storage, and over a view of it, share that storage", async () => {
    const object = pickle(
      Op.EMPTY_DICT, Op.MARK,
      str("all"), ...legacyTensor({ key: "7", numel: int(4), size: 4 }),
      str("tail"), ...legacyTensor({ key: "7", numel: int(4), offset: int(2), size: 2 }),
      str("view"), ...legacyTensor({ key: "7", numel: int(4), view: [str("8"), int(1), int(3), Op.TUPLE3], offset: int(1), size: 2 }),
      Op.SETITEMS,
    );
    const path = await fileWith(legacyFile({ object, keys: pickle(Op.EMPTY_LIST, str("7"), Op.APPEND), storages: record(4n, float32Bytes(1, 2, 3, 4)) }));
    const state = (await loader.load(path)) as Record<string, Tensor>;
    assert.equal(state.tail!.storage, state.all!.storage);
    assert.equal(state.view!.storage, state.all!.storage);
    assert.deepEqual(Array.from(state.tail!.data as Float32Array), [3, 4]);
    assert.deepEqual(Array.from(state.view!.data as Float32Array), [3, 4], "the view starts at element 1, the tensor 1 further");
  });

  const cases: [string, LegacyParts, string, RegExp][] = [
    ["a bad magic number", { magic: pickle(int(12345)) }, "TORCH_LEGACY_HEADER", /bad magic number 12345: a legacy torch\.save file starts with 0x1950a86a20f9469cfc6c/],
    ["a magic number that is not a pickle", { magic: bytesOf(Op.PROTO, 2, 0xff) }, "PICKLE_OPCODE", /the magic number \(the pickle at byte 0\): opcode 0xff/],
    ["another protocol version", { protocolVersion: pickle(Op.BININT2, ...u16(1000)) }, "TORCH_LEGACY_HEADER", /protocol version 1000 is not 1001/],
    ["system info that is not a dict", { sysInfo: pickle(Op.EMPTY_LIST) }, "TORCH_LEGACY_HEADER", /the system info is not a dict with protocol_version 1001/],
    ["a global in the header", { sysInfo: pickle(global("os", "system")) }, "TORCH_LEGACY_HEADER", /names the global os\.system/],
    ["a global not on the allow-list in the state", { object: pickle(global("os", "system"), str("id"), Op.TUPLE1, Op.REDUCE) }, "PICKLE_GLOBAL", /the state \(the pickle at byte \d+\): refusing to load the global os\.system/],
    ["a file that ends inside the state's pickle", { object: pickle(Op.EMPTY_DICT).subarray(0, 3), keys: new Uint8Array(0), storages: new Uint8Array(0) }, "TORCH_LEGACY_TRUNCATED", /truncated: the file ends inside its pickles \(the state/],
    ["a string claiming 1 GiB in a small file", { sysInfo: bytesOf(Op.PROTO, 2, Op.BINUNICODE, u32(1 << 30)) }, "TORCH_LEGACY_TRUNCATED", /truncated: the file ends inside its pickles/],
    ["a truncated storage", { storages: record(2n, float32Bytes(1.5)) }, "TORCH_LEGACY_TRUNCATED", /truncated: storage "94512" \(2 float32 elements\) ends at byte \d+ but the file has \d+ bytes/],
    ["a storage record missing", { storages: new Uint8Array(0) }, "TORCH_LEGACY_TRUNCATED", /truncated: storage "94512"/],
    ["an absurd storage size", { object: pickle(Op.EMPTY_DICT, str("w"), ...legacyTensor({ numel: int(2n ** 40n) }), Op.SETITEM) }, "TORCH_LEGACY_STORAGE", /storage "94512" claims 1099511627776 float32 elements \(4398046511104 bytes\) but the whole file has \d+ bytes/],
    ["a storage size beyond 2^53", { object: pickle(Op.EMPTY_DICT, str("w"), ...legacyTensor({ numel: int(2n ** 60n) }), Op.SETITEM) }, "TORCH_PERSID", /fields of the wrong type/],
    ["a record whose count differs from the state's", { storages: record(3n, float32Bytes(1.5, 2.5)) }, "TORCH_LEGACY_STORAGE", /storage "94512" at byte \d+ records 3 elements but the state uses it as 2 float32 elements/],
    ["a negative record count", { storages: record(2n ** 64n - 1n, float32Bytes(1.5, 2.5)) }, "TORCH_LEGACY_STORAGE", /records -1 elements/],
    ["bytes after the last storage", { storages: bytesOf(record(2n, float32Bytes(1.5, 2.5)), [0, 0, 0, 0]) }, "TORCH_LEGACY_LAYOUT", /4 bytes follow the last storage/],
    ["a key list naming a storage the state does not use", { keys: pickle(Op.EMPTY_LIST, Op.MARK, str("94512"), str("1"), Op.APPENDS) }, "TORCH_LEGACY_STORAGE", /names storage "1", which the state does not use/],
    ["a key list without a storage the state uses", { keys: pickle(Op.EMPTY_LIST), storages: new Uint8Array(0) }, "TORCH_LEGACY_STORAGE", /storage "94512" is used by the state but missing from the key list/],
    ["a key list naming a storage twice", { keys: pickle(Op.EMPTY_LIST, Op.MARK, str("94512"), str("94512"), Op.APPENDS) }, "TORCH_LEGACY_STORAGE", /names storage "94512" twice/],
    ["a key list that is not a list of strings", { keys: pickle(Op.EMPTY_LIST, int(1), Op.APPEND) }, "TORCH_LEGACY_HEADER", /the storage key list is not a list of strings/],
    ["a storage used with two sizes", { object: pickle(Op.EMPTY_DICT, Op.MARK, str("a"), ...legacyTensor(), str("b"), ...legacyTensor({ numel: int(1), size: 1 }), Op.SETITEMS) }, "TORCH_STORAGE", /storage "94512" is used as both 2 float32 and 1 float32 elements/],
    ["a view beyond its storage", { object: pickle(Op.EMPTY_DICT, str("w"), ...legacyTensor({ view: [str("v"), int(1), int(2), Op.TUPLE3] }), Op.SETITEM) }, "TORCH_LEGACY_STORAGE", /the view "v" of storage "94512" covers elements 1 to 3 of 2/],
    ["a tensor beyond its view", { object: pickle(Op.EMPTY_DICT, str("w"), ...legacyTensor({ view: [str("v"), int(0), int(1), Op.TUPLE3] }), Op.SETITEM) }, "PICKLE_CALL", /reaches element 1 of a storage of 1 elements/],
    ["a pickled nn.Module class", { object: pickle(Op.MARK, str("module"), Op.NONE, Op.NONE, Op.NONE, Op.TUPLE, Op.BINPERSID) }, "TORCH_PERSID", /a pickled nn\.Module/],
  ];

  for (const [what, parts, code, message] of cases) {
    test(`${what} is refused, naming what is wrong`, async () => {
      await refused(await fileWith(legacyFile(parts)), { code, message });
    });
  }

  test("every malformed legacy file is refused and memory stays flat", async () => {
    await withinMemoryBudget(async () => {
      for (const [, parts, code] of cases) await refused(await fileWith(legacyFile(parts)), { code });
    });
  });

  test("a tar archive (the earliest PyTorch format) is refused by name", async () => {
    const tar = new Uint8Array(1024);
    tar.set(utf8("storages"), 0);
    tar.set(utf8("ustar"), 257);
    await refused(await fileWith(tar), { code: "TORCH_LEGACY_TAR", message: /tar-based format of the earliest PyTorch versions is not supported/ });
  });
});
