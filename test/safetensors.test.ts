import assert from "node:assert/strict";
import { readFile, readdir, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { test } from "node:test";

import { MemoryReader, MemorySink } from "../src/formats/byte-io.js";
import {
  CheckpointLoadError,
  CheckpointSaveError,
  FileCheckpointManager,
  FormatError,
  SafetensorsDumper,
  SafetensorsLoader,
  Tensor,
  TensorDumpError,
  TensorLoadError,
  readSafetensors,
  readSafetensorsHeader,
  writeSafetensors,
  type StateDict,
} from "../src/index.js";
import { arange, assertSameState, modelState, useTempDirs } from "./helpers/checkpoint-helpers.js";
import { requireTorch, runPython } from "./helpers/torch-python.js";

const tempDir = useTempDirs("safetensors");

/** One tensor of every dtype, with odd sizes so alignment matters, plus an empty and a 0-d tensor. */
function everyDtype(): StateDict {
  return {
    f32: arange(1, [2, 3]),
    f64: Tensor.from(new Float64Array([0.1, -2.5, Number.NaN])),
    f16: Tensor.from(Uint16Array.from([0x3c00, 0xc000, 0x7c00]), { dtype: "float16" }),
    bf16: Tensor.from(Uint16Array.from([0x3fc0, 0x4020]), { dtype: "bfloat16" }),
    i8: Tensor.from(Int8Array.from([-128, 0, 127])),
    u8: Tensor.from(Uint8Array.from([0, 255, 7])),
    i16: Tensor.from(Int16Array.from([-32768, 32767, 1])),
    i32: Tensor.from(Int32Array.from([-(2 ** 31), 2 ** 31 - 1, 5])),
    i64: Tensor.from(BigInt64Array.from([-(2n ** 63n), 2n ** 63n - 1n, 3n])),
    bool: Tensor.from(Uint8Array.from([1, 0, 1]), { dtype: "bool" }),
    c64: Tensor.from(new Float32Array([1, 2, 3, 4]), { dtype: "complex64" }),
    empty: Tensor.zeros([0, 3]),
    scalar: Tensor.from(new Float32Array([42]), { shape: [] }),
  };
}

async function toBytes(tensors: [string, Tensor][], metadata?: Map<string, string>): Promise<Uint8Array> {
  const sink = new MemorySink();
  await writeSafetensors(tensors, metadata, sink);
  return sink.toBytes();
}

/** A file from a header given as JSON text (or bytes) and `dataSize` bytes of data, built byte by byte. */
function fileWith(header: string | Uint8Array, dataSize = 0, lengthField?: bigint): Uint8Array {
  const json = typeof header === "string" ? new TextEncoder().encode(header) : header;
  const bytes = new Uint8Array(8 + json.length + dataSize);
  new DataView(bytes.buffer).setBigUint64(0, lengthField ?? BigInt(json.length), true);
  bytes.set(json, 8);
  return bytes;
}

async function headerError(bytes: Uint8Array): Promise<FormatError> {
  try {
    await readSafetensors(new MemoryReader(bytes));
  } catch (error) {
    assert.ok(error instanceof FormatError, `a FormatError, got ${String(error)}`);
    return error;
  }
  assert.fail("the file was accepted");
}

// ------------------------------------------------------------------ the format

test("every dtype, an empty and a 0-d tensor round trip through safetensors bytes", async () => {
  const state = everyDtype();
  const bytes = await toBytes(Object.entries(state) as [string, Tensor][]);
  const { header, tensors } = await readSafetensors(new MemoryReader(bytes));
  assert.deepEqual(header.entries.map((e) => e.name), Object.keys(state), "the header keeps the order given");
  assertSameState(Object.fromEntries(tensors), state);
});

test("the layout follows the format: u64 length, space-padded JSON to a multiple of 8, tensors tiling the data, each aligned to its element size", async () => {
  const state = everyDtype();
  const bytes = await toBytes(Object.entries(state) as [string, Tensor][], new Map([["format", "pt"]]));
  const length = Number(new DataView(bytes.buffer, bytes.byteOffset).getBigUint64(0, true));
  assert.equal(length % 8, 0, "header length is a multiple of 8");
  const text = new TextDecoder().decode(bytes.subarray(8, 8 + length));
  assert.match(text, /^\{"__metadata__":\{"format":"pt"\},"f32":\{"dtype":"F32","shape":\[2,3\],"data_offsets":\[\d+,\d+\]\}/);
  assert.match(text, /\} *$/, "padding is spaces");
  const header = JSON.parse(text) as Record<string, { dtype: string; shape: number[]; data_offsets: [number, number] }>;
  const ranges = Object.entries(header).filter(([k]) => k !== "__metadata__").map(([, v]) => v.data_offsets).sort((a, b) => a[0] - b[0]);
  let position = 0;
  for (const [begin, end] of ranges) {
    assert.equal(begin, position, "no gap, no overlap");
    position = end;
  }
  assert.equal(8 + length + position, bytes.length, "nothing after the data");
  const sizes: Record<string, number> = { F64: 8, I64: 8, C64: 8, F32: 4, I32: 4, F16: 2, BF16: 2, I16: 2 };
  for (const [name, entry] of Object.entries(header)) {
    if (name !== "__metadata__") assert.equal((8 + length + entry.data_offsets[0]) % (sizes[entry.dtype] ?? 1), 0, `${name} is aligned`);
  }
});

test("non-contiguous views are written in row-major order and views of one storage each get their own bytes", async () => {
  const base = arange(0, [2, 3]);
  const bytes = await toBytes([["t", base.transpose(0, 1)], ["same", base], ["row", base.reshape([6])]]);
  const { tensors } = await readSafetensors(new MemoryReader(bytes));
  const byName = Object.fromEntries(tensors);
  assert.deepEqual([...(byName.t!.data as Float32Array)], [0, 3, 1, 4, 2, 5]);
  assert.deepEqual([...byName.t!.shape], [3, 2]);
  assert.deepEqual([...(byName.row!.data as Float32Array)], [0, 1, 2, 3, 4, 5]);
});

test("loaded tensors of a small file are views of the one segment the file was read into (zero copies)", async () => {
  const dir = await tempDir();
  const path = join(dir, "m.safetensors");
  await new SafetensorsDumper().dump(modelState(3), path);
  const state = (await new SafetensorsLoader().load(path)) as StateDict;
  const buffers = new Set(Object.values(state).map((t) => (t as Tensor).storage.bytes.buffer));
  assert.equal(buffers.size, 1);
  assertSameState(state, modelState(3));
});

test("hostile headers built byte by byte are clear FormatErrors, checked before any allocation", async () => {
  const t = (dtype: string, shape: unknown, offsets: unknown): string => JSON.stringify({ dtype, shape, data_offsets: offsets });
  const cases: [string, Uint8Array, RegExp][] = [
    ["shorter than the length field", new Uint8Array(5), /too few for the 8-byte header length/],
    ["a header length of 2^64 - 1", fileWith("{}", 0, 2n ** 64n - 1n), /more than the 100000000/],
    ["a header length past the end", fileWith("{}", 0, 1000n), /only 2 follow: the file is truncated/],
    ["bad JSON", fileWith('{"a": {"dtype": "F32",'), /not valid JSON/],
    ["JSON that is not an object", fileWith("[1, 2]   "), /does not start with '\{'/],
    ["text after the object", fileWith("{} x"), /unexpected text after/],
    ["invalid UTF-8", fileWith(Uint8Array.from([0x7b, 0xff, 0xfe, 0x7d])), /not valid UTF-8/],
    ["a duplicate tensor name", fileWith(`{"a":${t("U8", [1], [0, 1])},"a":${t("U8", [1], [1, 2])}}`, 2), /the key "a" twice/],
    ["overlapping tensors", fileWith(`{"a":${t("U8", [4], [0, 4])},"b":${t("U8", [4], [2, 6])}}`, 6), /overlaps the tensor before it/],
    ["a gap between tensors", fileWith(`{"a":${t("U8", [2], [0, 2])},"b":${t("U8", [2], [4, 6])}}`, 6), /gap of 2 bytes before tensor "b"/],
    ["an end past the data", fileWith(`{"a":${t("U8", [8], [0, 8])}}`, 4), /ends at 8, past the 4 bytes of data/],
    ["an end before the begin", fileWith(`{"a":${t("U8", [0], [3, 1])}}`, 4), /ends \(1\) before it begins \(3\)/],
    ["an offset beyond 2^53", fileWith(`{"a":${t("U8", [1], [0, "X"]).replace('"X"', "99999999999999999999")}}`, 1), /ends at 99999999999999999999, past/],
    ["bytes after the last tensor", fileWith(`{"a":${t("U8", [2], [0, 2])}}`, 5), /3 bytes belong to no tensor/],
    ["an unknown dtype", fileWith(`{"a":${t("Q7", [1], [0, 1])}}`, 1), /dtype "Q7", not a safetensors dtype/],
    ["a dtype ckpt lacks", fileWith(`{"a":${t("U32", [1], [0, 4])}}`, 4), /dtype "U32", a safetensors dtype that ckpt's tensors do not support/],
    ["a shape that does not fit the offsets", fileWith(`{"a":${t("F32", [2, 3], [0, 20])}}`, 20), /shape \[2, 3\] of float32, 24 bytes, but its data_offsets span 20 bytes/],
    ["a huge shape", fileWith(`{"a":${t("F32", [1e6, 1e6, 1e6], [0, 4])}}`, 4), /data_offsets span 4 bytes/],
    ["a negative dimension", fileWith(`{"a":${t("F32", [-1], [0, 4])}}`, 4), /dimension 0 of tensor "a" is not a non-negative integer/],
    ["a fractional dimension", fileWith(`{"a":${t("F32", [1.5], [0, 4])}}`, 4), /not a non-negative integer/],
    ["65 dimensions", fileWith(`{"a":${t("U8", new Array(65).fill(1), [0, 1])}}`, 1), /65 dimensions, more than 64/],
    ["no data_offsets", fileWith('{"a":{"dtype":"U8","shape":[1]}}', 1), /no data_offsets/],
    ["metadata that is not strings", fileWith('{"__metadata__":{"n":1}}'), /__metadata__.n is not a string/],
    ["nesting 10,000 levels deep", fileWith(`{"a":${"[".repeat(10000)}${"]".repeat(10000)}}`), /nesting deeper than 16 levels/],
  ];
  for (const [what, bytes, message] of cases) {
    const error = await headerError(bytes);
    assert.match(error.message, message, what);
  }
});

test("a truncated file is refused cleanly at every length", async () => {
  const bytes = await toBytes(Object.entries(modelState(1)) as [string, Tensor][]);
  for (let length = 0; length < bytes.length; length++) {
    await headerError(bytes.subarray(0, length));
  }
});

test("the header is read without reading the data", async () => {
  const bytes = await toBytes([["big", Tensor.zeros([1024, 1024])]]);
  const reads: [number, number][] = [];
  const reader = { size: bytes.length, read: async (position: number, length: number) => (reads.push([position, length]), bytes.subarray(position, position + length)) };
  const header = await readSafetensorsHeader(reader);
  assert.deepEqual(header.entries[0]!.shape, [1024, 1024]);
  assert.ok(reads.every(([position, length]) => position + length <= header.dataStart));
});

// ------------------------------------------------------------------ the loader and dumper

test("a flat dict of tensors is written as plain safetensors; integer-like keys keep their order", async () => {
  const dir = await tempDir();
  const path = join(dir, "m.safetensors");
  const state = new Map<string, Tensor>([["10", arange(0, [1])], ["2", arange(1, [1])], ["b", arange(2, [1])]]);
  await new SafetensorsDumper().dump(state, path);
  const { header } = await readSafetensors(new MemoryReader(await readFile(path)));
  assert.deepEqual([...header.metadata!], [["format", "pt"]], "only the default metadata: no ckpt.state for a flat dict");
  const loaded = await new SafetensorsLoader().load(path);
  assert.ok(loaded instanceof Map, "a plain object would list '2' before '10'");
  assert.deepEqual([...loaded.keys()], ["10", "2", "b"]);
});

test("a nested state with strings comes back as it was; other readers see dotted names", async () => {
  const dir = await tempDir();
  const path = join(dir, "m.safetensors");
  const state = { model: { encoder: modelState(2), "head.bias": arange(5, [2]) }, model_key: "model", empty: {} };
  await new SafetensorsDumper({ metadata: { format: "pt", author: "test" } }).dump(state, path);
  const { header } = await readSafetensors(new MemoryReader(await readFile(path)));
  assert.deepEqual(header.entries.map((e) => e.name), ["model.encoder.encoder.weight", "model.encoder.encoder.bias", "model.encoder.head.weight", "model.head.bias"]);
  const { state: loaded, metadata } = await new SafetensorsLoader().loadWithMetadata(path);
  assertSameState(loaded, state);
  assert.deepEqual([...metadata], [["format", "pt"], ["author", "test"]]);
});

test("the dumper refuses what safetensors cannot hold, naming the value, and leaves no file", async () => {
  const dir = await tempDir();
  const path = join(dir, "bad.safetensors");
  const cases: [unknown, RegExp][] = [
    [{ model: modelState(1), step_nr: 5 }, /"step_nr" is a number/],
    [{ optimizer: { state: new Map([[0, {}]]) } }, /"optimizer.state" is a dict with non-string keys/],
    [{ a: [arange(0, [1])] }, /"a" is a list/],
    [{ a: { b: arange(0, [1]) }, "a.b": arange(0, [1]) }, /two tensors would both be named "a.b"/],
    [arange(0, [1]), /holds a dict of tensors, not a Tensor/],
  ];
  for (const [state, message] of cases) {
    await assert.rejects(new SafetensorsDumper().dump(state as StateDict, path), (error: unknown) => {
      assert.ok(error instanceof TensorDumpError);
      assert.match(error.message, message);
      return true;
    });
  }
  assert.deepEqual(await readdir(dir), [], "no file, not even a partial one");
});

test("a ckpt.state layout that does not fit the tensors is a load error", async () => {
  const dir = await tempDir();
  const path = join(dir, "m.safetensors");
  const bytes = await toBytes([["a", arange(0, [1])]], new Map([["ckpt.state", '[["b", 0]]']]));
  await writeFile(path, bytes);
  await assert.rejects(new SafetensorsLoader().load(path), (error: unknown) => {
    assert.ok(error instanceof TensorLoadError);
    assert.match(error.message, /m\.safetensors: not a valid safetensors file: the ckpt\.state metadata does not fit the file: it names a tensor "b"/);
    return true;
  });
});

test("loading into existing tensors fills them in place", async () => {
  const dir = await tempDir();
  const path = join(dir, "m.safetensors");
  await new SafetensorsDumper().dump({ model: modelState(4) }, path);
  const target = { model: modelState(0) };
  const weight = target.model["encoder.weight"] as Tensor;
  const loaded = (await new SafetensorsLoader().load(path, { into: target })) as StateDict;
  assert.equal((loaded.model as StateDict)["encoder.weight"], weight, "the same tensor object");
  assertSameState(loaded, { model: modelState(4) });
});

test("loading into a tensor of another shape or dtype is refused naming its path, before any tensor is written", async () => {
  const dir = await tempDir();
  const path = join(dir, "m.safetensors");
  await new SafetensorsDumper().dump({ model: modelState(4) }, path);
  for (const [replace, message] of [
    [{ "head.weight": Tensor.from(new BigInt64Array(4)) }, /into\.model\["head\.weight"\] is int64 \[4\] but the file has int64 \[3\] there/],
    [{ "encoder.bias": Tensor.from(new Float32Array(2)) }, /into\.model\["encoder\.bias"\] is float32 \[2\] but the file has float64 \[2\] there/],
  ] as const) {
    const target = { model: { ...modelState(0), ...replace } };
    const weight = (target.model as StateDict)["encoder.weight"] as Tensor;
    await assert.rejects(new SafetensorsLoader().load(path, { into: target }), (error: unknown) => {
      assert.ok(error instanceof TensorLoadError);
      assert.match(error.message, message);
      return true;
    });
    assert.deepEqual([...weight.data], [0, 1, 2, 3, 4, 5], "the tensor before it in the file was not written");
  }
});

// ------------------------------------------------------------------ the manager on safetensors

test("a manager given the safetensors loader and dumper saves and loads model-only states, and refuses training state clearly", async () => {
  const dir = await tempDir();
  const options = { checkpointDir: dir, tensorLoader: new SafetensorsLoader(), tensorDumper: new SafetensorsDumper() };
  const manager = new FileCheckpointManager(options);
  await manager.beginCheckpoint(10);
  await manager.saveState({ model: modelState(10) });
  await manager.commitCheckpoint();
  await manager.beginCheckpoint(20);
  await assert.rejects(manager.saveState({ model: modelState(20), step_nr: 20 }), (error: unknown) => {
    assert.ok(error instanceof CheckpointSaveError);
    assert.match(error.message, /rank_0\.pt: cannot save the state as safetensors: "step_nr" is a number/);
    return true;
  });
  await manager.close();

  const reader = new FileCheckpointManager(options);
  assertSameState(await reader.loadCheckpoint(10), { model: modelState(10) });
  assertSameState(await reader.loadModel(10), modelState(10));
  assert.deepEqual(await reader.getStepNumbers(), [10]);
  // The files keep fairseq2's names; their content is safetensors.
  const model = await readFile(join(dir, "step_10", "model.pt"));
  assert.equal(model[8], "{".charCodeAt(0));

  // The manifest's CRC is checked in the same pass as the read.
  model[model.length - 1]! ^= 0x01;
  await writeFile(join(dir, "step_10", "model.pt"), model);
  await assert.rejects(reader.loadModel(10), (error: unknown) => {
    assert.ok(error instanceof CheckpointLoadError);
    assert.match(error.message, /model\.pt of checkpoint 10 is corrupt .*CRC-32/);
    return true;
  });
});

// ------------------------------------------------------------------ other readers

const NUMPY_READER = `
import json, struct, sys, numpy as np
data = open(sys.argv[1], "rb").read()
(n,) = struct.unpack("<Q", data[:8])
header = json.loads(data[8:8 + n])
assert n % 8 == 0
body = data[8 + n:]
kinds = {"F32": "<f4", "F64": "<f8", "F16": "<f2", "BF16": "<u2", "I8": "i1", "U8": "u1", "I16": "<i2", "I32": "<i4", "I64": "<i8", "BOOL": "?", "C64": "<c8"}
out = {"__metadata__": header.pop("__metadata__", None)}
for name, info in header.items():
    begin, end = info["data_offsets"]
    array = np.frombuffer(body[begin:end], dtype=kinds[info["dtype"]]).reshape(info["shape"])
    values = array.view("<u2").tolist() if info["dtype"] == "BF16" else array.tolist()
    out[name] = {"dtype": info["dtype"], "shape": list(array.shape), "values": json.loads(json.dumps(values, default=str).replace("NaN", "null").replace("Infinity", "null"))}
print(json.dumps(out, default=str))
`;

test("numpy reads our safetensors files with nothing but json and frombuffer", async (t) => {
  const python = requireTorch(t);
  if (python === null) return;
  const dir = await tempDir();
  const path = join(dir, "m.safetensors");
  const { c64: _, ...state } = everyDtype();
  await new SafetensorsDumper().dump(state, path);
  const parsed = JSON.parse(runPython(python, NUMPY_READER, [path])) as Record<string, { dtype: string; shape: number[]; values: unknown }>;
  assert.deepEqual(parsed.__metadata__, { format: "pt" });
  assert.deepEqual(parsed.f32, { dtype: "F32", shape: [2, 3], values: [[1, 2, 3], [4, 5, 6]] });
  assert.deepEqual(parsed.f64!.values, [0.1, -2.5, null]);
  assert.deepEqual(parsed.f16!.values, [1, -2, null]);
  assert.deepEqual(parsed.bf16!.values, [0x3fc0, 0x4020]);
  assert.deepEqual(parsed.i64!.values, ["-9223372036854775808", "9223372036854775807", "3"].map(Number));
  assert.deepEqual(parsed.bool!.values, [true, false, true]);
  assert.deepEqual(parsed.empty, { dtype: "F32", shape: [0, 3], values: [] });
  assert.deepEqual(parsed.scalar, { dtype: "F32", shape: [], values: 42 });
});

const REFERENCE_WRITER = `
import json, struct, sys, torch
# As the reference writer lays files out: keys sorted, data by dtype then name, header padded with spaces.
tensors = {"b.weight": torch.arange(6, dtype=torch.float32).reshape(2, 3), "a.bias": torch.tensor([1.5, -2.0], dtype=torch.bfloat16),
           "a.count": torch.tensor([7], dtype=torch.int64), "a.mask": torch.tensor([True, False, True])}
order = sorted(tensors, key=lambda k: (-tensors[k].element_size(), k))
header, body, offset = {"__metadata__": {"format": "pt"}}, b"", 0
for name in order:
    raw = tensors[name].contiguous().view(torch.uint8).numpy().tobytes() if tensors[name].dtype != torch.bfloat16 else tensors[name].view(torch.int16).numpy().tobytes()
    header[name] = {"dtype": {torch.float32: "F32", torch.bfloat16: "BF16", torch.int64: "I64", torch.bool: "BOOL"}[tensors[name].dtype], "shape": list(tensors[name].shape), "data_offsets": [offset, offset + len(raw)]}
    body += raw
    offset += len(raw)
text = json.dumps({k: header[k] for k in sorted(header)}, separators=(",", ":")).encode()
text += b" " * ((8 - len(text) % 8) % 8)
open(sys.argv[1], "wb").write(struct.pack("<Q", len(text)) + text + body)
`;

test("a safetensors file laid out as the reference writer does (sorted keys, data by dtype) loads", async (t) => {
  const python = requireTorch(t);
  if (python === null) return;
  const dir = await tempDir();
  const path = join(dir, "ref.safetensors");
  runPython(python, REFERENCE_WRITER, [path]);
  const state = (await new SafetensorsLoader().load(path)) as StateDict;
  assert.deepEqual(Object.keys(state), ["a.bias", "a.count", "a.mask", "b.weight"]);
  assertSameState(state, {
    "a.bias": Tensor.from(Uint16Array.from([0x3fc0, 0xc000]), { dtype: "bfloat16" }),
    "a.count": Tensor.from(BigInt64Array.from([7n])),
    "a.mask": Tensor.from(Uint8Array.from([1, 0, 1]), { dtype: "bool" }),
    "b.weight": arange(0, [2, 3]),
  });
});
