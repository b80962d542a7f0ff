// Per-tensor cost of saving and loading many small tensors, in one process, several rounds:
// the tool behind docs/design.md "Per-tensor cost". Run it under `node --cpu-prof` to profile.
//
//   node --import tsx bench/per-tensor.ts [--count N] [--rounds R] [--only save|load|load-torch|discard] DIR
//
// DIR/torch.pt (written by torch.save of the same structure, see bench/torch_peer.py prepare) is
// loaded too when it is there. Prints µs per tensor for each operation and round.
import { existsSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { LocalFileSystem, TorchTensorDumper, TorchTensorLoader, type FileSystem, type FileWriter } from "../src/index.js";
import { buildState, countTensorBytes, stateBytes, type ScenarioSpec } from "./scenarios.js";

const { values, positionals } = parseArgs({
  allowPositionals: true,
  options: { count: { type: "string", default: "20000" }, rounds: { type: "string", default: "5" }, only: { type: "string" }, "write-spec": { type: "boolean", default: false } },
});
const dir = positionals[0];
if (dir === undefined) throw new Error("usage: per-tensor.ts [--count N] [--rounds R] [--only OP] DIR");
const count = Number(values.count);
const spec: ScenarioSpec = { id: "b", title: "small", parameters: Array.from({ length: count }, (_, i) => ({ name: `params.${i}`, shape: [1024] })), adam: false };
if (values["write-spec"]) {
  writeFileSync(join(dir, "spec.json"), JSON.stringify(spec));
  process.exit(0);
}

function discarding(): FileSystem {
  const local = new LocalFileSystem();
  const writer: FileWriter = { write: async () => undefined, close: async () => undefined, abort: async () => undefined };
  return Object.assign(Object.create(local) as FileSystem, { createWriter: async () => writer });
}

const { state } = buildState(spec);
const ours = join(dir, "ours.pt");
const torchFile = join(dir, "torch.pt");
const ops: [string, () => Promise<unknown>][] = [
  ["save", () => new TorchTensorDumper().dump(state, ours)],
  ["discard", () => new TorchTensorDumper({ fileSystem: discarding() }).dump(state, ours)],
  ["load", async () => check(await new TorchTensorLoader().load(ours))],
  ["load-torch", async () => (existsSync(torchFile) ? check(await new TorchTensorLoader().load(torchFile)) : undefined)],
];
function check(value: unknown): void {
  const bytes = countTensorBytes(value as never);
  if (bytes !== stateBytes(spec)) throw new Error(`loaded ${bytes} bytes, expected ${stateBytes(spec)}`);
}
await ops[0]![1]();
const results = new Map<string, number[]>();
for (let round = 0; round < Number(values.rounds); round++) {
  for (const [name, run] of ops) {
    if (values.only !== undefined && name !== values.only && !(name === "save" && round === 0 && false)) continue;
    if (name === "load-torch" && !existsSync(torchFile)) continue;
    const start = performance.now();
    await run();
    const us = ((performance.now() - start) * 1000) / count;
    results.set(name, [...(results.get(name) ?? []), us]);
  }
}
for (const [name, us] of results) {
  const sorted = [...us].sort((a, b) => a - b);
  console.log(`${name.padEnd(11)} median ${sorted[sorted.length >> 1]!.toFixed(2)} µs/tensor  runs ${us.map((x) => x.toFixed(1)).join(" ")}`);
}
