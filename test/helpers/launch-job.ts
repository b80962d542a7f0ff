import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { bundledOnce } from "../../torture/lib/bundle-child.js";

const ROOT = dirname(dirname(dirname(fileURLToPath(import.meta.url))));
const CLI = join(ROOT, "dist", "cli", "main.js");
const WORKER = join(ROOT, "test", "helpers", "distributed-worker.ts");
/** A launch still running after this long hangs: the test fails instead of waiting forever. */
const LAUNCH_LIMIT_MS = 90_000;

export interface Launch {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  /** Each rank's `result` line, parsed, by rank. */
  results: Map<number, Record<string, unknown>>;
  /** Each rank's `error` line, by rank. */
  errors: Map<number, string>;
}

/**
 * Runs `ckpt launch <flags> -- node distributed-worker <args>` (or `options.worker`) to its end,
 * the worker bundled once per test process (torture/lib/bundle-child.ts: no loader to start in
 * each rank; with tsx's loader for a redis:// rendezvous); `onOutput` sees the output as it comes.
 */
export async function launch(flags: string[], args: string[], options: { env?: NodeJS.ProcessEnv; onOutput?: (stdout: string) => void; worker?: string } = {}): Promise<Launch> {
  assert.ok(existsSync(CLI), "dist/cli/main.js is missing: run `npm run build` (npm test does) first");
  // A redis:// rendezvous loads its transport by a computed import, which a bundle cannot follow
  // (src/gang/init-gangs.ts says why it is computed).
  const script = options.worker ?? WORKER;
  const worker = flags.some((flag) => flag.includes("redis://")) ? ["--import", "tsx", script] : [await bundledOnce(script)];
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [CLI, "launch", ...flags, "--", process.execPath, ...worker, ...args], {
      cwd: ROOT,
      env: { ...process.env, ...options.env },
      stdio: ["ignore", "pipe", "pipe"],
    });
    let stdout = "";
    let stderr = "";
    child.stdout.setEncoding("utf8").on("data", (chunk: string) => {
      stdout += chunk;
      options.onOutput?.(stdout);
    });
    child.stderr.setEncoding("utf8").on("data", (chunk: string) => (stderr += chunk));
    const timer = setTimeout(() => {
      child.kill("SIGKILL");
      reject(new Error(`the launch hung: still running after ${LAUNCH_LIMIT_MS} ms\n${stdout}\n${stderr}`));
    }, LAUNCH_LIMIT_MS);
    child.on("error", reject);
    child.on("close", (code, signal) => {
      clearTimeout(timer);
      const results = new Map<number, Record<string, unknown>>();
      const errors = new Map<number, string>();
      for (const match of stdout.matchAll(/^\[rank (\d+)\] result (.*)$/gm)) results.set(Number(match[1]), JSON.parse(match[2]!) as Record<string, unknown>);
      for (const match of stdout.matchAll(/^\[rank (\d+)\] error (.*)$/gm)) errors.set(Number(match[1]), match[2]!);
      resolve({ code, signal, stdout, stderr, results, errors });
    });
  });
}

export function assertSucceeded(run: Launch, ranks: number): void {
  assert.equal(run.code, 0, `the launch failed:\n${run.stdout}\n${run.stderr}`);
  assert.equal(run.results.size, ranks, `every rank reports:\n${run.stdout}`);
}
