// A tensor's rebuild call is written op by op the first time for its dtype and as raw bytes with
// the memo indexes learned after that (src/formats/torch/rebuild-writer.ts). Both ways must give
// the same bytes for every kind of tensor, and PyTorch must load what they write.
import assert from "node:assert/strict";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, test } from "node:test";
import { pickleState } from "../src/formats/torch/torch-writer.js";
import { TorchTensorDumper } from "../src/io/torch-tensor-io.js";
import { Storage } from "../src/tensor/storage.js";
import { Tensor } from "../src/tensor/tensor.js";
import type { StateDict } from "../src/values/py-values.js";
import { requireTorch, runPython } from "./helpers/torch-python.js";

const tempDirs: string[] = [];
after(async () => {
  for (const dir of tempDirs) await rm(dir, { recursive: true, force: true });
});

/** One of each kind the raw path must get right, with memo references in the long form. */
function variedState(): StateDict {
  const state: StateDict = {};
  // 300 strings before the first tensor: the globals and strings every rebuild call repeats get
  // memo indexes past 255, so the raw calls refer to them in the long form (LONG_BINGET).
  state.names = Array.from({ length: 300 }, (_, i) => `name ${i}`);
  const wide = new Storage("float32", new Uint8Array(4 * 70_000)); // numel and offsets past 2^16: BININT
  new Float32Array(wide.bytes.buffer).forEach((_, i, a) => (a[i] = i % 97));
  state.wide = new Tensor({ storage: wide, shape: [70_000] });
  state.wideView = new Tensor({ storage: wide, shape: [300, 2], strides: [2, 1], offset: 66_000 }); // shares a storage
  state.scalar = Tensor.from(new Float64Array([2.5]), { shape: [] });
  state.fiveD = Tensor.from(new Int32Array(2 * 3 * 1 * 2 * 2).map((_, i) => i), { shape: [2, 3, 1, 2, 2] });
  state.empty = Tensor.from(new Float32Array(0), { shape: [0, 4] });
  state.transposed = new Tensor({ storage: new Storage("int64", new Uint8Array(8 * 6)), shape: [3, 2], strides: [1, 3] });
  state.flags = Tensor.from(new Uint8Array([1, 0, 1]), { dtype: "bool" });
  state.half = Tensor.from(new Uint16Array([0x3c00, 0x4000]), { dtype: "float16" });
  state.weight = new Tensor({ storage: new Storage("float32", new Uint8Array(4 * 4)), shape: [2, 2], isParameter: true, requiresGrad: true });
  state.frozen = new Tensor({ storage: new Storage("float32", new Uint8Array(4 * 3)), shape: [3], isParameter: true });
  state.grad = Tensor.from(new Float32Array(3).fill(1), { requiresGrad: true });
  // A stride that needs all four bytes of a BININT, and one past 2^31 (a dimension of one each): the
  // second written op by op in the middle of raw ones.
  state.bigStride = new Tensor({ storage: new Storage("float32", new Uint8Array(4 * 2)), shape: [1, 2], strides: [2 ** 30 + 3, 1] });
  state.hugeStride = new Tensor({ storage: new Storage("float32", new Uint8Array(4 * 2)), shape: [1, 2], strides: [2 ** 31, 1] });
  const layers: Record<string, Tensor> = {};
  for (let i = 0; i < 300; i++) layers[`layers.${i}.weight`] = Tensor.from(new Float32Array(i % 5 + 1).fill(i), { shape: [i % 5 + 1] });
  state.layers = layers;
  state.again = state.weight; // a tensor met twice is one memo reference
  return state;
}

test("rebuild calls written as raw bytes are the bytes written op by op", () => {
  const raw = pickleState(variedState(), {}, true);
  const ops = pickleState(variedState(), {}, false);
  assert.equal(raw.storages.length, ops.storages.length);
  assert.equal(raw.storageBytes, ops.storageBytes);
  assert.equal(Buffer.from(raw.pickle).toString("hex"), Buffer.from(ops.pickle).toString("hex"));
});

test("PyTorch loads the tensors the raw rebuild calls describe", async (t) => {
  const python = requireTorch(t);
  if (python === null) return;
  const dir = await mkdtemp(join(tmpdir(), "ckpt-rebuild-writer-"));
  tempDirs.push(dir);
  const path = join(dir, "varied.pt");
  await new TorchTensorDumper().dump(variedState(), path);
  const script = `
import json, sys, torch
state = torch.load(sys.argv[1])
def describe(t):
    return [str(t.dtype), list(t.shape), list(t.stride()), t.storage_offset(), t.requires_grad, isinstance(t, torch.nn.Parameter), float(t.double().sum())]
out = {k: describe(v) for k, v in state.items() if k not in ("layers", "names")}
out["names"] = [state["names"][0], state["names"][299], len(state["names"])]
out["layers"] = [describe(state["layers"][f"layers.{i}.weight"]) for i in (0, 1, 255, 299)]
out["sharesWide"] = state["wideView"].storage().data_ptr() == state["wide"].storage().data_ptr()
out["again"] = state["again"] is state["weight"]
print(json.dumps(out))`;
  const got = JSON.parse(runPython(python, script, [path])) as Record<string, unknown>;
  const wideSum = Array.from({ length: 70_000 }, (_, i) => i % 97).reduce((a, b) => a + b, 0);
  const viewSum = Array.from({ length: 600 }, (_, i) => (66_000 + i) % 97).reduce((a, b) => a + b, 0);
  assert.deepEqual(got.wide, ["torch.float32", [70000], [1], 0, false, false, wideSum]);
  assert.deepEqual(got.wideView, ["torch.float32", [300, 2], [2, 1], 66000, false, false, viewSum]);
  assert.deepEqual(got.scalar, ["torch.float64", [], [], 0, false, false, 2.5]);
  assert.deepEqual(got.fiveD, ["torch.int32", [2, 3, 1, 2, 2], [12, 4, 4, 2, 1], 0, false, false, 276]);
  assert.deepEqual(got.empty, ["torch.float32", [0, 4], [4, 1], 0, false, false, 0]);
  assert.deepEqual(got.transposed, ["torch.int64", [3, 2], [1, 3], 0, false, false, 0]);
  assert.deepEqual(got.flags, ["torch.bool", [3], [1], 0, false, false, 2]);
  assert.deepEqual(got.half, ["torch.float16", [2], [1], 0, false, false, 3]);
  assert.deepEqual(got.weight, ["torch.float32", [2, 2], [2, 1], 0, true, true, 0]);
  assert.deepEqual(got.frozen, ["torch.float32", [3], [1], 0, false, true, 0]);
  assert.deepEqual(got.grad, ["torch.float32", [3], [1], 0, true, false, 3]);
  assert.deepEqual(got.bigStride, ["torch.float32", [1, 2], [2 ** 30 + 3, 1], 0, false, false, 0]);
  assert.deepEqual(got.hugeStride, ["torch.float32", [1, 2], [2 ** 31, 1], 0, false, false, 0]);
  assert.deepEqual(got.layers, [0, 1, 255, 299].map((i) => ["torch.float32", [i % 5 + 1], [1], 0, false, false, i * (i % 5 + 1)]));
  assert.deepEqual(got.names, ["name 0", "name 299", 300]);
  assert.equal(got.sharesWide, true);
  assert.equal(got.again, true);
});
