// Storage keys in a .pt file: PyTorch writes "0", "1", …, which the reader looks up by number
// (src/formats/torch/torch-reader.ts); any other key, a number written another way ("07") or one
// at or past the entry count goes through names. Each must find its own entry, shared keys one
// storage, and a key without an entry or used with two dtypes must be refused.
import assert from "node:assert/strict";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, test } from "node:test";
import { FormatError } from "../src/errors.js";
import { MemoryReader } from "../src/formats/byte-io.js";
import { Op } from "../src/formats/pickle/opcodes.js";
import { readTorchStorages, readTorchStructure } from "../src/formats/torch/torch-reader.js";
import { ZipReader } from "../src/formats/zip/zip-reader.js";
import { TorchTensorLoader } from "../src/io/torch-tensor-io.js";
import { Tensor } from "../src/tensor/tensor.js";
import { global, pickle, str, torchZip } from "./helpers/pickle-bytes.js";

const tempDirs: string[] = [];
after(async () => {
  for (const dir of tempDirs) await rm(dir, { recursive: true, force: true });
});

/** A rebuild of a whole storage `key` of `numel` elements of `storageType` (FloatStorage: float32). */
function tensorOf(key: string, numel: number, storageType = "FloatStorage"): number[] {
  return [
    ...global("torch._utils", "_rebuild_tensor_v2"),
    Op.MARK,
    Op.MARK, ...str("storage"), ...global("torch", storageType), ...str(key), ...str("cpu"), Op.BININT1, numel, Op.TUPLE,
    Op.BINPERSID,
    Op.BININT1, 0,
    Op.BININT1, numel, Op.TUPLE1,
    Op.BININT1, 1, Op.TUPLE1,
    Op.NEWFALSE,
    ...global("collections", "OrderedDict"), Op.EMPTY_TUPLE, Op.REDUCE,
    Op.TUPLE, Op.REDUCE,
  ];
}

function floats(...values: number[]): Uint8Array {
  return new Uint8Array(new Float32Array(values).buffer);
}

async function readState(file: Uint8Array): Promise<unknown> {
  const zip = await ZipReader.open(new MemoryReader(file));
  return readTorchStorages(zip, await readTorchStructure(zip));
}

test("numbered, shared, non-canonical, past-the-count and named keys each find their own entry", async () => {
  // Eight entries (data.pkl, byteorder, version and five storages): "9" is past the count.
  const keys = ["0", "1", "07", "9", "key"];
  const storages: Record<string, Uint8Array> = {};
  keys.forEach((key, i) => (storages[key] = floats(i * 10 + 1, i * 10 + 2)));
  const bytes = pickle(Op.EMPTY_LIST, Op.MARK, ...keys.flatMap((key) => tensorOf(key, 2)), ...tensorOf("1", 2), Op.APPENDS);
  const file = await torchZip(bytes, storages);

  const dir = await mkdtemp(join(tmpdir(), "ckpt-storage-keys-"));
  tempDirs.push(dir);
  await writeFile(join(dir, "keys.pt"), file);
  for (const [how, state] of [["in memory", await readState(file)], ["TorchTensorLoader.load", await new TorchTensorLoader().load(join(dir, "keys.pt"))]] as const) {
    assert.ok(Array.isArray(state), how);
    assert.equal(state.length, 6, how);
    const tensors = state.map((value) => {
      assert.ok(value instanceof Tensor, how);
      return value;
    });
    keys.forEach((key, i) => assert.deepEqual([...tensors[i]!.data], [i * 10 + 1, i * 10 + 2], `${how}: storage "${key}"`));
    assert.equal(tensors[5]!.storage, tensors[1]!.storage, `${how}: key "1" named twice is one storage`);
    assert.notEqual(tensors[2]!.storage, tensors[5]!.storage, `${how}: "07" is not "7" nor "1"`);
  }
});

test("a numbered or named key without its entry, or used with two dtypes, is refused with the key named", async () => {
  const cases: [string, number[], Record<string, Uint8Array>, RegExp][] = [
    ["a numbered key without an entry", tensorOf("1", 2), { 0: floats(1, 2) }, /storage "1" has no entry archive\/data\/1/],
    ["a non-canonical key whose number has an entry", tensorOf("00", 2), { 0: floats(1, 2) }, /storage "00" has no entry archive\/data\/00/],
    ["a named key without an entry", tensorOf("x", 2), { 0: floats(1, 2) }, /storage "x" has no entry archive\/data\/x/],
    ["a numbered key used as float32 and float64", [Op.MARK, ...tensorOf("0", 2), ...tensorOf("0", 1, "DoubleStorage"), Op.TUPLE], { 0: floats(1, 2) }, /storage "0" is used as both float32 and float64/],
    ["a named key used as float32 and float64", [Op.MARK, ...tensorOf("w", 2), ...tensorOf("w", 1, "DoubleStorage"), Op.TUPLE], { w: floats(1, 2) }, /storage "w" is used as both float32 and float64/],
  ];
  for (const [what, parts, storages, message] of cases) {
    await assert.rejects(readState(await torchZip(pickle(...parts), storages)), (error: unknown) => error instanceof FormatError && message.test(error.message), what);
  }
});
