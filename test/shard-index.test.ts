/**
 * Models published in shards with an index (`model.safetensors.index.json`,
 * `pytorch_model.bin.index.json`): loaded as one state dict, each shard read once, and every
 * inconsistency between the index and the shards named.
 */
import assert from "node:assert/strict";
import { readFile, rm, truncate, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { test } from "node:test";

import {
  AutoTensorLoader,
  SafetensorsDumper,
  SafetensorsLoader,
  Tensor,
  TensorLoadError,
  TorchTensorDumper,
  TorchTensorLoader,
  readTensorFileOutline,
  verifyShardIndex,
  type StateDict,
  type StateValue,
} from "../src/index.js";
import type { FileReader } from "../src/fs/file-system.js";
import { LocalFileSystem } from "../src/fs/local-file-system.js";
import { useTempDirs } from "./helpers/checkpoint-helpers.js";
import { describe } from "./helpers/describe.js";
import { writeShardedModel } from "./helpers/sharded-model.js";
import { requireTorch } from "./helpers/torch-python.js";

const tempDir = useTempDirs("shard-index");

/** A LocalFileSystem that counts the bytes read from each path. */
class CountingFileSystem extends LocalFileSystem {
  readonly bytesRead = new Map<string, number>();

  override async openReader(path: string): Promise<FileReader> {
    const reader = await super.openReader(path);
    const counts = this.bytesRead;
    return {
      size: reader.size,
      async read(position: number, length: number, target?: Uint8Array): Promise<Uint8Array> {
        counts.set(path, (counts.get(path) ?? 0) + length);
        return reader.read(position, length, target);
      },
      close: () => reader.close(),
    };
  }
}

for (const kind of ["safetensors", "bin", "bin-legacy"] as const) {
  test(`a model in ${kind} shards loads from its index as one state dict, each shard read once`, async (t) => {
    const python = requireTorch(t);
    if (python === null) return;
    const model = await writeShardedModel(python, await tempDir(), kind);
    const fileSystem = new CountingFileSystem();
    const auto = new AutoTensorLoader({ fileSystem });
    const loaded = await auto.loadAny(model.indexPath);
    assert.deepEqual(describe(loaded.state), model.expected);
    assert.equal(loaded.format, kind === "safetensors" ? "safetensors" : "pt");
    assert.equal(loaded.shards?.length, 3);
    assert.deepEqual(loaded.shards!.map((shard) => shard.tensors.length), [3, 4, 4]);
    assert.ok(/^\d+$/.test(loaded.metadata.get("total_size") ?? ""), "the index's metadata");
    for (const shard of loaded.shards!) {
      // Its size once, plus what tells its format and, for a zip, the end records (searched for
      // in the last 64 KiB): never a second pass over its 256 KiB or more of tensors.
      const read = fileSystem.bytesRead.get(shard.path) ?? 0;
      assert.ok(shard.size > 256 << 10, `${shard.file} holds a big tensor`);
      assert.ok(read >= shard.size && read <= shard.size + (70 << 10), `${shard.file}: ${read} bytes read for ${shard.size}`);
    }

    // The loader of the shards' own format takes the index too.
    const own = kind === "safetensors" ? new SafetensorsLoader() : new TorchTensorLoader();
    assert.deepEqual(describe(await own.load(model.indexPath)), model.expected);
  });
}

test("an index loads in place into live tensors, and reports progress over all its shards", async (t) => {
  const python = requireTorch(t);
  if (python === null) return;
  const model = await writeShardedModel(python, await tempDir(), "safetensors");
  const live = Tensor.zeros([256, 64], "float32");
  const progress: [number, number][] = [];
  const state = (await new AutoTensorLoader().load(model.indexPath, { into: { "embed.weight": live }, onProgress: (done, total) => progress.push([done, total]) })) as StateDict;
  assert.equal(state["embed.weight"], live, "the live tensor was filled, not replaced");
  assert.deepEqual(describe(state), model.expected);
  const total = progress[0]![1];
  assert.ok(progress.every(([done, all]) => all === total && done <= total), "one total for all shards");
  assert.equal(progress.at(-1)![0], total, "progress ends at the total");
});

// ------------------------------------------------------------------ inconsistent indexes and shards

/** Two safetensors shards of two tensors each, written by the dumper, and their index. */
async function smallShardedModel(): Promise<{ dir: string; indexPath: string; index: { weight_map: Record<string, string> } }> {
  const dir = await tempDir();
  const dumper = new SafetensorsDumper();
  await dumper.dump({ a: Tensor.from(new Float32Array([1, 2])), b: Tensor.from(new Float32Array([3])) }, join(dir, "one.safetensors"));
  await dumper.dump({ c: Tensor.from(new Int32Array([4])), d: Tensor.from(new Float32Array([5, 6])) }, join(dir, "two.safetensors"));
  const index = { metadata: { total_size: 24 }, weight_map: { a: "one.safetensors", b: "one.safetensors", c: "two.safetensors", d: "two.safetensors" } };
  const indexPath = join(dir, "model.safetensors.index.json");
  await writeFile(indexPath, JSON.stringify(index));
  return { dir, indexPath, index };
}

async function refusedIndex(indexPath: string, message: RegExp, loader: { load(path: string, options?: object): Promise<StateValue> } = new AutoTensorLoader(), options: object = {}): Promise<void> {
  await assert.rejects(loader.load(indexPath, options), (error: unknown) => {
    assert.ok(error instanceof TensorLoadError, `a TensorLoadError, not ${String(error)}`);
    assert.equal(error.path, indexPath, "the error names the index");
    assert.match(error.message, message);
    return true;
  });
}

test("a small index of two shards loads in the index's order", async () => {
  const { indexPath } = await smallShardedModel();
  const state = (await new AutoTensorLoader().load(indexPath)) as StateDict;
  assert.deepEqual(Object.keys(state), ["a", "b", "c", "d"]);
  assert.deepEqual(Array.from((state.d as Tensor).data as Float32Array), [5, 6]);
});

test("a shard named in the index but missing is an error naming it, found before any shard is read", async () => {
  const { dir, indexPath } = await smallShardedModel();
  await rm(join(dir, "two.safetensors"));
  const fileSystem = new CountingFileSystem();
  await refusedIndex(indexPath, /the shard two\.safetensors named in the index is missing/, new AutoTensorLoader({ fileSystem }));
  assert.equal(fileSystem.bytesRead.get(join(dir, "one.safetensors")) ?? 0, 0, "the first shard was not read");
});

test("a tensor in two shards is an error naming both", async () => {
  const { dir, indexPath } = await smallShardedModel();
  await new SafetensorsDumper().dump({ c: Tensor.from(new Int32Array([4])), d: Tensor.from(new Float32Array([5, 6])), a: Tensor.from(new Float32Array([9, 9])) }, join(dir, "two.safetensors"));
  await refusedIndex(indexPath, /the tensor "a" is in two shards, one\.safetensors and two\.safetensors/);
});

test("an index that lists a tensor twice is an error, not the last entry silently", async () => {
  const { indexPath } = await smallShardedModel();
  await writeFile(indexPath, '{"weight_map": {"a": "one.safetensors", "b": "one.safetensors", "a": "two.safetensors"}}');
  await refusedIndex(indexPath, /the index has the key "a" twice: a tensor can be in one shard only/);
});

test("a tensor in another shard than the index says, and an indexed tensor no shard holds, are errors", async () => {
  const { indexPath, index } = await smallShardedModel();
  await writeFile(indexPath, JSON.stringify({ weight_map: { ...index.weight_map, b: "two.safetensors" } }));
  await refusedIndex(indexPath, /the tensor "b" is in the shard one\.safetensors, but the index puts it in two\.safetensors/);
  await writeFile(indexPath, JSON.stringify({ weight_map: { ...index.weight_map, e: "two.safetensors" } }));
  await refusedIndex(indexPath, /the index puts the tensor "e" in the shard two\.safetensors, which does not hold it/);
});

test("a shard that is not a flat dict of tensors is an error naming the shard and the key", async () => {
  const { dir, indexPath } = await smallShardedModel();
  await new TorchTensorDumper().dump({ c: Tensor.from(new Int32Array([4])), d: Tensor.from(new Float32Array([5, 6])), step: 3 }, join(dir, "two.safetensors"));
  await refusedIndex(indexPath, /the shard two\.safetensors holds "step", which is not a tensor/);
  await new TorchTensorDumper().dump([Tensor.from(new Int32Array([4]))], join(dir, "two.safetensors"));
  await refusedIndex(indexPath, /the shard two\.safetensors does not hold a dict of tensors by name/);
});

test("malformed indexes are refused as not valid shard indexes", async () => {
  const { indexPath } = await smallShardedModel();
  const cases: [string, RegExp][] = [
    ["{", /not a valid shard index: the index is not valid JSON/],
    ["[]", /the index is not a JSON object/],
    ['{"metadata": {}}', /has no "weight_map" object/],
    ['{"weight_map": {"a": 1}}', /gives tensor "a" a shard that is not a file name/],
    ['{"weight_map": {"a": "../outside.safetensors"}}', /does not name a file inside the index's directory/],
    ['{"weight_map": {"a": "/etc/passwd"}}', /does not name a file inside the index's directory/],
    ['{"weight_map": {"a": "model.safetensors.index.json"}}', /names another index, not a tensor file/],
  ];
  for (const [text, message] of cases) {
    await writeFile(indexPath, text);
    await refusedIndex(indexPath, message);
  }
  await writeFile(indexPath, Buffer.from([0x7b, 0xff, 0x7d]));
  await refusedIndex(indexPath, /the index is not valid UTF-8/);
});

test("an index larger than any index is refused before it is read", async () => {
  const { indexPath } = await smallShardedModel();
  await truncate(indexPath, 100_000_001); // sparse: no disk is spent
  await refusedIndex(indexPath, /100000001 bytes is more than an index holds \(MAX_INDEX_BYTES = 100000000\)/);
});

test("a digest cannot be checked against an index, which names several files", async () => {
  const { indexPath } = await smallShardedModel();
  const bytes = await readFile(indexPath);
  await refusedIndex(indexPath, /a recorded digest describes one file/, new AutoTensorLoader(), { expectedDigest: { size: bytes.length, crc32: 0 } });
});

// ------------------------------------------------------------------ outline and verification

test("the outline of an index lists every shard's tensors without their bytes, and reads one from its shard on demand", async (t) => {
  const python = requireTorch(t);
  if (python === null) return;
  const model = await writeShardedModel(python, await tempDir(), "bin-legacy");
  const fileSystem = new CountingFileSystem();
  const outline = await readTensorFileOutline(model.indexPath, { fileSystem });
  assert.equal(outline.format, "pt");
  assert.deepEqual(outline.shards?.map((shard) => [shard.file, shard.format, shard.tensors.length]), [
    ["pytorch_model-00001-of-00003.bin", "pt", 3],
    ["pytorch_model-00002-of-00003.bin", "pt", 4],
    ["pytorch_model-00003-of-00003.bin", "pt", 4],
  ]);
  assert.equal(outline.size, outline.shards!.reduce((sum, shard) => sum + shard.size, 0));
  const read = [...fileSystem.bytesRead.values()].reduce((a, b) => a + b, 0);
  assert.ok(read < outline.size / 2, `the outline read ${read} of ${outline.size} bytes`);
  const state = outline.state as Record<string, Tensor>;
  const steps = state["head.steps"]!; // in the last, legacy shard
  assert.deepEqual([steps.dtype, [...steps.shape]], ["int64", [3]]);
  await outline.readTensorData(steps);
  assert.deepEqual(Array.from(steps.data as BigInt64Array), [1n, 2n, 3n]);
});

test("verifying an index checks every shard and the index against them, and names each problem", async (t) => {
  const python = requireTorch(t);
  if (python === null) return;
  const model = await writeShardedModel(python, await tempDir(), "bin");
  const good = await verifyShardIndex(model.indexPath);
  assert.equal(good.sound, true, JSON.stringify(good));
  assert.deepEqual(good.shards.map((shard) => [shard.status, shard.tensors]), [["sound", 3], ["sound", 4], ["sound", 4]]);

  // A flipped byte in the middle shard's tensor data (its entry's CRC-32 no longer matches).
  const second = good.shards[1]!.path;
  const bytes = await readFile(second);
  bytes[Math.floor(bytes.length / 2)]! ^= 0xff;
  await writeFile(second, bytes);
  await rm(good.shards[2]!.path);
  const bad = await verifyShardIndex(model.indexPath);
  assert.equal(bad.sound, false);
  assert.deepEqual(bad.shards.map((shard) => shard.status), ["sound", "damaged", "missing"]);
  assert.match(bad.shards[1]!.problem ?? "", /CRC-32/);
  assert.deepEqual(bad.problems, [], "only the shards that could be read are compared with the index");

  await writeFile(model.indexPath, "{");
  const unreadable = await verifyShardIndex(model.indexPath);
  assert.equal(unreadable.sound, false);
  assert.match(unreadable.problems[0] ?? "", /^not a valid shard index/);
});

test("verifying an index reports a tensor in two shards and an indexed tensor no shard holds", async () => {
  const { dir, indexPath } = await smallShardedModel();
  await new SafetensorsDumper().dump({ c: Tensor.from(new Int32Array([4])), a: Tensor.from(new Float32Array([9])) }, join(dir, "two.safetensors"));
  const report = await verifyShardIndex(indexPath);
  assert.equal(report.sound, false);
  assert.deepEqual(report.problems, [
    'the tensor "a" is in two shards, one.safetensors and two.safetensors',
    'the index puts the tensor "d" in the shard two.safetensors, which does not hold it',
  ]);
});
