import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { mkdtemp, readdir, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { FormatError } from "../src/errors.js";
import { MemoryReader, MemorySink } from "../src/formats/byte-io.js";
import { isSafeAsciiName } from "../src/formats/zip/zip-directory.js";
import { checkEntryName } from "../src/formats/zip/zip-entry-names.js";
import { ZipReader } from "../src/formats/zip/zip-reader.js";
import { ZipWriter, type ZipWriterOptions } from "../src/formats/zip/zip-writer.js";
import { writeCentralHeader, writePlainCentralHeader } from "../src/formats/zip/zip-records.js";
import { LocalFileSystem } from "../src/fs/local-file-system.js";

type Entries = [name: string, data: Uint8Array | Uint8Array[]][];

async function writeZip(entries: Entries, options: ZipWriterOptions = {}): Promise<Uint8Array> {
  const sink = new MemorySink();
  const zip = new ZipWriter(sink, options);
  for (const [name, data] of entries) await zip.addEntry(name, data);
  await zip.finish();
  return sink.toBytes();
}

async function openZip(bytes: Uint8Array): Promise<ZipReader> {
  return ZipReader.open(new MemoryReader(bytes));
}

function concat(data: Uint8Array | Uint8Array[]): Uint8Array {
  return data instanceof Uint8Array ? data : Buffer.concat(data);
}

/** Compares contents only: the reader may hand back a Buffer where a Uint8Array was written. */
function assertBytes(actual: Uint8Array, expected: Uint8Array, message?: string): void {
  assert.deepEqual(Uint8Array.from(actual), Uint8Array.from(expected), message);
}

function rejectsWith(code: string, message: RegExp): (error: unknown) => boolean {
  return (error) => {
    assert.ok(error instanceof FormatError, `expected a FormatError, got ${String(error)}`);
    assert.equal(error.code, code);
    assert.match(error.message, message);
    return true;
  };
}

const text = (s: string): Uint8Array => new TextEncoder().encode(s);

const sample: Entries = [
  ["archive/data.pkl", text("pickle bytes")],
  ["archive/byteorder", text("little")],
  ["archive/data/0", Uint8Array.from({ length: 1000 }, (_, i) => i & 0xff)],
  ["archive/data/1", [text("in "), text("three "), text("chunks")]],
  ["archive/data/ünïcode name", text("named in UTF-8")],
  ["archive/version", text("3\n")],
];

describe("ZipWriter and ZipReader", () => {
  test("every entry written is read back with its name, size and bytes, in order", async () => {
    const zip = await openZip(await writeZip(sample));
    assert.deepEqual([...zip.entries.keys()], sample.map(([name]) => name));
    for (const [name, data] of sample) {
      const expected = concat(data);
      assert.equal(zip.entry(name).size, expected.length, name);
      assertBytes(await zip.read(name), expected, name);
    }
  });

  test("the same entries always give the same bytes, so identical states make identical files", async () => {
    assert.deepEqual(await writeZip(sample), await writeZip(sample));
  });

  test("entry data starts at a multiple of 64 whatever the name length", async () => {
    // Name lengths 1..130 hit every padding case, including the ones under the 4-byte field header.
    const entries: Entries = [];
    for (let length = 1; length <= 130; length++) entries.push([`${"n".repeat(length - 1)}${length % 10}`, randomBytes(length % 7)]);
    const bytes = await writeZip(entries);
    const zip = await openZip(bytes);
    for (const [name, data] of entries) {
      const entry = zip.entry(name);
      const offset = await zip.dataOffset(entry);
      assert.equal(offset % 64, 0, `${name.length}-byte name: data at ${offset}`);
      assertBytes(await zip.read(name), concat(data));
    }
  });

  test("another alignment is honoured, and alignment 1 writes no padding", async () => {
    for (const alignment of [1, 8, 4096]) {
      const zip = await openZip(await writeZip(sample, { alignment }));
      for (const [name, data] of sample) {
        assert.equal((await zip.dataOffset(zip.entry(name))) % alignment, 0, `${name} at alignment ${alignment}`);
        assertBytes(await zip.read(name), concat(data));
      }
    }
    const unpadded = await writeZip([["a", text("x")]], { alignment: 1 });
    const zip = await openZip(unpadded);
    assert.equal(await zip.dataOffset(zip.entry("a")), 30 + 1, "header and name only");
  });

  test("the padding is a well-formed extra field that a strict reader can skip", async () => {
    const bytes = Buffer.from(await writeZip([["archive/data/0", text("abc")]]));
    const nameLength = bytes.readUInt16LE(26);
    const extraLength = bytes.readUInt16LE(28);
    const extra = 30 + nameLength;
    assert.equal(bytes.readUInt16LE(extra), 0x4246, "PyTorch's 'FB' padding id");
    assert.equal(bytes.readUInt16LE(extra + 2), extraLength - 4);
  });

  test("a zip written with forced zip64 records reads back the same", async () => {
    const bytes = Buffer.from(await writeZip(sample, { forceZip64: true }));
    const end = bytes.length - 22;
    assert.equal(bytes.readUInt32LE(end), 0x06054b50);
    assert.equal(bytes.readUInt16LE(end + 10), 0xffff, "the entry count is saturated");
    assert.equal(bytes.readUInt32LE(end + 12), 0xffffffff, "the directory size is saturated");
    assert.equal(bytes.readUInt32LE(end + 16), 0xffffffff, "the directory offset is saturated");
    assert.equal(bytes.readUInt32LE(end - 20), 0x07064b50, "a zip64 locator precedes the end record");

    const zip = await openZip(bytes);
    assert.deepEqual([...zip.entries.keys()], sample.map(([name]) => name));
    for (const [name, data] of sample) {
      assertBytes(await zip.read(name), concat(data), name);
      assert.equal((await zip.dataOffset(zip.entry(name))) % 64, 0);
    }
  });

  test("zero-length entries are written and read back, also with zip64", async () => {
    for (const forceZip64 of [false, true]) {
      const zip = await openZip(await writeZip([["empty", new Uint8Array(0)], ["no chunks", []], ["after", text("x")]], { forceZip64 }));
      assert.equal(zip.entry("empty").size, 0);
      assert.equal(zip.entry("empty").crc, 0);
      assert.equal((await zip.read("empty")).length, 0);
      assert.equal((await zip.read("no chunks")).length, 0);
      assertBytes(await zip.read("after"), text("x"));
    }
  });

  test("a zip with no entries is read as empty", async () => {
    const bytes = await writeZip([]);
    assert.equal(bytes.length, 22);
    assert.equal((await openZip(bytes)).entries.size, 0);
  });

  test("a flipped byte in entry data fails the CRC-32 check, unless the check is turned off", async () => {
    const bytes = await writeZip(sample);
    const zip = await openZip(bytes);
    const offset = await zip.dataOffset(zip.entry("archive/data/0"));
    bytes[offset + 500]! ^= 0x01;
    const damaged = await openZip(bytes);
    await assert.rejects(damaged.read("archive/data/0"), rejectsWith("ZIP_CRC", /entry "archive\/data\/0" fails its CRC-32 check/));
    const unchecked = await damaged.read("archive/data/0", { verifyCrc: false });
    assert.equal(unchecked[500], (500 & 0xff) ^ 0x01);
    assertBytes(await damaged.read("archive/data.pkl"), text("pickle bytes"), "other entries are still fine");
  });

  test("reading into a target buffer fills it in place and returns a view of it", async () => {
    const zip = await openZip(await writeZip(sample));
    const target = new Uint8Array(2000).fill(0xee);
    const data = await zip.read("archive/data/0", { target });
    assert.equal(data.buffer, target.buffer);
    assert.equal(data.byteOffset, target.byteOffset);
    assert.equal(data.length, 1000);
    assertBytes(data, concat(sample[2]![1]));
    assert.equal(target[1000], 0xee, "nothing past the entry is touched");
  });

  test("a target buffer smaller than the entry is refused before reading", async () => {
    const zip = await openZip(await writeZip(sample));
    await assert.rejects(zip.read("archive/data/0", { target: new Uint8Array(999) }), rejectsWith("ZIP_BOUNDS", /has 1000 bytes, more than the 999 given/));
  });

  test("asking for an entry that is not there names it", async () => {
    const zip = await openZip(await writeZip(sample));
    await assert.rejects(zip.read("archive/data/9"), rejectsWith("ZIP_MISSING", /no entry "archive\/data\/9"/));
  });

  test("the writer refuses an entry name written twice", async () => {
    const zip = new ZipWriter(new MemorySink());
    await zip.addEntry("a", text("1"));
    await assert.rejects(zip.addEntry("a", text("2")), rejectsWith("ZIP_NAME", /"a" written twice/));
  });

  test("the writer refuses names that could escape a directory when extracted", async () => {
    const zip = new ZipWriter(new MemorySink());
    for (const name of ["", "/etc/passwd", "../x", "a/../../x", "a/./b", "a\\b", "a\0b"]) {
      await assert.rejects(zip.addEntry(name, text("x")), rejectsWith("ZIP_NAME", /unsafe zip entry name/), JSON.stringify(name));
    }
  });
});

describe("numbered entries and the file's CRC-32", () => {
  test("addNumbered writes prefix + index names that read back like any others, the same bytes as add", async () => {
    const data = (i: number): Uint8Array => Uint8Array.from({ length: 64 + (i % 3) * 64 }, (_, k) => (i * 7 + k) & 0xff);
    const numbered = new MemorySink();
    const zip = new ZipWriter(numbered);
    zip.add("archive/data.pkl", text("pickle"));
    for (let i = 0; i < 12; i++) await zip.addNumbered("archive/data/", i, data(i));
    await zip.finish();
    const named = await writeZip([["archive/data.pkl", text("pickle")], ...Array.from({ length: 12 }, (_, i): Entries[number] => [`archive/data/${i}`, data(i)])]);
    assertBytes(numbered.toBytes(), named, "byte for byte what add() writes");
    const reader = await openZip(numbered.toBytes());
    assertBytes(await reader.read("archive/data/10"), data(10));
  });

  test("a numbered name and the same name given as a string are one name, in either order", async () => {
    const first = new ZipWriter(new MemorySink());
    first.add("d/1", text("x"));
    first.addNumbered("d/", 0, text("0"));
    assert.throws(() => first.addNumbered("d/", 1, text("1")), rejectsWith("ZIP_NAME", /"d\/1" written twice/));
    const second = new ZipWriter(new MemorySink());
    second.addNumbered("d/", 0, text("0"));
    second.addNumbered("d/", 1, text("1"));
    assert.throws(() => second.add("d/1", text("x")), rejectsWith("ZIP_NAME", /"d\/1" written twice/));
    second.add("d/01", text("not the number 1"));
    second.add("d/2", text("not yet numbered"));
  });

  test("numbered entries come in order under one safe prefix", () => {
    const zip = new ZipWriter(new MemorySink());
    assert.throws(() => zip.addNumbered("../", 0, text("x")), rejectsWith("ZIP_NAME", /unsafe zip entry name/));
    zip.addNumbered("d/", 0, text("0"));
    assert.throws(() => zip.addNumbered("d/", 2, text("2")), rejectsWith("ZIP_NAME", /expected "d\/1", got "d\/2"/));
    assert.throws(() => zip.addNumbered("e/", 1, text("1")), rejectsWith("ZIP_NAME", /one prefix \("d\/"\), not also under "e\/"/));
  });

  test("the digest is the CRC-32 of the whole file, with thousands of same-sized and odd-sized small entries across staging buffers", async () => {
    const { crc32 } = await import("node:zlib");
    const sink = new MemorySink();
    const zip = new ZipWriter(sink);
    // 4 KiB entries (their CRCs combined into the file's), a few odd sizes among them (taken
    // again from the staged bytes), and one large entry (sent as it is): over 3 MiB in all.
    for (let i = 0; i < 900; i++) {
      const size = i % 97 === 0 ? 1 + i : 4096;
      await zip.addNumbered("archive/data/", i, Uint8Array.from({ length: size }, (_, k) => (i + k * 31) & 0xff));
    }
    await zip.addEntry("big", [randomBytes(40 << 10), randomBytes(3)]);
    await zip.finish();
    const bytes = sink.toBytes();
    assert.deepEqual(zip.digest, { size: bytes.byteLength, crc32: crc32(bytes) });
    const reader = await openZip(bytes);
    for (const name of reader.entries.keys()) await reader.read(name); // each entry's own CRC checked
  });

  test("staging buffers go to the next archive only once written: archives written at once to slow sinks all read back whole", async () => {
    // Each sink takes its bytes only as its write resolves, as a sink may (ByteSink: it keeps the
    // chunk until then): a buffer handed to another archive before that would show in the bytes.
    const slowSink = (): { sink: { write(chunk: Uint8Array): Promise<void> }; bytes: () => Buffer } => {
      const taken: Buffer[] = [];
      return {
        sink: {
          write: async (chunk) => {
            await new Promise((resolve) => setTimeout(resolve, 1));
            taken.push(Buffer.from(chunk));
          },
        },
        bytes: () => Buffer.concat(taken),
      };
    };
    const entry = (archive: number, i: number): Uint8Array => Uint8Array.from({ length: 4096 }, (_, k) => (archive * 7 + i * 13 + k) & 0xff);
    const countOf = (archive: number): number => 200 + 500 * archive;
    for (let round = 0; round < 2; round++) {
      const sinks = [slowSink(), slowSink(), slowSink(), slowSink()];
      await Promise.all(
        sinks.map(async ({ sink }, archive) => {
          const zip = new ZipWriter(sink);
          // Over one to five staging buffers: buffers are retired and taken again, and archives
          // finish, while others write.
          for (let i = 0; i < countOf(archive); i++) {
            const waiting = zip.addNumbered("archive/data/", i, entry(archive, i));
            if (waiting !== undefined) await waiting;
          }
          await zip.finish();
        }),
      );
      for (const [archive, { bytes }] of sinks.entries()) {
        const reader = await openZip(bytes());
        for (let i = 0; i < countOf(archive); i++) assertBytes(await reader.read(`archive/data/${i}`), entry(archive, i), `round ${round}, archive ${archive}, entry ${i}`);
      }
    }
  });
});

describe("the reader's directory: numbered names by number, others by name", () => {
  test("each name finds its own entry: numbered under a prefix, with leading zeros, past the count, non-ASCII, without a slash", async () => {
    // Seven entries: "a/12" is past the count, so it is filed by name like "a/07" and "a/x".
    const names = ["a/0", "a/1", "a/07", "a/12", "5", "b/ü/3", "a/x"];
    const reader = await openZip(await writeZip(names.map((name): Entries[number] => [name, text(`bytes of ${name}`)])));
    for (const name of names) {
      assertBytes(await reader.read(name), text(`bytes of ${name}`), name);
      assert.equal(reader.find(name)?.name, name);
    }
    for (const missing of ["a/7", "a/00", "a/01", "a/2", "a/", "b/3", "b/ü/03", "05", "a/0/"]) assert.equal(reader.find(missing), undefined, missing);
    assert.equal(reader.numberedEntry("a/", 1)?.name, "a/1");
    assert.equal(reader.numberedEntry("b/ü/", 3)?.name, "b/ü/3");
    assert.equal(reader.numberedEntry("", 5)?.name, "5");
    assert.equal(reader.numberedEntry("a/", 7), undefined);
    assert.deepEqual([...reader.unnumberedNames()].sort(), ["a/07", "a/12", "a/x"]);
    assert.equal(reader.entryCount, 7);
    assert.deepEqual([...reader.entries.keys()], names, "every entry, in directory order");
  });

  test("names are checked as bytes exactly as checkEntryName checks strings", () => {
    // Every name of up to 4 characters from an alphabet of the characters that matter.
    const alphabet = ["a", ".", "/", "\\", "\0", "7"];
    let names = [""];
    const all = [""];
    for (let length = 1; length <= 4; length++) {
      names = names.flatMap((name) => alphabet.map((c) => name + c));
      all.push(...names);
    }
    for (const name of all) {
      const bytes = Buffer.from(name, "latin1");
      let safe = true;
      try {
        checkEntryName(name);
      } catch {
        safe = false;
      }
      assert.equal(isSafeAsciiName(bytes, 0, bytes.length), safe, JSON.stringify(name));
    }
  });
});

describe("zip files on the local disk", () => {
  let dir = "";
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), "ckpt-zip-"));
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  test("an entry larger than the write buffer goes through LocalFileSystem intact and aligned", async () => {
    const fs = new LocalFileSystem();
    const path = join(dir, "big.zip");
    const big = randomBytes(9 << 20);
    const small = randomBytes(1000);

    const writer = await fs.createWriter(path);
    const zip = new ZipWriter(writer);
    await zip.addEntry("archive/small-before", small);
    await zip.addEntry("archive/big", big);
    await zip.addEntry("archive/big-in-chunks", [big.subarray(0, 3 << 20), big.subarray(3 << 20)]);
    await zip.addEntry("archive/small-after", small);
    await zip.finish();
    await writer.close();
    assert.deepEqual(await readdir(dir), ["big.zip"], "no partial file is left beside it");

    const reader = await fs.openReader(path);
    try {
      const read = await ZipReader.open(reader);
      for (const name of ["archive/small-before", "archive/big", "archive/big-in-chunks", "archive/small-after"]) {
        assert.equal((await read.dataOffset(read.entry(name))) % 64, 0, name);
      }
      assert.equal(Buffer.compare(await read.read("archive/big"), big), 0, "archive/big");
      assert.equal(Buffer.compare(await read.read("archive/big-in-chunks"), big), 0, "archive/big-in-chunks");
      assert.equal(Buffer.compare(await read.read("archive/small-before"), small), 0, "archive/small-before");
      assert.equal(Buffer.compare(await read.read("archive/small-after"), small), 0, "archive/small-after");
      const target = Buffer.alloc(big.length);
      await read.read("archive/big", { target });
      assert.ok(target.equals(big));
    } finally {
      await reader.close();
    }
  });

  test("a zip that is aborted instead of closed leaves nothing at its path", async () => {
    const fs = new LocalFileSystem();
    const path = join(dir, "aborted.zip");
    const writer = await fs.createWriter(path);
    const zip = new ZipWriter(writer);
    await zip.addEntry("a", randomBytes(5 << 20));
    await writer.abort();
    assert.equal(await fs.exists(path), false);
    assert.ok(!(await readdir(dir)).some((name) => name.includes("aborted")), "the partial file is removed too");
  });
});

test("a central header copied from its template is the one written field by field", () => {
  const cases = [
    [0, 0, 0, 0],
    [14, 0xffffffff, 4096, 64],
    [300, 0x80000001, 0xfffffffe, 0xfffffffe],
    [65535, 0x12345678, 1, 0x7fffffff],
  ];
  for (const [nameLength, crc, size, offset] of cases) {
    // Garbage around and under the header: the template must overwrite every byte of it.
    const plain = Buffer.alloc(60, 0xa5);
    const general = Buffer.alloc(60, 0xa5);
    writePlainCentralHeader(plain, 7, nameLength!, crc!, size!, offset!);
    writeCentralHeader(general, 7, nameLength!, crc!, size!, offset!, false, false);
    assert.equal(plain.toString("hex"), general.toString("hex"), `name ${nameLength}, crc ${crc}, size ${size}, offset ${offset}`);
  }
});
