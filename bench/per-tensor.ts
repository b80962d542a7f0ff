// Per-tensor cost of saving and loading many small tensors: the tool behind docs/design.md
// "Per-tensor cost". Run it under `node --cpu-prof` to profile.
//
//   node --import tsx bench/per-tensor.ts [--count N] [--rounds R] [--only OP] [--baseline DIR | --library DIR] WORKDIR
//
// OP is save, discard (a save whose bytes are thrown away), manager (FileCheckpointManager
// begin/saveState/commit of the same state into WORKDIR/ckpt-NAME, a new step each run), load (our
// file), load-torch (WORKDIR/torch.pt, written by `python3 bench/torch_peer.py prepare
// WORKDIR/spec.json WORKDIR`; `--write-spec` writes that spec.json), into (our file loaded into
// existing tensors with `{ into }`, each checked to be filled in place; the targets are zeroed
// untimed) or into-torch (the same from torch.pt). --baseline DIR also runs the same operations
// with the library of another checkout (e.g. /work/main), interleaved round by round in this
// process: on a shared machine only such side-by-side ratios mean much. CKPT_PROFILE_DIST=1 uses
// dist/ (build first), so profiles show lines of plain JavaScript; prefer it for ratios too: tsx
// keeps function names by wrapping every closure it creates in a `__name(...)` call, a cost the
// built library does not have. Every load's values are checked.
import { existsSync, rmSync, writeFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { parseArgs } from "node:util";
import type { ScenarioSpec } from "./scenarios.js";

type Library = typeof import("../src/index.js");

const { values, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    count: { type: "string", default: "20000" },
    rounds: { type: "string", default: "5" },
    only: { type: "string" },
    baseline: { type: "string" },
    library: { type: "string" },
    "write-spec": { type: "boolean", default: false },
  },
});
const usage = "usage: per-tensor.ts [--count N] [--rounds R] [--only OP] [--baseline DIR] WORKDIR";
const dir: string = positionals[0] ?? (() => {
  throw new Error(usage);
})();
const count = Number(values.count);
const ELEMENTS = 1024;
const spec: ScenarioSpec = { id: "b", title: "small", parameters: Array.from({ length: count }, (_, i) => ({ name: `params.${i}`, shape: [ELEMENTS] })), adam: false };
if (values["write-spec"]) {
  writeFileSync(join(dir, "spec.json"), JSON.stringify(spec));
  process.exit(0);
}

const here = resolve(import.meta.dirname, "..");
async function library(root: string): Promise<Library> {
  return (await import(join(root, process.env.CKPT_PROFILE_DIST === "1" ? "dist/index.js" : "src/index.ts"))) as Library;
}

/** As bench/scenarios.ts buildState for this spec (tensor i filled with (i + 1) · 10⁻³), with `lib`'s Tensor. */
function buildState(lib: Library): Record<string, unknown> {
  const model: Record<string, unknown> = {};
  for (let i = 0; i < count; i++) model[`params.${i}`] = lib.Tensor.from(new Float32Array(ELEMENTS).fill((i + 1) * 1e-3), { shape: [ELEMENTS] });
  return { model, step_nr: 1000 };
}

/** Checks every loaded tensor's values, not only the byte count; with `live`, that each is that state's tensor. */
function check(value: unknown, live?: Record<string, unknown>): void {
  const model = (value as { model: Record<string, { data: Float32Array }> }).model;
  const liveModel = live?.model as Record<string, unknown> | undefined;
  for (let i = 0; i < count; i++) {
    if (liveModel !== undefined && model[`params.${i}`] !== liveModel[`params.${i}`]) throw new Error(`params.${i} was not loaded in place`);
    const data = model[`params.${i}`]?.data;
    const expected = Math.fround((i + 1) * 1e-3);
    if (data?.length !== ELEMENTS || data[0] !== expected || data[ELEMENTS - 1] !== expected) throw new Error(`params.${i} did not load its values`);
  }
}

function discarding(lib: Library): import("../src/index.js").FileSystem {
  const local = new lib.LocalFileSystem();
  const writer = { write: async () => undefined, close: async () => undefined, abort: async () => undefined };
  return Object.assign(Object.create(local) as import("../src/index.js").FileSystem, { createWriter: async () => writer });
}

const torchFile = join(dir, "torch.pt");
/** Each operation: its name, what is timed, and what runs untimed before it. */
function operations(name: string, lib: Library): [string, () => Promise<unknown>, (() => unknown)?][] {
  const state = buildState(lib);
  const ours = join(dir, `ours-${name}.pt`);
  const manager = new lib.FileCheckpointManager({ checkpointDir: join(dir, `ckpt-${name}`) });
  let step = 0;
  // The tensors a resuming process already has (built once; each load overwrites them all).
  const live = buildState(lib);
  const zeroLive = (): void => {
    for (const tensor of Object.values(live.model as Record<string, { data: Float32Array }>)) tensor.data.fill(0);
  };
  const into = async (path: string): Promise<void> => check(await new lib.TorchTensorLoader().load(path, { into: live as never }), live);
  return [
    [`save`, () => new lib.TorchTensorDumper().dump(state as never, ours)],
    [`discard`, () => new lib.TorchTensorDumper({ fileSystem: discarding(lib) }).dump(state as never, ours)],
    [
      `manager`,
      async () => {
        await manager.beginCheckpoint(++step);
        await manager.saveState(state as never);
        await manager.commitCheckpoint();
      },
      // Untimed, before each run: the checkpoint of the run before is deleted (disk space), and
      // the deletion finishes first so its work is not counted in the save.
      async () => {
        if (step > 0) await manager.deleteCheckpoint(step);
        await manager.waitForPendingDeletions();
      },
    ],
    [`load`, async () => check(await new lib.TorchTensorLoader().load(ours))],
    [`load-torch`, async () => check(await new lib.TorchTensorLoader().load(torchFile))],
    [`into`, () => into(ours), zeroLive],
    [`into-torch`, () => into(torchFile), zeroLive],
  ];
}

// --library DIR measures another checkout alone (to profile it the same way).
const libraries: [string, Library][] = [["this", await library(values.library === undefined ? here : resolve(values.library))]];
if (values.baseline !== undefined) libraries.push(["baseline", await library(resolve(values.baseline))]);
for (const [name] of libraries) rmSync(join(dir, `ckpt-${name}`), { recursive: true, force: true });
const plans = libraries.map(([name, lib]) => ({ name, ops: operations(name, lib).filter(([op]) => (values.only === undefined || values.only.split(",").includes(op)) && (!op.endsWith("-torch") || existsSync(torchFile))) }));
// Each library writes the file its loads read, and every operation runs once untimed (warm-up).
for (const [name, lib] of libraries) await operations(name, lib)[0]![1]();
for (const plan of plans) {
  for (const [, run, before] of plan.ops) {
    await before?.();
    await run();
  }
}

/** Wall-clock and CPU (every thread) µs per tensor: on a crowded machine the CPU time is steadier. */
const results = new Map<string, number[]>();
const cpuResults = new Map<string, number[]>();
for (let round = 0; round < Number(values.rounds); round++) {
  for (const plan of round % 2 === 0 ? plans : [...plans].reverse()) {
    for (const [op, run, before] of plan.ops) {
      await before?.();
      const cpuStart = process.cpuUsage();
      const start = performance.now();
      await run();
      const us = ((performance.now() - start) * 1000) / count;
      const cpu = process.cpuUsage(cpuStart);
      const key = `${op} (${plan.name})`;
      results.set(key, [...(results.get(key) ?? []), us]);
      cpuResults.set(key, [...(cpuResults.get(key) ?? []), (cpu.user + cpu.system) / count]);
    }
  }
}
const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[xs.length >> 1]!;
for (const [key, us] of results) {
  const op = key.split(" ")[0]!;
  const base = results.get(`${op} (baseline)`);
  const baseCpu = cpuResults.get(`${op} (baseline)`);
  const cpu = cpuResults.get(key)!;
  const ratio = base !== undefined && baseCpu !== undefined && !key.endsWith("(baseline)") ? `  ${(median(base) / median(us)).toFixed(2)}× the baseline's speed, ${(median(baseCpu) / median(cpu)).toFixed(2)}× its CPU` : "";
  console.log(`${key.padEnd(22)} median ${median(us).toFixed(2).padStart(6)} µs/tensor (min ${Math.min(...us).toFixed(2)}), CPU ${median(cpu).toFixed(2)} µs/tensor  runs ${us.map((x) => x.toFixed(1)).join(" ")}${ratio}`);
}
