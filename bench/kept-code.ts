// Which optimized functions V8 throws away between one save or load and the next (docs/design.md,
// "Keeping optimized code between saves and loads"): runs itself in a child process under
// `--trace-deopt`, which saves N small tensors R times and then loads them R times, with a garbage
// collection after each, and prints for each operation its time and the functions V8 dropped
// because an object their code depended on had died ("weak objects").
//
//   node --import tsx bench/kept-code.ts [--count N] [--rounds R] [--library DIR] WORKDIR
//
// DIR is a checkout whose build (dist/) is measured: this one by default, or another to compare
// (e.g. a clone of an older commit, built). Build first (`npm run build`).
import { spawnSync } from "node:child_process";
import { rmSync } from "node:fs";
import { join, resolve } from "node:path";
import { parseArgs } from "node:util";

type Library = typeof import("../src/index.js");

const { values, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    count: { type: "string", default: "20000" },
    rounds: { type: "string", default: "4" },
    library: { type: "string", default: resolve(import.meta.dirname, "..") },
    child: { type: "boolean", default: false },
  },
});
const dir = positionals[0];
if (dir === undefined) throw new Error("usage: kept-code.ts [--count N] [--rounds R] [--library DIR] WORKDIR");
const count = Number(values.count);
const rounds = Number(values.rounds);
const MARK = "@@kept-code ";

if (values.child) await runChild();
else report();

/** In the child: the operations, each followed by a marker line and a full garbage collection. */
async function runChild(): Promise<void> {
  const lib = (await import(join(values.library!, "dist/index.js"))) as Library;
  const model: Record<string, InstanceType<Library["Tensor"]>> = {};
  for (let i = 0; i < count; i++) model[`params.${i}`] = lib.Tensor.from(new Float32Array(1024).fill(i), { shape: [1024] });
  const file = join(dir!, "kept-code.pt");
  const gc = (globalThis as { gc?: () => void }).gc!;
  for (let i = 0; i < rounds; i++) {
    rmSync(file, { force: true });
    const start = performance.now();
    await new lib.TorchTensorDumper().dump({ model }, file);
    console.log(`${MARK}save ${i + 1} ${(performance.now() - start).toFixed(1)}`);
    gc();
  }
  let loaded: unknown;
  for (let i = 0; i < rounds; i++) {
    const start = performance.now();
    loaded = await new lib.TorchTensorLoader().load(file);
    console.log(`${MARK}load ${i + 1} ${(performance.now() - start).toFixed(1)}`);
    gc();
  }
  rmSync(file, { force: true });
  if (loaded === undefined) throw new Error("nothing loaded");
}

/** In the parent: runs the child and files each dropped function under the operation before it. */
function report(): void {
  const args = ["--expose-gc", "--trace-deopt", "--import", "tsx", import.meta.filename, "--child", "--count", String(count), "--rounds", String(rounds), "--library", values.library!, dir!];
  const child = spawnSync(process.execPath, args, { encoding: "utf8", maxBuffer: 256 << 20 });
  if (child.status !== 0) throw new Error(`the child failed (${child.status}): ${child.stderr}`);
  let dropped: string[] = [];
  let operation = "";
  const flush = (): void => {
    if (operation !== "") console.log(`${operation}: ${dropped.length} functions dropped after it (its garbage collection, or during the next operation)${dropped.length > 0 ? `: ${dropped.join(", ")}` : ""}`);
    dropped = [];
  };
  for (const line of child.stdout.split("\n")) {
    if (line.startsWith(MARK)) {
      flush();
      const [name, round, ms] = line.slice(MARK.length).split(" ");
      operation = `${name} ${round} (${ms} ms)`;
    } else if (line.includes("reason: weak objects")) {
      dropped.push(/<SharedFunctionInfo ([^>]*)>/.exec(line)?.[1] || "(anonymous)");
    }
  }
  flush();
}
