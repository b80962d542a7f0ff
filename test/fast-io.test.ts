import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { crc32 } from "node:zlib";
import { after, before, describe, it } from "node:test";
import { CheckpointLoadError, FileCheckpointManager, Tensor, TensorLoadError, TorchTensorDumper, TorchTensorLoader, tuple, type StateDict } from "../src/index.js";
import { crc32Combine } from "../src/formats/zip/crc32-combine.js";

let dir: string;
before(async () => {
  dir = await mkdtemp(join(tmpdir(), "ckpt-fast-io-"));
});
after(async () => {
  await rm(dir, { recursive: true, force: true });
});

function state(fill: number): StateDict {
  return {
    big: Tensor.from(new Float32Array(300_000).fill(fill), { shape: [600, 500] }),
    small: Tensor.from(new Int32Array([fill, fill + 1, fill + 2])),
    nested: { half: Tensor.from(new Uint16Array(40_000).fill(fill), { dtype: "bfloat16" }), pair: tuple(1, 2) },
    shared: Tensor.from(new Float64Array(8).fill(fill)),
  };
}

describe("CRC-32 of concatenations", () => {
  it("crc32Combine gives the CRC of A followed by B for any lengths", () => {
    for (let i = 0; i < 200; i++) {
      const a = randomBytes(Math.floor(Math.random() * 3000));
      const b = randomBytes(i === 0 ? 0 : Math.floor(Math.random() * 70_000));
      assert.equal(crc32Combine(crc32(a), crc32(b), b.length), crc32(Buffer.concat([a, b])), `lengths ${a.length} + ${b.length}`);
    }
  });
});

describe("the digest a dump returns", () => {
  it("is the size and CRC-32 of the file on disk, without reading it back", async () => {
    const path = join(dir, "digest.pt");
    const digest = await new TorchTensorDumper().dump(state(3), path);
    const bytes = await readFile(path);
    assert.deepEqual(digest, { size: bytes.length, crc32: crc32(bytes) });
  });
});

describe("loading with an expected digest", () => {
  it("loads when the digest matches and refuses a file whose bytes changed, naming the CRCs", async () => {
    const path = join(dir, "expected.pt");
    const digest = await new TorchTensorDumper().dump(state(5), path);
    const loaded = (await new TorchTensorLoader().load(path, { expectedDigest: digest })) as StateDict;
    assert.deepEqual(Array.from((loaded.small as Tensor).data as Int32Array), [5, 6, 7]);

    const bytes = await readFile(path);
    bytes[bytes.length - 100]! ^= 0x01; // in the central directory: entry CRCs still pass, the file CRC does not
    await writeFile(path, bytes);
    await assert.rejects(new TorchTensorLoader().load(path, { expectedDigest: digest }), (error: unknown) => {
      assert.ok(error instanceof TensorLoadError);
      assert.match(error.message, /corrupt: its CRC-32 is [0-9a-f]{8}, it should be [0-9a-f]{8}/);
      return true;
    });
    await assert.rejects(new TorchTensorLoader().load(path, { expectedDigest: { ...digest, size: digest.size + 1 } }), /should have \d+ bytes/);
  });

  it("still names the damaged entry when no digest is given and a storage byte flips", async () => {
    const path = join(dir, "flipped.pt");
    await new TorchTensorDumper().dump(state(7), path);
    const bytes = await readFile(path);
    bytes[5000]! ^= 0x40; // inside the first storage's data
    await writeFile(path, bytes);
    await assert.rejects(new TorchTensorLoader().load(path), /entry "archive\/data\/0" fails its CRC-32 check/);
  });
});

describe("loading into existing tensors", () => {
  it("reads each matching tensor in place, returns those very tensors, and loads the rest as usual", async () => {
    const path = join(dir, "into.pt");
    await new TorchTensorDumper().dump(state(9), path);
    const target = state(0);
    delete target.small; // no target here: loaded as usual
    const loaded = (await new TorchTensorLoader().load(path, { into: target })) as StateDict;

    assert.equal(loaded.big, target.big, "the big tensor is the caller's own object");
    assert.equal((loaded.nested as StateDict).half, (target.nested as StateDict).half);
    assert.ok((target.big as Tensor).data.every((v) => v === 9), "filled in place");
    assert.ok(((target.nested as StateDict).half as Tensor).data.every((v) => v === 9));
    assert.deepEqual(Array.from((loaded.small as Tensor).data as Int32Array), [9, 10, 11]);
  });

  it("refuses a target of another shape, dtype or layout, naming its path and both dtypes and shapes, before any tensor is written", async () => {
    const large = (fill: number): StateDict => ({ a: Tensor.from(new Float32Array(1 << 20).fill(fill)), b: { c: Tensor.from(new Float32Array(1 << 20).fill(fill)) } });
    const smallPath = join(dir, "into-mismatch.pt");
    const largePath = join(dir, "into-mismatch-large.pt"); // entries large enough to be read straight into their targets
    await new TorchTensorDumper().dump(state(9), smallPath);
    await new TorchTensorDumper().dump(large(9), largePath);
    const cases: [string, StateDict, RegExp][] = [
      [smallPath, { ...state(0), small: Tensor.from(new Int32Array(4)) }, /into\.small is int32 \[4\] but the file has int32 \[3\] there: loading in place needs the same dtype and shape/],
      [smallPath, { ...state(0), nested: { half: Tensor.from(new Uint16Array(40_000), { dtype: "float16" }) } }, /into\.nested\.half is float16 \[40000\] but the file has bfloat16 \[40000\] there/],
      [smallPath, { ...state(0), big: Tensor.zeros([500, 600]).transpose() }, /into\.big is not contiguous \(strides \[1, 600\]\): loading in place needs contiguous tensors/],
      [largePath, { ...large(0), b: { c: Tensor.from(new Float64Array(1 << 20)) } }, /into\.b\.c is float64 \[1048576\] but the file has float32 \[1048576\] there/],
    ];
    for (const [path, target, message] of cases) {
      const tensors = Object.values(target).flatMap((value) => (value instanceof Tensor ? [value] : Object.values(value as StateDict))).filter((value) => value instanceof Tensor);
      const before = tensors.map((tensor) => Buffer.from(tensor.bytes));
      await assert.rejects(new TorchTensorLoader().load(path, { into: target }), (error: unknown) => {
        assert.ok(error instanceof TensorLoadError);
        assert.ok(error.message.startsWith(`${path}: into.`), error.message);
        assert.match(error.message, message);
        return true;
      });
      tensors.forEach((tensor, i) => assert.deepEqual(Buffer.from(tensor.bytes), before[i], "no target was written"));
    }
  });

  it("fills a target from a file tensor that is a view (tied or offset storage) by copying, and returns the target", async () => {
    const path = join(dir, "into-views.pt");
    const base = Tensor.from(Float32Array.from({ length: 12 }, (_, i) => i));
    await new TorchTensorDumper().dump({ embed: base.reshape([3, 4]), head: base.reshape([3, 4]).transpose(), tail: new Tensor({ storage: base.storage, shape: [4], offset: 8 }) }, path);
    const target = { embed: Tensor.zeros([3, 4]), head: Tensor.zeros([4, 3]), tail: Tensor.zeros([4]) };
    const loaded = (await new TorchTensorLoader().load(path, { into: target })) as StateDict;
    assert.equal(loaded.embed, target.embed);
    assert.equal(loaded.head, target.head);
    assert.equal(loaded.tail, target.tail);
    assert.deepEqual([...target.embed.data], Array.from({ length: 12 }, (_, i) => i));
    assert.deepEqual([...target.head.data], [0, 4, 8, 1, 5, 9, 2, 6, 10, 3, 7, 11]);
    assert.deepEqual([...target.tail.data], [8, 9, 10, 11]);
  });

  it("checks entry CRCs when reading in place", async () => {
    const path = join(dir, "into-flipped.pt");
    await new TorchTensorDumper().dump(state(2), path);
    const bytes = await readFile(path);
    bytes[5000]! ^= 0x40;
    await writeFile(path, bytes);
    await assert.rejects(new TorchTensorLoader().load(path, { into: state(0) }), /fails its CRC-32 check/);
  });

  it("reports progress up to the total number of bytes", async () => {
    const path = join(dir, "progress.pt");
    await new TorchTensorDumper().dump(state(1), path);
    const seen: [number, number][] = [];
    await new TorchTensorLoader().load(path, { onProgress: (done, total) => seen.push([done, total]) });
    assert.ok(seen.length > 0);
    const [done, total] = seen.at(-1)!;
    assert.equal(done, total);
    // Large tensors are read in place one by one: one report per storage.
    const large = (fill: number): StateDict => ({ a: Tensor.from(new Float32Array(1 << 20).fill(fill)), b: Tensor.from(new Float32Array(1 << 20).fill(fill)) });
    const largePath = join(dir, "progress-large.pt");
    await new TorchTensorDumper().dump(large(1), largePath);
    const seenInto: [number, number][] = [];
    await new TorchTensorLoader().load(largePath, { into: large(0), onProgress: (d, t) => seenInto.push([d, t]) });
    assert.equal(seenInto.at(-1)![0], seenInto.at(-1)![1]);
    assert.equal(seenInto.length, 2, "one report per storage");
  });
});

describe("loading a checkpoint into existing tensors", () => {
  it("refuses a live tensor of another shape, naming the file, the key path and both shapes", async () => {
    const checkpointDir = join(dir, "into-manager");
    const manager = new FileCheckpointManager({ checkpointDir });
    await manager.beginCheckpoint(1);
    await manager.saveState({ model: { w: Tensor.from(new Float32Array(6), { shape: [2, 3] }) }, optimizer: { m: Tensor.from(new Float32Array(6)) } });
    await manager.commitCheckpoint();
    const into = { model: { w: Tensor.zeros([2, 3]) }, optimizer: { m: Tensor.zeros([3, 2]) } };
    await assert.rejects(manager.loadCheckpoint(1, { into }), (error: unknown) => {
      assert.ok(error instanceof CheckpointLoadError);
      assert.equal(error.stepNr, 1);
      assert.match(error.message, /rank_0\.pt of checkpoint 1 cannot be loaded: .*into\.optimizer\.m is float32 \[3, 2\] but the file has float32 \[6\] there/);
      return true;
    });
    const state = await manager.loadCheckpoint(1, { into: { model: into.model } });
    assert.equal((state.model as StateDict).w, into.model.w, "a matching live tensor is filled in place");
    await manager.close();
  });
});

describe("loading into existing tensors with an expected digest", () => {
  for (const [label, elements] of [["large", 1 << 21], ["small", 64]] as const) {
    it(`refuses a file whose bytes between ${label} entries changed, though every entry's own CRC still holds`, async () => {
      const path = join(dir, `into-digest-${label}.pt`);
      const make = (fill: number): StateDict => ({ w: Tensor.from(new Float32Array(elements).fill(fill)), b: Tensor.from(new Float32Array(4).fill(fill)) });
      const digest = await new TorchTensorDumper().dump(make(4), path);
      const target = make(0);
      await new TorchTensorLoader().load(path, { into: target, expectedDigest: digest });
      assert.ok(((target.w as Tensor).data as Float32Array).every((v) => v === 4), "a sound file loads in place");

      const bytes = await readFile(path);
      bytes[bytes.length - 22 + 4]! ^= 0x01; // the end record's disk number, which readers ignore: only the file CRC changes
      await writeFile(path, bytes);
      await new TorchTensorLoader().load(path, { into: make(0) }); // still a valid zip on its own
      await assert.rejects(new TorchTensorLoader().load(path, { into: make(0), expectedDigest: digest }), /corrupt: its CRC-32 is [0-9a-f]{8}, it should be/);
    });
  }
});
