/**
 * The buffers a local file's small writes are gathered in are kept between files (local-file-writer.ts):
 * each file must still get exactly its own bytes, with several writers open at once, and after one fails.
 */
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { readFile, readdir } from "node:fs/promises";
import { join } from "node:path";
import { test } from "node:test";
import { spareWriteBuffers } from "../src/fs/local-file-writer.js";
import { LocalFileSystem } from "../src/index.js";
import { useTempDirs } from "./helpers/checkpoint-helpers.js";

const tempDir = useTempDirs("write-buffers");

/** `count` small random pieces (each under the writer's pass-through size, so they are gathered). */
const pieces = (count: number): Buffer[] => Array.from({ length: count }, (_, i) => randomBytes(100 + 37 * i));

test("small files written one after another go through one kept buffer, each file with its own bytes", async () => {
  const dir = await tempDir();
  const fileSystem = new LocalFileSystem({ directWrites: false });
  const first = Buffer.concat(pieces(3));
  await fileSystem.writeFile(join(dir, "first.bin"), first);
  const kept = spareWriteBuffers().find((buffer) => buffer.subarray(0, first.byteLength).equals(first));
  assert.ok(kept !== undefined, "the first file's bytes did not go through a kept buffer");

  const second = randomBytes(first.byteLength + 10);
  const writer = await fileSystem.createWriter(join(dir, "second.bin"));
  for (let at = 0; at < second.byteLength; at += 50) await writer.write(second.subarray(at, at + 50));
  await writer.close();
  assert.ok(kept.subarray(0, second.byteLength).equals(second), "the second file did not reuse the kept buffer");
  assert.ok(spareWriteBuffers().length <= 2, `${spareWriteBuffers().length} buffers kept`);
  assert.ok((await readFile(join(dir, "first.bin"))).equals(first), "the first file changed when its buffer was reused");
  assert.ok((await readFile(join(dir, "second.bin"))).equals(second));
});

test("writers open at once each gather into a buffer of their own", async () => {
  const dir = await tempDir();
  const fileSystem = new LocalFileSystem({ directWrites: false });
  const contents = [pieces(40), pieces(40), pieces(40), pieces(40)];
  const writers = await Promise.all(contents.map((_, i) => fileSystem.createWriter(join(dir, `${i}.bin`))));
  // Interleaved: a piece of each file in turn, so a buffer shared by two writers would mix them.
  for (let piece = 0; piece < 40; piece++) await Promise.all(writers.map((writer, i) => writer.write(contents[i]![piece]!)));
  await Promise.all(writers.map((writer) => writer.close()));
  for (const [i, content] of contents.entries()) assert.ok((await readFile(join(dir, `${i}.bin`))).equals(Buffer.concat(content)), `file ${i} holds other bytes`);
  assert.ok(spareWriteBuffers().length <= 2, `${spareWriteBuffers().length} buffers kept`);
});

test("an aborted writer gives its buffer back, and the next file is whole", async () => {
  const dir = await tempDir();
  const fileSystem = new LocalFileSystem({ directWrites: false });
  const aborted = await fileSystem.createWriter(join(dir, "aborted.bin"));
  const junk = randomBytes(3000);
  await aborted.write(junk);
  await aborted.abort();
  assert.ok(spareWriteBuffers().some((buffer) => buffer.subarray(0, junk.byteLength).equals(junk)), "the aborted writer's buffer was not kept");
  const next = Buffer.concat(pieces(5));
  await fileSystem.writeFile(join(dir, "next.bin"), next);
  assert.ok((await readFile(join(dir, "next.bin"))).equals(next));
  assert.deepEqual((await readdir(dir)).sort(), ["next.bin"], "the aborted file or a partial one is left");
});
