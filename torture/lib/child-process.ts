import { spawn } from "node:child_process";
import { bundledOnce } from "./bundle-child.js";

export interface ChildRun {
  code: number | null;
  signal: NodeJS.Signals | null;
  /** stdout, line by line. */
  lines: string[];
  stderr: string;
  /** From its `ready` line to its `done` line, when it got there. */
  workMs: number | undefined;
  /** Whether the parent killed it (killAfterMs) before it said `done`. */
  killedByParent: boolean;
}

/** A limit on any one child: past it, it hangs (killed, and reported by the caller). */
export const CHILD_LIMIT_MS = 120_000;

/**
 * Runs `<script> <args>` with plain node, the script bundled once (a campaign starts hundreds of
 * children: with tsx's loader a start took 0.7–1.7 s on the CI machine, bundled 0.2 s); with
 * `killAfterMs`, SIGKILLs it that long after its `ready` line. A child still running after
 * CHILD_LIMIT_MS is killed and `hung` is set.
 */
export async function runChild(script: string, args: string[], env: NodeJS.ProcessEnv, options: { killAfterMs?: number } = {}): Promise<ChildRun & { hung: boolean }> {
  const bundle = await bundledOnce(script);
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [bundle, ...args], { env: { ...process.env, ...env }, stdio: ["ignore", "pipe", "pipe"] });
    const lines: string[] = [];
    let pending = "";
    let stderr = "";
    let readyAt: number | undefined;
    let workMs: number | undefined;
    let killedByParent = false;
    let hung = false;
    const limit = setTimeout(() => {
      hung = true;
      child.kill("SIGKILL");
    }, CHILD_LIMIT_MS);
    child.stdout.setEncoding("utf8").on("data", (chunk: string) => {
      pending += chunk;
      const complete = pending.split("\n");
      pending = complete.pop()!;
      for (const line of complete) {
        lines.push(line);
        if (line === "ready") {
          readyAt = performance.now();
          if (options.killAfterMs !== undefined) {
            setTimeout(() => {
              if (child.exitCode === null && child.signalCode === null && lines.at(-1) !== "done") {
                killedByParent = true;
                child.kill("SIGKILL");
              }
            }, options.killAfterMs);
          }
        }
        if (line === "done" && readyAt !== undefined) workMs = performance.now() - readyAt;
      }
    });
    child.stderr.setEncoding("utf8").on("data", (chunk: string) => (stderr += chunk));
    child.on("error", reject);
    child.on("close", (code, signal) => {
      clearTimeout(limit);
      if (pending !== "") lines.push(pending);
      resolve({ code, signal, lines, stderr, workMs, killedByParent, hung });
    });
  });
}
