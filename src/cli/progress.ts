import { createRequire } from "node:module";
import type * as CliProgress from "cli-progress";
import { formatBytes } from "./output.js";

export interface Progress {
  /** Reports `done` of `total` bytes. */
  update(done: number, total: number): void;
  /** Removes the bar; call before printing results. */
  stop(): void;
}

const quiet: Progress = { update: () => undefined, stop: () => undefined };

/**
 * A progress bar over bytes on stderr, shown only when stderr is a terminal (never in pipes, logs
 * or tests), and only once the work has run for a moment, so quick commands print nothing extra.
 */
export function progressBar(label: string): Progress {
  if (process.stderr.isTTY !== true || process.env.CKPT_NO_PROGRESS === "1") return quiet;
  const startedAt = Date.now();
  let bar: CliProgress.SingleBar | undefined;
  return {
    update(done, total) {
      if (bar === undefined) {
        if (Date.now() - startedAt < 300 || total <= 0) return;
        // Loaded when a bar is first shown: a command that ends quickly, or prints to a pipe, never needs it.
        const cliProgress = createRequire(import.meta.url)("cli-progress") as typeof CliProgress;
        bar = new cliProgress.SingleBar(
          {
            stream: process.stderr,
            format: `${label} [{bar}] {percentage}% {done} of {all}`,
            clearOnComplete: true,
            hideCursor: true,
            barsize: 30,
          },
          cliProgress.Presets.shades_classic,
        );
        bar.start(total, done, { done: formatBytes(done), all: formatBytes(total) });
        return;
      }
      bar.setTotal(total);
      bar.update(done, { done: formatBytes(done), all: formatBytes(total) });
    },
    stop() {
      bar?.stop();
      bar = undefined;
    },
  };
}
