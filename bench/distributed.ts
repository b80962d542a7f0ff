// Bench (c): 4 ranks × 256 MiB saved at once through `ckpt launch` against 4 plain parallel writes
// of the same bytes (+ fsync), measured in one launch, interleaved (bench/distributed-worker.ts).
import { spawnSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { join } from "node:path";
import type { Sample, ScenarioResult, Series, Variant } from "./report.js";

const ROOT = join(import.meta.dirname, "..");
const CLI = join(ROOT, "dist", "cli", "main.js");
const WORKER = join(import.meta.dirname, "distributed-worker.ts");
const RANKS = 4;
const TIMEOUT_MS = 10 * 60_000;

const SAVE_LAUNCH: Variant = {
  key: "save-launch",
  label: "save: 4 ranks under ckpt launch, begin/saveState/commit, first start to last end",
  runner: "node",
  op: "save-launch",
  kind: "save",
  role: "ours",
};
/** The same save through the page cache: shows what the write path, not the manager's code, costs. */
const SAVE_LAUNCH_BUFFERED: Variant = {
  key: "save-launch-buffered",
  label: "save: the same, with directWrites: false (through the page cache)",
  runner: "node",
  op: "save-launch-buffered",
  kind: "save",
  role: "diagnostic",
};
const WRITE_PARALLEL: Variant = {
  key: "write-plain",
  label: "limit: 4 processes writing the same bytes to plain files + fsync, at once",
  runner: "node",
  op: "write-plain",
  kind: "save",
  role: "limit",
};

export const DISTRIBUTED_TITLE = `save, ${RANKS} ranks × 256 MiB at once, one process each`;

/** Runs bench (c): `runs` interleaved measurements of each, `bytesPerRank` per rank. */
export function measureDistributed(tmpRoot: string, runs: number, bytesPerRank: number): ScenarioResult {
  const dir = mkdtempSync(join(tmpRoot, "ckpt-bench-c-"));
  const series: Series[] = [SAVE_LAUNCH, WRITE_PARALLEL, SAVE_LAUNCH_BUFFERED].map((variant) => ({ variant, samples: [] }));
  try {
    const result = spawnSync(process.execPath, [CLI, "launch", "--nproc", String(RANKS), "--", process.execPath, "--import", "tsx", WORKER, String(runs), String(bytesPerRank), dir], {
      cwd: ROOT,
      encoding: "utf8",
      timeout: TIMEOUT_MS,
      maxBuffer: 16 << 20,
    });
    for (const match of (result.stdout ?? "").matchAll(/^\[rank 0\] (\{.*\})$/gm)) {
      const { op, ...sample } = JSON.parse(match[1]!) as Sample & { op: string };
      series.find((s) => s.variant.op === op)?.samples.push(sample);
      const requests = sample.writeRequests === undefined ? "" : ` (${sample.writeRequests} write requests)`;
      process.stderr.write(`(c) ${op}: ${sample.seconds.toFixed(3)} s${requests}\n`);
    }
    if (result.status !== 0) {
      const why = result.error?.message ?? `exit code ${result.status}: ${(result.stderr ?? "").trim().split("\n").at(-1) ?? ""}`;
      for (const s of series) s.error = `the launch failed (${why})`;
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  return { id: "c", title: DISTRIBUTED_TITLE, bytes: RANKS * bytesPerRank, tensors: RANKS * Math.ceil(bytesPerRank / (16 * 2 ** 20)), series };
}
