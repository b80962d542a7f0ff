import { join } from "node:path";
import type { Description } from "./describe.js";
import { runPython } from "./torch-python.js";

const HELPERS = import.meta.dirname;

/**
 * Writes a small model as Hugging Face publishes it: its state dict cut into three shards and an
 * index with `metadata.total_size` and a `weight_map`. Shards are safetensors (laid out by the
 * format's rules, from the tensors' bytes), torch.save zip files, or torch.save zip files with the
 * last one in the legacy format. Prints the description of the full state dict (a plain dict, in
 * state-dict order, which is also the weight map's).
 */
const WRITE_SHARDED_MODEL = `
import collections, json, os, struct, sys, torch
sys.dont_write_bytecode = True
sys.path.insert(0, sys.argv[3])
from describe import describe
out, kind = sys.argv[1], sys.argv[2]

torch.manual_seed(0)
state = collections.OrderedDict()
state["embed.weight"] = torch.randn(256, 64)
for i in range(3):
    state[f"layers.{i}.proj.weight"] = torch.randn(256, 256)
    state[f"layers.{i}.proj.bias"] = torch.arange(4, dtype=torch.float16) * (i + 1)
    state[f"layers.{i}.norm.scale"] = torch.full((4,), 0.5 * i, dtype=torch.bfloat16)
state["head.steps"] = torch.tensor([1, 2, 3], dtype=torch.int64)
names = list(state)
parts = [names[:3], names[3:7], names[7:]]

SAFETENSORS_DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.int64: "I64"}
def write_safetensors(path, tensors):
    header, data = {"__metadata__": {"format": "pt"}}, b""
    for name, tensor in tensors.items():
        raw = tensor.contiguous().view(torch.int16 if tensor.dtype == torch.bfloat16 else tensor.dtype).numpy().tobytes()
        header[name] = {"dtype": SAFETENSORS_DTYPES[tensor.dtype], "shape": list(tensor.shape), "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + data)

weight_map, total = {}, 0
for k, part in enumerate(parts):
    tensors = collections.OrderedDict((name, state[name].clone()) for name in part)
    if kind == "safetensors":
        file = f"model-{k + 1:05d}-of-{len(parts):05d}.safetensors"
        write_safetensors(os.path.join(out, file), tensors)
    else:
        file = f"pytorch_model-{k + 1:05d}-of-{len(parts):05d}.bin"
        legacy = kind == "bin-legacy" and k == len(parts) - 1
        torch.save(tensors, os.path.join(out, file), _use_new_zipfile_serialization=not legacy)
    for name, tensor in tensors.items():
        weight_map[name] = file
        total += tensor.numel() * tensor.element_size()
index = "model.safetensors.index.json" if kind == "safetensors" else "pytorch_model.bin.index.json"
with open(os.path.join(out, index), "w") as f:
    json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
print(json.dumps(describe(dict(state))))
`;

export interface ShardedModel {
  dir: string;
  indexPath: string;
  expected: Description;
}

export async function writeShardedModel(python: string, dir: string, kind: "safetensors" | "bin" | "bin-legacy"): Promise<ShardedModel> {
  const expected = JSON.parse(runPython(python, WRITE_SHARDED_MODEL, [dir, kind, HELPERS])) as Description;
  const indexPath = join(dir, kind === "safetensors" ? "model.safetensors.index.json" : "pytorch_model.bin.index.json");
  return { dir, indexPath, expected };
}
