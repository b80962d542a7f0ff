import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";

export const ROOT = join(import.meta.dirname, "..", "..");
export const CLI = join(ROOT, "dist", "cli", "main.js");
/** The test worker (test/helpers/gang-worker.mjs), run on the built library. */
export const WORKER = join(ROOT, "test", "helpers", "gang-worker.mjs");

export interface LaunchRun {
  status: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  launcherPid: number;
}

export interface RunLaunchOptions {
  /** Added to the launcher's environment (which the workers inherit). */
  env?: Record<string, string>;
  /** Called with the launcher's stdout so far, each time more arrives (e.g. to signal it once workers are ready). */
  onStdout?: (stdout: string, launcherPid: number) => void;
}

/** `ckpt launch ARGS` with the built CLI, as a real process; resolves when it has exited. */
export function runLaunch(args: string[], options: RunLaunchOptions = {}): Promise<LaunchRun> {
  assert.ok(existsSync(CLI), "dist/cli/main.js is missing: run `npm run build` (npm test does) first");
  const env: Record<string, string | undefined> = { ...process.env, CKPT_DEBUG: "", ...options.env };
  // The test runner's own environment must not look like a launched worker's or a SLURM job's.
  for (const name of Object.keys(env)) if (/^(CKPT_(RANK|WORLD_SIZE|LOCAL_RANK|DP_SIZE|TP_SIZE|RENDEZVOUS|JOB_ID)|SLURM_.*)$/.test(name) && !(name in (options.env ?? {}))) delete env[name];
  const child = spawn(process.execPath, [CLI, "launch", ...args], { env, stdio: ["ignore", "pipe", "pipe"] });
  let stdout = "";
  let stderr = "";
  child.stdout.setEncoding("utf8").on("data", (text: string) => {
    stdout += text;
    options.onStdout?.(stdout, child.pid!);
  });
  child.stderr.setEncoding("utf8").on("data", (text: string) => (stderr += text));
  return new Promise((resolve, reject) => {
    child.on("error", reject);
    child.on("close", (status, signal) => resolve({ status, signal, stdout, stderr, launcherPid: child.pid! }));
  });
}

/** The worker command that runs one scenario of gang-worker.mjs. */
export function worker(scenario: string): string[] {
  return ["--", process.execPath, WORKER, scenario];
}

/** The rest of each line `[rank N] MARKER rest`, by rank. */
export function markers(output: string, marker: string): Map<number, string[]> {
  const found = new Map<number, string[]>();
  for (const match of output.matchAll(new RegExp(`^\\[rank (\\d+)\\] ${marker}(?: (.*))?$`, "gm"))) {
    const rank = Number(match[1]);
    found.set(rank, [...(found.get(rank) ?? []), match[2] ?? ""]);
  }
  return found;
}

/** The one JSON value each rank printed after `marker`. */
export function jsonMarkers<T>(output: string, marker: string): Map<number, T> {
  const found = new Map<number, T>();
  for (const [rank, lines] of markers(output, marker)) {
    assert.equal(lines.length, 1, `rank ${rank} printed ${marker} ${lines.length} times`);
    found.set(rank, JSON.parse(lines[0]!) as T);
  }
  return found;
}

/** The process ids the workers printed ("PID n"). */
export function workerPids(output: string): number[] {
  return [...markers(output, "PID").values()].flat().map(Number);
}

/**
 * Asserts that none of `pids` is still a process (a zombie would mean nobody reaped it). Any that
 * is, is killed, so a failing test leaves nothing behind.
 */
export function assertProcessesGone(pids: readonly number[]): void {
  const alive = pids.filter(exists);
  for (const pid of alive) process.kill(pid, "SIGKILL");
  assert.deepEqual(alive.map((pid) => `${pid}: ${state(pid)}`), [], "every process the launch started is gone");
}

function exists(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "ESRCH") return false;
    throw error;
  }
}

function state(pid: number): string {
  try {
    return /^State:\s*(.*)$/m.exec(readFileSync(`/proc/${pid}/status`, "utf8"))?.[1] ?? "unknown state";
  } catch {
    return "gone by now";
  }
}

/** The launcher's own lines on stderr (workers' lines are prefixed "[rank N] "). */
export function launcherLines(stderr: string): string[] {
  return stderr.split("\n").filter((line) => line !== "" && !line.startsWith("[rank "));
}
