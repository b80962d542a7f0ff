import type { Command } from "commander";
import { InvalidArgumentError } from "commander";
import { startDashboard } from "../../serve/dashboard-server.js";
import { print } from "../output.js";

export function serveCommand(program: Command): void {
  program
    .command("serve")
    .description("a local web dashboard over a checkpoint directory: checkpoints, score chart, disk use, save cost, tensors, verify and diff, live while training writes")
    .argument("<dir>", "the checkpoint directory (the one holding step_<N>/)")
    .option("--port <p>", "the port to listen on (default: a free one, printed)", parsePort)
    .option("--host <h>", "the address to bind (default 127.0.0.1: this machine only)")
    .option("--allow-prune", "allow pruning and deleting checkpoints from the page (default: read-only)")
    .addHelpText(
      "after",
      `
Prints the page's URL and serves until interrupted (Ctrl-C). The JSON API under /api/ is listed in
the README ("ckpt serve"). Safe by default: binds 127.0.0.1, answers only requests whose Host
header names the bound address (no DNS rebinding), reads nothing outside DIR (no '..', absolute
paths or symlinks out), never sends tensor data (statistics only), and changes nothing unless
started with --allow-prune. Binding another address (--host 0.0.0.0) shows the checkpoints to
anyone who can reach it.`,
    )
    .action(async (dir: string, options: { port?: number; host?: string; allowPrune?: boolean }) => {
      const dashboard = await startDashboard({
        checkpointDir: dir,
        ...(options.host === undefined ? {} : { host: options.host }),
        ...(options.port === undefined ? {} : { port: options.port }),
        allowPrune: options.allowPrune === true,
      });
      print(`ckpt serve: ${dir} at ${dashboard.url}${options.allowPrune === true ? " (pruning allowed)" : " (read-only)"}`);
      await new Promise<void>((resolve) => {
        const stop = (): void => {
          process.off("SIGINT", stop);
          process.off("SIGTERM", stop);
          void dashboard.close().then(resolve);
        };
        process.on("SIGINT", stop);
        process.on("SIGTERM", stop);
      });
    });
}

function parsePort(text: string): number {
  const n = Number(text);
  if (!/^\d+$/.test(text) || n > 65535) throw new InvalidArgumentError("it must be a port number (0 to 65535)");
  return n;
}
