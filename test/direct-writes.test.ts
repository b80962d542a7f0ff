import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { constants, readdirSync, readFileSync, readlinkSync } from "node:fs";
import { mkdir, open, readFile, readdir, rm, writeFile, type FileHandle } from "node:fs/promises";
import { join } from "node:path";
import { test } from "node:test";
import { LocalFileSystem, SafetensorsDumper, SafetensorsLoader, TorchTensorDumper, TorchTensorLoader, Tensor } from "../src/index.js";
import { seededRandom } from "../torture/plain-values.js";
import { keptDirectBlocks } from "../src/fs/direct-writes.js";
import { useTempDirs } from "./helpers/checkpoint-helpers.js";

const tempDir = useTempDirs("direct-writes");

/** How many of this process's descriptors open a file under `dir` with O_DIRECT (from /proc/self/fdinfo). */
function directDescriptorsUnder(dir: string): number {
  let count = 0;
  for (const fd of readdirSync("/proc/self/fd")) {
    let target: string;
    try {
      target = readlinkSync(`/proc/self/fd/${fd}`);
    } catch {
      continue; // closed meanwhile
    }
    if (!target.startsWith(`${dir}/`)) continue;
    const flags = /^flags:\s+([0-7]+)$/m.exec(readFileSync(`/proc/self/fdinfo/${fd}`, "utf8"));
    // fdinfo shows the open flags in octal; O_DIRECT's bit differs between architectures.
    if (flags !== null && (Number.parseInt(flags[1]!, 8) & constants.O_DIRECT) !== 0) count++;
  }
  return count;
}

/** Bytes of `path` in the page cache (util-linux's fincore): direct writes leave none behind. */
function residentBytes(path: string): number {
  return Number(execFileSync("fincore", ["--bytes", "--noheadings", "--output", "RES", path], { encoding: "utf8" }).trim());
}

/** Mounts a real file system of `type` on a new directory (root; CI runs as root), unmounted after the test. */
async function mounted(t: { after(fn: () => void): void }, type: string, options?: string): Promise<string> {
  const dir = join(await tempDir(), type);
  await mkdir(dir);
  execFileSync("mount", ["-t", type, ...(options === undefined ? [] : ["-o", options]), type, dir]);
  t.after(() => execFileSync("umount", [dir]));
  return dir;
}

/** How many blocks of `size` bytes are kept for the next file. */
function keptOf(size: number): number {
  return keptDirectBlocks().filter((block) => block.byteLength === size).length;
}

/** Writes `data` through a writer in chunks of seeded random sizes (some empty, some past a block). */
async function writeInChunks(fileSystem: LocalFileSystem, path: string, data: Uint8Array, seed: number, during?: () => void): Promise<void> {
  const random = seededRandom(seed);
  const writer = await fileSystem.createWriter(path);
  for (let done = 0; done < data.byteLength; ) {
    const pick = random();
    const size = pick < 0.1 ? 0 : pick < 0.6 ? Math.floor(random() * 300) : pick < 0.9 ? Math.floor(random() * 9000) : Math.floor(random() * 40_000);
    const take = Math.min(size, data.byteLength - done);
    await writer.write(data.subarray(done, done + take));
    done += take;
    during?.();
  }
  await writer.close();
}

test("files written around the page cache hold exactly the bytes given, for every size near a block's edges and any chunking", async () => {
  const dir = await tempDir();
  const fileSystem = new LocalFileSystem({ directWrites: { blockBytes: 8192 } });
  const sizes = [0, 1, 4095, 4096, 4097, 8191, 8192, 8193, 12_288, 20_000, 3 * 8192 + 5, 100_000, 250_001];
  let sawDirect = 0;
  for (const [index, size] of sizes.entries()) {
    const data = randomBytes(size);
    const path = join(dir, `file-${size}.bin`);
    await writeInChunks(fileSystem, path, data, index + 1, () => (sawDirect = Math.max(sawDirect, directDescriptorsUnder(dir))));
    assert.ok((await readFile(path)).equals(data), `${size} bytes: the file differs from what was written`);
  }
  // The files past a block went through a descriptor opened with O_DIRECT.
  assert.equal(sawDirect, 1);
  assert.equal(directDescriptorsUnder(dir), 0, "a direct descriptor was left open");
  assert.deepEqual((await readdir(dir)).filter((name) => name.endsWith(".partial")), []);
});

test("by default a file past 16 MiB is written around the page cache, byte for byte", async () => {
  const dir = await tempDir();
  const data = randomBytes(40 << 20);
  const fileSystem = new LocalFileSystem();
  const writer = await fileSystem.createWriter(join(dir, "big.bin"));
  await writer.write(data.subarray(0, 100)); // a header, as the zip writer's
  assert.equal(directDescriptorsUnder(dir), 0, "a small file must not take direct writes");
  await writer.write(data.subarray(100, 20 << 20));
  assert.equal(directDescriptorsUnder(dir), 1);
  await writer.write(data.subarray(20 << 20));
  await writer.close();
  // Only the head (to the first 4 KiB edge) and the tail (past the last) went through the page cache.
  assert.ok(residentBytes(join(dir, "big.bin")) <= 2 * 4096, `${residentBytes(join(dir, "big.bin"))} bytes of the file are in the page cache`);
  assert.ok((await readFile(join(dir, "big.bin"))).equals(data));
  // Its blocks start on a page (WebAssembly memory, at its start): from memory aligned only to 512
  // bytes, as glibc's large allocations are, direct writes took 5.5× as long.
  const blocks = keptDirectBlocks();
  assert.ok(blocks.length > 0);
  for (const block of blocks) assert.ok(block.byteOffset === 0 && block.buffer.byteLength % 65536 === 0, `a block at offset ${block.byteOffset} of ${block.buffer.byteLength} bytes`);
  // And with direct writes off, not at all.
  const plain = new LocalFileSystem({ directWrites: false });
  const second = await plain.createWriter(join(dir, "plain.bin"));
  await second.write(data);
  assert.equal(directDescriptorsUnder(dir), 0);
  await second.close();
  assert.equal(residentBytes(join(dir, "plain.bin")), data.byteLength);
  assert.ok((await readFile(join(dir, "plain.bin"))).equals(data));
});

test("a small file announced as at least a block long goes around the page cache from its first byte; one announced as shorter, or as eight blocks or more, as before", async () => {
  const dir = await tempDir();
  const fileSystem = new LocalFileSystem();
  const data = randomBytes((20 << 20) + 1000); // past the default 16 MiB block, with a tail past the last 4 KiB edge
  const writer = await fileSystem.createWriter(join(dir, "announced.bin"));
  writer.expectBytes?.(data.byteLength);
  await writer.write(data.subarray(0, 100)); // a header, as the zip writer's
  assert.equal(directDescriptorsUnder(dir), 1, "direct writes start with the first byte");
  for (let done = 100; done < data.byteLength; done += 1 << 20) await writer.write(data.subarray(done, Math.min(done + (1 << 20), data.byteLength)));
  await writer.close();
  // Only the tail went through the page cache.
  assert.ok(residentBytes(join(dir, "announced.bin")) <= 4096, `${residentBytes(join(dir, "announced.bin"))} bytes of the file are in the page cache`);
  assert.ok((await readFile(join(dir, "announced.bin"))).equals(data));
  // Announced as shorter than a block, a file takes no direct writes until it reaches one.
  const shorter = data.subarray(0, 12 << 20);
  const second = await fileSystem.createWriter(join(dir, "shorter.bin"));
  second.expectBytes?.(shorter.byteLength);
  await second.write(shorter);
  assert.equal(directDescriptorsUnder(dir), 0);
  await second.close();
  assert.equal(residentBytes(join(dir, "shorter.bin")), shorter.byteLength);
  assert.ok((await readFile(join(dir, "shorter.bin"))).equals(shorter));
  // Announced as eight blocks or more (here of 1 MiB), its head of a block goes through the page
  // cache while the disk works, as an unannounced file's does.
  const large = data.subarray(0, (9 << 20) + 1000);
  const third = await new LocalFileSystem({ directWrites: { blockBytes: 1 << 20 } }).createWriter(join(dir, "large.bin"));
  third.expectBytes?.(large.byteLength);
  for (let done = 0; done < large.byteLength; done += 100 << 10) await third.write(large.subarray(done, Math.min(done + (100 << 10), large.byteLength)));
  await third.close();
  const head = residentBytes(join(dir, "large.bin"));
  // (Direct writes start within the write that takes the file to a block: at the 4 KiB edge after 1000 KiB.)
  assert.ok(head >= 1000 << 10 && head <= (1 << 20) + 2 * 4096, `${head} bytes of the large file are in the page cache`);
  assert.ok((await readFile(join(dir, "large.bin"))).equals(large));
});

test("a file announced as small gets direct-write blocks of a quarter of the size; a large or unannounced one, full blocks", async () => {
  const dir = await tempDir();
  // Sizes no other test here uses: 200 KiB full blocks, so 48 KiB quarters (whole 4 KiB units).
  const full = 200 << 10;
  const quarter = 48 << 10;
  const fileSystem = new LocalFileSystem({ directWrites: { blockBytes: full } });
  const write = async (name: string, size: number, announced: boolean, seed: number): Promise<void> => {
    const data = randomBytes(size);
    const writer = await fileSystem.createWriter(join(dir, name));
    if (announced) writer.expectBytes?.(size);
    const random = seededRandom(seed);
    for (let done = 0; done < size; ) {
      const take = Math.min(Math.floor(random() * 60_000), size - done);
      await writer.write(data.subarray(done, done + take));
      done += take;
    }
    await writer.close();
    assert.ok((await readFile(join(dir, name))).equals(data), `${name} differs from what was written`);
  };
  // Under eight full blocks (1.6 MiB): quarter blocks.
  await write("small.bin", 1 << 20, true, 31);
  assert.deepEqual([keptOf(quarter), keptOf(full)], [3, 0]);
  // Past it, or not announced: full blocks, as before.
  await write("large.bin", 4 << 20, true, 32);
  assert.deepEqual([keptOf(quarter), keptOf(full)], [3, 3]);
  await write("unannounced.bin", 1 << 20, false, 33);
  assert.deepEqual([keptOf(quarter), keptOf(full)], [3, 3]);
  // Both sizes are kept side by side: two large files written at once leave six full blocks, and a
  // small file after them pushes none of those out. Each is written past its first blocks before
  // either closes: left to race, one could finish before the other took its blocks (a slow probe of
  // fresh memory) and hand its own blocks on, which is right but leaves fewer than six.
  const [large1, large2] = [randomBytes(4 << 20), randomBytes(4 << 20)];
  const [writer1, writer2] = [await fileSystem.createWriter(join(dir, "large-1.bin")), await fileSystem.createWriter(join(dir, "large-2.bin"))];
  for (const [writer, data] of [[writer1, large1], [writer2, large2]] as const) {
    writer.expectBytes?.(data.byteLength);
    await writer.write(data.subarray(0, 1 << 20));
  }
  assert.equal(directDescriptorsUnder(dir), 2, "both large files write around the page cache at once");
  await Promise.all([writer1.write(large1.subarray(1 << 20)), writer2.write(large2.subarray(1 << 20))]);
  await Promise.all([writer1.close(), writer2.close()]);
  assert.ok((await readFile(join(dir, "large-1.bin"))).equals(large1) && (await readFile(join(dir, "large-2.bin"))).equals(large2));
  const fullBlocks = keptDirectBlocks().filter((block) => block.byteLength === full);
  assert.equal(fullBlocks.length, 6);
  await write("small-again.bin", 1 << 20, true, 34);
  assert.deepEqual(keptDirectBlocks().filter((block) => block.byteLength === full), fullBlocks, "a small file pushed out kept full blocks");
  assert.equal(keptOf(quarter), 3);
  // Announced once bytes are written, the size changes nothing: full blocks (320 KiB, not 80).
  const late = randomBytes(1 << 20);
  const lateWriter = await new LocalFileSystem({ directWrites: { blockBytes: 320 << 10 } }).createWriter(join(dir, "late.bin"));
  await lateWriter.write(late.subarray(0, 10));
  lateWriter.expectBytes?.(late.byteLength);
  await lateWriter.write(late.subarray(10));
  await lateWriter.close();
  assert.ok((await readFile(join(dir, "late.bin"))).equals(late));
  assert.deepEqual([keptOf(80 << 10), keptOf(320 << 10)], [0, 3], "a late announcement took small blocks");
  // A quarter is rounded down to whole 4 KiB units (44 KiB: 8 KiB blocks), and only the last two
  // sizes given back are kept: the 48 KiB ones go, so kept memory stays bounded.
  await writeInChunks(new LocalFileSystem({ directWrites: { blockBytes: 44 << 10 } }), join(dir, "odd.bin"), randomBytes(100 << 10), 37);
  const odd = new LocalFileSystem({ directWrites: { blockBytes: 44 << 10 } });
  const data = randomBytes(200 << 10);
  const writer = await odd.createWriter(join(dir, "odd-announced.bin"));
  writer.expectBytes?.(data.byteLength);
  await writer.write(data);
  await writer.close();
  assert.ok((await readFile(join(dir, "odd-announced.bin"))).equals(data));
  assert.deepEqual(
    [...new Set(keptDirectBlocks().map((block) => block.byteLength))].sort((a, b) => a - b),
    [8 << 10, 44 << 10],
  );
});

test("a new direct-write block gets all its memory when it is made, not page by page as a save fills it", async () => {
  const dir = await tempDir();
  // A size no other test here uses; the file fills 1 MiB of the first block, nothing of the others.
  const blockBytes = 24 << 20;
  const data = Buffer.alloc(blockBytes + (1 << 20), 7);
  const fileSystem = new LocalFileSystem({ directWrites: { blockBytes } });
  const before = process.memoryUsage().rss;
  await writeInChunks(fileSystem, join(dir, "file.bin"), data, 41);
  const grown = process.memoryUsage().rss - before;
  assert.equal(keptOf(blockBytes), 3);
  assert.ok(grown >= 2.5 * blockBytes, `resident memory grew by ${grown} bytes for three blocks of ${blockBytes}`);
  assert.ok((await readFile(join(dir, "file.bin"))).equals(data));
});

test("the torch and safetensors dumpers and writeFile announce their file's size: a small one is written in quarter-size blocks", async () => {
  const dir = await tempDir();
  const [full, quarter] = [240 << 10, 60 << 10];
  const fileSystem = new LocalFileSystem({ directWrites: { blockBytes: full } });
  // 1 MiB of tensors: past one full block (direct writes start), under eight.
  const state = { model: Object.fromEntries(Array.from({ length: 16 }, (_, i) => [`w${i}`, Tensor.from(new Float32Array(16_384).fill(i + 0.5), { shape: [128, 128] })])) };
  await new TorchTensorDumper({ fileSystem }).dump(state, join(dir, "model.pt"));
  assert.deepEqual([keptOf(quarter), keptOf(full)], [3, 0]);
  const loaded = (await new TorchTensorLoader().load(join(dir, "model.pt"))) as { model: Record<string, Tensor> };
  assert.equal((loaded.model.w15!.data as Float32Array)[16_383], 15.5);
  await new SafetensorsDumper({ fileSystem }).dump(state, join(dir, "model.safetensors"));
  assert.deepEqual([keptOf(quarter), keptOf(full)], [3, 0]);
  const fromSafetensors = (await new SafetensorsLoader().load(join(dir, "model.safetensors"))) as { model: Record<string, Tensor> };
  assert.equal((fromSafetensors.model.w7!.data as Float32Array)[0], 7.5);
  // writeFile (the manager's carbon copies, writeBytes) knows its size too.
  const bytes = randomBytes(1 << 20);
  await fileSystem.writeFile(join(dir, "bytes.bin"), bytes);
  assert.ok((await readFile(join(dir, "bytes.bin"))).equals(bytes));
  assert.deepEqual([keptOf(quarter), keptOf(full)], [3, 0]);
});

test("where WebAssembly memory cannot be had, blocks are plain buffers found by the probe, and files are exact", async () => {
  const dir = await tempDir();
  // A child without WebAssembly (--no-expose-wasm) writes a 40 MiB file around the page cache.
  const script = [
    `import { LocalFileSystem } from ${JSON.stringify(new URL("../src/index.ts", import.meta.url).href)};`,
    `import { keptDirectBlocks } from ${JSON.stringify(new URL("../src/fs/direct-writes.ts", import.meta.url).href)};`,
    `import { createHash, randomBytes } from "node:crypto";`,
    `const data = randomBytes(40 << 20);`,
    `const writer = await new LocalFileSystem().createWriter(${JSON.stringify(join(dir, "plain-blocks.bin"))});`,
    `for (let done = 0; done < data.length; done += 3 << 20) await writer.write(data.subarray(done, done + (3 << 20)));`,
    `await writer.close();`,
    `console.log(JSON.stringify({ wasm: typeof WebAssembly, offsets: keptDirectBlocks().map((b) => b.byteOffset), hash: createHash("sha256").update(data).digest("hex") }));`,
  ].join("\n");
  const output = execFileSync(process.execPath, ["--no-expose-wasm", "--import", "tsx", "--input-type=module", "-e", script], { encoding: "utf8" });
  const { wasm, offsets, hash } = JSON.parse(output) as { wasm: string; offsets: number[]; hash: string };
  assert.equal(wasm, "undefined");
  assert.ok(offsets.length > 0 && offsets.every((offset) => offset % 8 === 0), `blocks at offsets ${offsets.join(", ")}`);
  const written = await readFile(join(dir, "plain-blocks.bin"));
  assert.equal((await import("node:crypto")).createHash("sha256").update(written).digest("hex"), hash);
});

test("a disk that takes O_DIRECT at open but refuses the direct writes themselves gets its files through the page cache, byte for byte, and is not tried again", async () => {
  const dir = await tempDir();
  // Blocks start on a page and are not probed before use: here the first block's write is the
  // first to be refused. A child process, since the refusal is remembered for its disk.
  const script = [
    `import { LocalFileSystem } from ${JSON.stringify(new URL("../src/index.ts", import.meta.url).href)};`,
    `import { constants, promises as fsp } from "node:fs";`,
    `import { createHash, randomBytes } from "node:crypto";`,
    `const realOpen = fsp.open;`,
    `const direct = new WeakSet();`,
    `fsp.open = async (...args) => { const handle = await realOpen(...args); if ((args[1] & constants.O_DIRECT) !== 0) direct.add(handle); return handle; };`,
    `const prototype = Object.getPrototypeOf(await realOpen("/dev/null"));`,
    `const realWrite = prototype.write;`,
    `let refused = 0;`,
    `prototype.write = function (...args) { if (!direct.has(this)) return realWrite.apply(this, args); refused++; return Promise.reject(Object.assign(new Error("EINVAL: invalid argument, write"), { code: "EINVAL" })); };`,
    `const data = randomBytes((3 << 20) + 4321);`,
    `const fileSystem = new LocalFileSystem({ directWrites: { blockBytes: 1 << 20 } });`,
    `const refusals = [];`,
    `for (const name of ["first.bin", "second.bin"]) {`,
    `  const writer = await fileSystem.createWriter(${JSON.stringify(dir)} + "/" + name);`,
    `  for (let done = 0; done < data.length; done += 300_000) await writer.write(data.subarray(done, done + 300_000));`,
    `  await writer.close();`,
    `  refusals.push(refused);`,
    `}`,
    `console.log(JSON.stringify({ refusals, hash: createHash("sha256").update(data).digest("hex") }));`,
  ].join("\n");
  const output = execFileSync(process.execPath, ["--import", "tsx", "--input-type=module", "-e", script], { encoding: "utf8" });
  const { refusals, hash } = JSON.parse(output) as { refusals: number[]; hash: string };
  assert.deepEqual(refusals, [1, 1], "one refused direct write for the first file, none for the second");
  for (const name of ["first.bin", "second.bin"]) {
    const written = await readFile(join(dir, name));
    assert.equal((await import("node:crypto")).createHash("sha256").update(written).digest("hex"), hash, name);
  }
});

test("two files written at once with direct writes never share a block", async () => {
  const dir = await tempDir();
  const fileSystem = new LocalFileSystem({ directWrites: { blockBytes: 4096 } });
  const first = randomBytes(300_000);
  const second = randomBytes(200_003);
  // Files written before leave their blocks for reuse: the two below take them.
  await Promise.all([writeInChunks(fileSystem, join(dir, "warm-a.bin"), second, 5), writeInChunks(fileSystem, join(dir, "warm-b.bin"), first, 6)]);
  await Promise.all([writeInChunks(fileSystem, join(dir, "a.bin"), first, 7), writeInChunks(fileSystem, join(dir, "b.bin"), second, 8)]);
  assert.ok((await readFile(join(dir, "a.bin"))).equals(first));
  assert.ok((await readFile(join(dir, "b.bin"))).equals(second));
});

test("an aborted direct write leaves the earlier file at its path untouched and nothing else behind", async () => {
  const dir = await tempDir();
  const path = join(dir, "model.pt");
  await writeFile(path, "the earlier file");
  const fileSystem = new LocalFileSystem({ directWrites: { blockBytes: 4096 } });
  const writer = await fileSystem.createWriter(path);
  await writer.write(randomBytes(50_000));
  assert.equal(directDescriptorsUnder(dir), 1);
  await writer.abort();
  assert.equal(await readFile(path, "utf8"), "the earlier file");
  assert.deepEqual(await readdir(dir), ["model.pt"]);
  assert.equal(directDescriptorsUnder(dir), 0);
});

test("on a file system that refuses O_DIRECT (ramfs), files are written through the page cache, byte for byte", async (t) => {
  const dir = await mounted(t, "ramfs"); // its open refuses O_DIRECT with EINVAL
  const fileSystem = new LocalFileSystem({ directWrites: { blockBytes: 4096 } });
  const data = randomBytes(100_000);
  let sawDirect = 0;
  await writeInChunks(fileSystem, join(dir, "file.bin"), data, 3, () => (sawDirect = Math.max(sawDirect, directDescriptorsUnder(dir))));
  assert.equal(sawDirect, 0);
  assert.ok((await readFile(join(dir, "file.bin"))).equals(data));
  // A checkpoint file through the whole stack, read back.
  const state = { weight: Tensor.from(Float32Array.from({ length: 30_000 }, (_, i) => i / 7)) };
  await new TorchTensorDumper({ fileSystem }).dump(state, join(dir, "state.pt"));
  const loaded = (await new TorchTensorLoader({ fileSystem }).load(join(dir, "state.pt"))) as { weight: Tensor };
  assert.deepEqual(loaded.weight.data, state.weight.data);
});

test("a direct-write block size that O_DIRECT cannot use is refused, naming the option", () => {
  for (const blockBytes of [0, 1000, 4097, -4096, 1.5, 2 ** 31]) {
    assert.throws(() => new LocalFileSystem({ directWrites: { blockBytes } }), /directWrites\.blockBytes must be a multiple of 4096 up to 1073741824, not /);
  }
});

test("blocks aligned for one disk are not reused on a disk that needs another alignment", async (t) => {
  // tmpfs takes direct writes from any address, so blocks probed there may start anywhere; the
  // temporary directory's disk (ext4 on a virtio disk here) needs 512 bytes. Reused there, they
  // would be refused and the file would go through the page cache.
  const blockBytes = 1 << 20;
  const fileSystem = new LocalFileSystem({ directWrites: { blockBytes } });
  const data = randomBytes(12 << 20);
  const shm = await mounted(t, "tmpfs", "size=64m");
  await writeInChunks(fileSystem, join(shm, "first.bin"), data, 11);
  const dir = await tempDir();
  await writeInChunks(fileSystem, join(dir, "second.bin"), data, 12);
  // Direct writes start at the first 4 KiB edge once the file reaches a block, and end at the last:
  // only the bytes before and after went through the page cache (counted before reading the file
  // back, which fills it).
  assert.ok(residentBytes(join(dir, "second.bin")) <= blockBytes + 2 * 4096, `${residentBytes(join(dir, "second.bin"))} bytes in the page cache`);
  assert.ok((await readFile(join(dir, "second.bin"))).equals(data));
});

test("a disk that fills up during direct writes fails the file with ENOSPC, which close reports too, and the earlier file stays", async (t) => {
  const dir = await mounted(t, "tmpfs", "size=2m"); // tmpfs takes O_DIRECT since Linux 6.6
  const path = join(dir, "model.pt");
  await writeFile(path, "the earlier file");
  await writeFile(join(dir, "filler"), Buffer.alloc(1 << 20));
  const fileSystem = new LocalFileSystem({ directWrites: { blockBytes: 64 << 10 } });
  const writer = await fileSystem.createWriter(path);
  let sawDirect = 0;
  let failure: unknown;
  const chunk = randomBytes(32 << 10);
  for (let i = 0; i < 64 && failure === undefined; i++) {
    try {
      await writer.write(chunk);
      sawDirect = Math.max(sawDirect, directDescriptorsUnder(dir));
    } catch (error) {
      failure = error;
    }
  }
  assert.equal((failure as NodeJS.ErrnoException | undefined)?.code, "ENOSPC", String(failure));
  assert.equal(sawDirect, 1, "the disk must have filled during direct writes");
  // A caller that frees space and then closes instead of aborting gets the failure again, and no
  // file with a hole where the refused bytes were.
  await rm(join(dir, "filler"));
  await assert.rejects(writer.close(), (error: unknown) => (error as NodeJS.ErrnoException).code === "ENOSPC");
  assert.equal(await readFile(path, "utf8"), "the earlier file");
  assert.deepEqual(await readdir(dir), ["model.pt"]);
  assert.equal(directDescriptorsUnder(dir), 0);
});

test("abort while a direct write is under way waits for it, then leaves nothing behind", async () => {
  const dir = await tempDir();
  const fileSystem = new LocalFileSystem({ directWrites: { blockBytes: 4096 } });
  const writer = await fileSystem.createWriter(join(dir, "model.pt"));
  const writing = writer.write(randomBytes(4 << 20)); // a thousand blocks: many awaits inside
  await new Promise((resolve) => setImmediate(resolve));
  await writer.abort();
  await writing;
  assert.deepEqual(await readdir(dir), []);
  assert.equal(directDescriptorsUnder(dir), 0);
  // Its blocks went back whole: the next file, written with them, is exact.
  const data = randomBytes(300_000);
  await writeInChunks(fileSystem, join(dir, "next.bin"), data, 13);
  assert.ok((await readFile(join(dir, "next.bin"))).equals(data));
});

/**
 * Records the calls of every FileHandle of this process to `datasync` (and, when `failWith` is
 * given, makes the first one fail with it instead of flushing) and to `write` of `blockBytes`, in
 * order, until the test ends.
 */
async function recordHandleCalls(t: { after(fn: () => void): void }, dir: string, blockBytes: number, failWith?: NodeJS.ErrnoException): Promise<string[]> {
  const probe = await open(join(dir, "probe"), "w");
  const prototype = Object.getPrototypeOf(probe) as FileHandle;
  await probe.close();
  await rm(join(dir, "probe"));
  const { datasync, write } = prototype;
  const calls: string[] = [];
  prototype.datasync = function (this: FileHandle) {
    calls.push("datasync");
    if (failWith !== undefined && calls.filter((call) => call === "datasync").length === 1) return Promise.reject(failWith);
    return datasync.call(this);
  };
  prototype.write = function (this: FileHandle, ...args: unknown[]) {
    if ((args[0] as Uint8Array).byteLength === blockBytes && args[2] === blockBytes) calls.push("block");
    return (write as (...a: unknown[]) => unknown).apply(this, args);
  } as FileHandle["write"];
  t.after(() => Object.assign(prototype, { datasync, write }));
  return calls;
}

test("a large file's direct writes are flushed to disk while it is written, not all at once by the fsync at close", async (t) => {
  // The fsync at close waits for every byte the disk holds in its cache (0.8 ms a MiB here):
  // flushes started along the way leave it little to do.
  const dir = await tempDir();
  const blockBytes = 1 << 20;
  const calls = await recordHandleCalls(t, dir, blockBytes);
  const data = randomBytes(40 << 20);
  await writeInChunks(new LocalFileSystem({ directWrites: { blockBytes } }), join(dir, "big.bin"), data, 17);
  assert.ok((await readFile(join(dir, "big.bin"))).equals(data));
  const blocks = calls.filter((call) => call === "block").length;
  assert.ok(blocks >= 30, `${blocks} direct block writes`);
  const flushesBeforeLastBlock = calls.slice(0, calls.lastIndexOf("block")).filter((call) => call === "datasync").length;
  assert.ok(flushesBeforeLastBlock >= 2, `${flushesBeforeLastBlock} flushes before the last block's write: ${calls.join(" ")}`);
});

test("a flush that fails while a file is written fails the file, and the earlier file stays", async (t) => {
  const dir = await tempDir();
  const path = join(dir, "model.pt");
  await writeFile(path, "the earlier file");
  const blockBytes = 1 << 20;
  const failure = Object.assign(new Error("EIO: i/o error, fdatasync"), { code: "EIO" });
  const calls = await recordHandleCalls(t, dir, blockBytes, failure);
  const writer = await new LocalFileSystem({ directWrites: { blockBytes } }).createWriter(path);
  await writer.write(randomBytes(40 << 20));
  assert.ok(calls.includes("datasync"), "a flush must have started while the file was written");
  await assert.rejects(writer.close(), (error: unknown) => (error as NodeJS.ErrnoException).code === "EIO");
  assert.equal(await readFile(path, "utf8"), "the earlier file");
  assert.deepEqual(await readdir(dir), ["model.pt"]);
  assert.equal(directDescriptorsUnder(dir), 0);
});
