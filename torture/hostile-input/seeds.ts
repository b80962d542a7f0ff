/**
 * Valid files to mutate: .pt files this library writes and ones PyTorch wrote (test/fixtures,
 * zip and legacy format), a safetensors file, a sharded index with its shards, and a committed
 * checkpoint directory whose manifest.json, score.txt and model.yaml are mutated in turn.
 */
import { cp, mkdir, readFile, readdir, stat, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { FileCheckpointManager, SafetensorsDumper, Tensor, TorchTensorDumper, tuple, type StateDict, type StateValue } from "../../src/index.js";

export interface Seed {
  name: string;
  target: "tensor file" | "checkpoint dir";
  /** The directory holding the seed's files (copied whole for each case). */
  dir: string;
  /** The file mutated, relative to `dir`; the case loads `dir/<load>`. */
  mutable: string;
  load: string;
}

const FIXTURES = fileURLToPath(new URL("../../test/fixtures/", import.meta.url));
const TORCH_FIXTURES = ["model-state-dict.pt", "python-values.pt", "views.pt", "optimizer-state.pt", "legacy-python-values.pt", "legacy-views.pt", "legacy-optimizer-state.pt", "legacy-protocol4-python-values.pt"];

function ourState(): StateDict {
  const base = Tensor.from(Float32Array.from({ length: 24 }, (_, i) => i * 0.25), { shape: [4, 6] });
  return {
    model: { weight: base, view: base.transpose(0, 1), bias: Tensor.from(new Float64Array([1.5, -2])), ids: Tensor.from(new BigInt64Array([1n, 2n ** 40n])) },
    optimizer: new Map<number, StateDict[string]>([[0, { step: 3, moments: tuple<StateValue>(Tensor.from(new Int32Array([7, 8])), "adam") }]]),
    epoch: 2,
    name: "run",
  };
}

export async function makeSeeds(dir: string): Promise<Seed[]> {
  const seeds: Seed[] = [];
  const single = async (name: string, write: (path: string) => Promise<void>): Promise<void> => {
    const seedDir = join(dir, name.replace(/[^a-z0-9.-]/gi, "_"));
    await mkdir(seedDir, { recursive: true });
    await write(join(seedDir, name));
    seeds.push({ name, target: "tensor file", dir: seedDir, mutable: name, load: name });
  };
  await single("ours.pt", async (path) => void (await new TorchTensorDumper().dump(ourState(), path)));
  // A larger file, so the allocation ratio is also measured where fixed buffers do not dominate.
  const large = { ...ourState(), big: Tensor.from(Float32Array.from({ length: 1 << 18 }, (_, i) => i % 977)) };
  await single("ours-1mib.pt", async (path) => void (await new TorchTensorDumper().dump(large, path)));
  for (const fixture of TORCH_FIXTURES) await single(fixture, (path) => cp(join(FIXTURES, fixture), path));
  const tensors = { weight: Tensor.from(Float32Array.from({ length: 24 }, (_, i) => i)), bias: Tensor.from(new Float64Array([1, 2])) };
  await single("model.safetensors", async (path) => void (await new SafetensorsDumper().dump(tensors, path)));

  const indexDir = join(dir, "index");
  await mkdir(indexDir, { recursive: true });
  await new SafetensorsDumper().dump({ "a.weight": tensors.weight }, join(indexDir, "model-00001-of-00002.safetensors"));
  await new SafetensorsDumper().dump({ "b.bias": tensors.bias }, join(indexDir, "model-00002-of-00002.safetensors"));
  const index = { metadata: { total_size: 112 }, weight_map: { "a.weight": "model-00001-of-00002.safetensors", "b.bias": "model-00002-of-00002.safetensors" } };
  await writeFile(join(indexDir, "model.safetensors.index.json"), JSON.stringify(index, null, 2));
  seeds.push({ name: "model.safetensors.index.json", target: "tensor file", dir: indexDir, mutable: "model.safetensors.index.json", load: "model.safetensors.index.json" });

  const checkpointDir = join(dir, "checkpoint");
  const manager = new FileCheckpointManager({ checkpointDir });
  await manager.saveModelMetadata({ family: "toy", config: { width: 4, layers: [1, 2] } });
  for (const step of [1, 2]) {
    await manager.beginCheckpoint(step);
    await manager.saveState(ourState());
    await manager.saveScore(step * 1.5);
    await manager.commitCheckpoint();
  }
  await manager.close();
  for (const file of ["step_2/manifest.json", "step_2/score.txt", "model.yaml"]) {
    seeds.push({ name: file, target: "checkpoint dir", dir: checkpointDir, mutable: file, load: "." });
  }
  return seeds;
}

/** The total bytes of the files under a directory. */
export async function bytesUnder(dir: string): Promise<number> {
  let total = 0;
  for (const entry of await readdir(dir, { recursive: true })) {
    const info = await stat(join(dir, entry.toString())).catch(() => undefined);
    if (info?.isFile()) total += info.size;
  }
  return total;
}

export async function readSeedFile(seed: Seed): Promise<Uint8Array> {
  return readFile(join(seed.dir, seed.mutable));
}
