// The order of a .pt archive written here: the storages first, numbered in the order the pickle
// meets them (as torch.save numbers them), then the pickle (src/formats/torch/torch-writer.ts). A
// state changed between the two is refused, and the sink is asked to start syncing before the
// pickle is made. torch.load reading such files: test/torch-interop.test.ts.
import assert from "node:assert/strict";
import { mkdtemp, readFile, readdir, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, test } from "node:test";
import { FormatError, TensorDumpError } from "../src/errors.js";
import { MemoryReader, type ByteSink } from "../src/formats/byte-io.js";
import { writeTorchArchive } from "../src/formats/torch/torch-writer.js";
import { ZipReader } from "../src/formats/zip/zip-reader.js";
import type { FileSystem, FileWriter } from "../src/fs/file-system.js";
import { LocalFileSystem } from "../src/fs/local-file-system.js";
import { TorchTensorDumper, TorchTensorLoader } from "../src/io/torch-tensor-io.js";
import { ShardedTensor } from "../src/tensor/sharded-tensor.js";
import { Tensor } from "../src/tensor/tensor.js";
import { orderedDict, tuple, type StateValue } from "../src/values/py-values.js";

const tempDirs: string[] = [];
after(async () => {
  for (const dir of tempDirs) await rm(dir, { recursive: true, force: true });
});

async function tempDir(): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), "ckpt-archive-order-"));
  tempDirs.push(dir);
  return dir;
}

let nextValue = 1;
/** A tensor whose storage holds values no other storage here holds. */
function distinct(length = 4): Tensor {
  return Tensor.from(Float32Array.from({ length }, () => nextValue++), { shape: [length] });
}

/** A state whose storages are met in a known order through every kind of container the pickler walks. */
function variedState(): { state: StateValue; order: Tensor[] } {
  const a = distinct(8);
  const b = distinct();
  const c = distinct();
  const d = distinct();
  const e = distinct();
  const f = distinct();
  const g = distinct();
  const h = distinct();
  const aView = new Tensor({ storage: a.storage, shape: [2], offset: 4 }); // a view: a's storage, met first here
  const shared = [b]; // a list met twice: the second time is a memo reference
  const state: StateValue = {
    first: aView,
    list: shared,
    again: shared,
    byNumber: new Map<number, StateValue>([
      [2, e],
      [1, d],
    ]),
    pair: tuple(f, a),
    sharded: new ShardedTensor(c, { globalShape: [8], offsets: [4] }),
    ordered: orderedDict({ inside: g }, { attribute: h }),
    aAgain: a,
    bAgain: b,
  };
  // First met, walking depth first: keys in order, a Map's entries in order, attributes last.
  return { state, order: [a, b, e, d, f, c, g, h] };
}

test("storages are written first, numbered in the order the pickle meets them, then data.pkl, byteorder and version", async () => {
  const { state, order } = variedState();
  const dir = await tempDir();
  const path = join(dir, "varied.pt");
  await new TorchTensorDumper().dump(state, path);

  const zip = await ZipReader.open(new MemoryReader(await readFile(path)));
  const offsetOf = (name: string): number => zip.entry(name).headerOffset;
  for (let key = 0; key < order.length; key++) {
    const bytes = await zip.read(`archive/data/${key}`);
    assert.ok(Buffer.from(bytes).equals(order[key]!.storage.bytes), `archive/data/${key} holds the storage met ${key}th`);
  }
  assert.equal(zip.find(`archive/data/${order.length}`), undefined, "one entry per storage, views and repeats included");
  const lastStorage = Math.max(...order.map((_, key) => offsetOf(`archive/data/${key}`)));
  assert.ok(offsetOf("archive/data/0") < offsetOf("archive/data/1"));
  assert.ok(lastStorage < offsetOf("archive/data.pkl"), "the pickle follows every storage");
  assert.ok(offsetOf("archive/data.pkl") < offsetOf("archive/byteorder"));
  assert.ok(offsetOf("archive/byteorder") < offsetOf("archive/version"));

  // And it loads back as it was: views, repeats and sharded tensors included.
  const loaded = (await new TorchTensorLoader().load(path)) as Record<string, unknown>;
  const first = loaded.first as Tensor;
  const aAgain = loaded.aAgain as Tensor;
  assert.equal(first.storage, aAgain.storage, "the view and its base share one storage again");
  assert.deepEqual([...(first.data as Float32Array)], [...(order[0]!.data as Float32Array).subarray(4, 6)], "the view's values");
  assert.equal(loaded.list, loaded.again, "a list met twice is one list again");
  assert.ok(loaded.sharded instanceof ShardedTensor);
});

test("a state changed while its storages are written is refused with STATE_CHANGED, and the file at the path is kept", async () => {
  const dir = await tempDir();
  const path = join(dir, "model.pt");
  const earlier = { weight: distinct() };
  await new TorchTensorDumper().dump(earlier, path);
  const before = await readFile(path);

  for (const change of ["replaced", "added", "removed"] as const) {
    const state: Record<string, StateValue> = { weight: distinct(), bias: distinct() };
    // A file system whose writer changes the state when told the file's size: after the
    // storages were planned, before they are written and the pickle is made.
    const local = new LocalFileSystem();
    const changing: FileSystem = Object.assign(Object.create(local) as FileSystem, {
      createWriter: async (target: string): Promise<FileWriter> => {
        const writer = await local.createWriter(target);
        return {
          expectBytes: (total: number) => {
            if (change === "replaced") state.weight = distinct();
            else if (change === "added") state.extra = distinct();
            else delete state.bias;
            writer.expectBytes?.(total);
          },
          write: (chunk: Uint8Array) => writer.write(chunk),
          close: () => writer.close(),
          abort: () => writer.abort(),
        };
      },
    });
    await assert.rejects(new TorchTensorDumper({ fileSystem: changing }).dump(state, path), (error: unknown) => {
      assert.ok(error instanceof TensorDumpError, String(error));
      assert.ok(error.cause instanceof FormatError, String(error.cause));
      assert.equal(error.cause.code, "STATE_CHANGED");
      assert.match(error.message, /model\.pt: cannot save the state: the state changed while it was being saved/);
      return true;
    }, change);
    assert.deepEqual(await readFile(path), before, `the earlier file is untouched (${change})`);
    assert.deepEqual(await readdir(dir), ["model.pt"], `no partial file is left (${change})`);
  }
});

test("the sink is asked once to sync in the background, after the storages and before any byte of the pickle", async () => {
  const events: string[] = [];
  let writtenBytes = 0;
  const written: Uint8Array[] = [];
  const sink: ByteSink = {
    write: async (chunk) => {
      written.push(chunk.slice());
      writtenBytes += chunk.byteLength;
    },
    syncInBackground: () => events.push(`sync after ${writtenBytes}`),
  };
  // Enough small storages that the writer waits for its sink between them (it stages them, and
  // waits once a few MiB are staged and unwritten): bytes reach the sink before the hint.
  const state: Record<string, Tensor> = {};
  for (let i = 0; i < 4000; i++) state[`layer${i}`] = Tensor.from(new Float32Array(1024).fill(i), { shape: [1024] });
  const { size } = await writeTorchArchive(state, sink);

  assert.equal(events.length, 1, events.join(", "));
  const file = Buffer.concat(written);
  assert.equal(file.byteLength, size);
  const zip = await ZipReader.open(new MemoryReader(file));
  const pickleAt = zip.entry("archive/data.pkl").headerOffset;
  const syncedAfter = Number(events[0]!.split(" ").pop());
  assert.ok(syncedAfter > 0 && syncedAfter <= pickleAt, `the hint came after ${syncedAfter} bytes; the pickle starts at ${pickleAt}`);
});

test("a sink without syncInBackground gets the same bytes", async () => {
  const state = { weight: distinct(), step: 3 };
  const chunks: Uint8Array[] = [];
  const plain: ByteSink = { write: async (chunk) => void chunks.push(chunk.slice()) };
  const hinted: ByteSink & { synced: number } = { synced: 0, write: plain.write, syncInBackground: () => void hinted.synced++ };
  await writeTorchArchive(state, plain);
  const first = Buffer.concat(chunks.splice(0));
  await writeTorchArchive(state, hinted);
  assert.deepEqual(Buffer.concat(chunks), first);
  assert.equal(hinted.synced, 1);
});

test("a local file synced in the background mid-write holds every byte written after the hint too", async () => {
  const dir = await tempDir();
  const path = join(dir, "hinted.bin");
  const fileSystem = new LocalFileSystem();
  const writer = await fileSystem.createWriter(path);
  const first = Buffer.alloc(20 << 20, 7); // past a direct-write block: some bytes around the page cache
  const second = Buffer.alloc(3 << 20, 9);
  await writer.write(first);
  writer.syncInBackground?.();
  writer.syncInBackground?.(); // a second hint while the first flush runs changes nothing
  await writer.write(second);
  await writer.close();
  const bytes = await readFile(path);
  assert.equal(bytes.byteLength, first.byteLength + second.byteLength);
  assert.ok(bytes.subarray(0, first.byteLength).equals(first));
  assert.ok(bytes.subarray(first.byteLength).equals(second));
  assert.equal(typeof writer.syncInBackground, "function", "LocalFileSystem's writer takes the hint");
});
