import type { Command } from "commander";
import { constants } from "node:os";
import { launchWorkers, planLaunch } from "../../index.js";
import { EXIT_OK, exitCodeOf } from "../output.js";

/** A worker failed (exit 2 stays for bad flags and other errors of the launcher itself). */
const EXIT_WORKER_FAILED = 1;

interface LaunchCliOptions {
  nproc?: string;
  dp?: string;
  tp?: string;
  nnodes?: string;
  nodeRank?: string;
  rendezvous?: string;
  jobId?: string;
  gracePeriod?: string;
}

export function launchCommand(program: Command): void {
  program
    .command("launch")
    .description("start this node's workers of a training job with their ranks; when one fails, stop them all")
    .argument("<command...>", "the worker command, after --: e.g. -- node train.js --epochs 3")
    .option("--nproc <n>", "workers to start on this node (required)")
    .option("--dp <n>", "data-parallel size (default: world size / tp)")
    .option("--tp <n>", "tensor-parallel size; tp groups are consecutive ranks (default 1)")
    .option("--nnodes <n>", "nodes in the job; world size = nnodes × nproc (default: SLURM_NNODES, else 1)")
    .option("--node-rank <k>", "this node's index; its workers are ranks k×nproc … k×nproc+nproc-1 (default: SLURM_NODEID, else 0)")
    .option("--rendezvous <url>", "redis://HOST:PORT where the ranks meet; required with several nodes (default on one node: this launcher, over IPC)")
    .option("--job-id <id>", "the job's name on the rendezvous, the same on every node (default: SLURM_JOB_ID)")
    .option("--grace-period <seconds>", "how long a worker gets before the next, harder signal (default 5)")
    .addHelpText(
      "after",
      `
Each worker gets CKPT_RANK, CKPT_WORLD_SIZE, CKPT_LOCAL_RANK, CKPT_DP_SIZE, CKPT_TP_SIZE,
CKPT_RENDEZVOUS and CKPT_JOB_ID; initGangs() reads them. Output lines are prefixed "[rank N] ".
On one node the workers reach each other through this launcher's IPC channel, so the command must
be the Node process itself (node train.js, node --import tsx train.ts), not npx or a shell script.

When a worker fails (non-zero exit, signal, uncaught error), the others are told at once (their
collectives fail with a GangError naming it), get the grace period to end, then SIGTERM, then after
another grace period SIGKILL. SIGINT/SIGTERM are forwarded to the workers (SIGKILL after the grace
period; a second signal kills at once).

Exit codes: 0 every worker exited 0; 1 a worker failed (one line names it and how it ended);
2 bad flags or an error of the launcher; 128+N stopped by signal N.`,
    )
    .action(
      exitCodeOf(async (command: string[], options: LaunchCliOptions) => {
        const plan = planLaunch(options);
        const launch = launchWorkers({ plan, command });
        const stop = (signal: NodeJS.Signals): void => launch.stop(signal);
        // Last resort if the launcher itself dies of an error: no worker outlives it.
        const killWorkers = (): void => launch.killAll("SIGKILL");
        process.on("SIGINT", stop);
        process.on("SIGTERM", stop);
        process.on("exit", killWorkers);
        const result = await launch.result.finally(() => {
          process.off("SIGINT", stop);
          process.off("SIGTERM", stop);
          process.off("exit", killWorkers);
        });
        if (result.outcome === "succeeded") return EXIT_OK;
        process.stderr.write(`ckpt: launch: ${result.message}\n`);
        return result.outcome === "failed" ? EXIT_WORKER_FAILED : 128 + (constants.signals[result.signal] ?? 0);
      }),
    );
}
