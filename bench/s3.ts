// Bench (e): a checkpoint saved to and loaded from S3 (s3rver on loopback) through the manager,
// against one plain PutObject / GetObject of the same bytes (bench/s3-worker.ts).
import { spawnSync } from "node:child_process";
import { join } from "node:path";
import type { Sample, ScenarioResult, Series, Variant } from "./report.js";

const ROOT = join(import.meta.dirname, "..");
const WORKER = join(import.meta.dirname, "s3-worker.ts");
const TIMEOUT_MS = 10 * 60_000;

const VARIANTS: Variant[] = [
  { key: "s3-save", label: "save: FileCheckpointManager to s3:// (multipart parts in parallel, manifest last)", runner: "node", op: "s3-save", kind: "save", role: "ours" },
  { key: "s3-put", label: "limit: one plain PutObject of the same bytes, same server", runner: "node", op: "s3-put", kind: "save", role: "limit" },
  { key: "s3-load", label: "load: loadCheckpoint from s3:// into existing tensors (ranged GETs in parallel, CRC-32 checked)", runner: "node", op: "s3-load", kind: "load", role: "ours" },
  { key: "s3-get", label: "limit: one plain GetObject of the same bytes, same server", runner: "node", op: "s3-get", kind: "load", role: "limit" },
];

export const S3_TITLE = "S3 (s3rver on loopback): save and load of one checkpoint";

/** Runs bench (e): `runs` interleaved measurements of each variant on `bytes` of state. */
export function measureS3(runs: number, bytes: number): ScenarioResult {
  const series: Series[] = VARIANTS.map((variant) => ({ variant, samples: [] }));
  const result = spawnSync(process.execPath, ["--import", "tsx", WORKER, String(runs), String(bytes)], {
    cwd: ROOT,
    encoding: "utf8",
    timeout: TIMEOUT_MS,
    maxBuffer: 16 << 20,
    // The plain client is made by the worker itself: spare its output the SDK's Node 20 notice, as ckpt/s3 does.
    env: { ...process.env, AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED: "true" },
  });
  for (const line of (result.stdout ?? "").split("\n")) {
    if (!line.startsWith("{")) continue;
    const { op, ...sample } = JSON.parse(line) as Sample & { op: string };
    series.find((s) => s.variant.op === op)?.samples.push(sample);
  }
  if (result.status !== 0) {
    const why = result.error?.message ?? `exit code ${result.status}: ${(result.stderr ?? "").trim().split("\n").at(-1) ?? ""}`;
    for (const s of series) s.error = `the S3 bench failed (${why})`;
  }
  // Against the same server's plain PUT and GET; there is no PyTorch peer on S3 here.
  const comparedWith = { save: { limit: "s3-put" }, load: { limit: "s3-get" } };
  return { id: "e", title: S3_TITLE, bytes, tensors: Math.ceil(bytes / (16 * 2 ** 20)), series, comparedWith };
}
