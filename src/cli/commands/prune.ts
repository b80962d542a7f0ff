import type { Command } from "commander";
import { FileCheckpointManager, listCheckpointDirectory, planRetention, type CheckpointSummary } from "../../index.js";
import { requireCheckpointDir } from "../inputs.js";
import { CliError, EXIT_OK, exitCodeOf, formatBytes, print, printJson } from "../output.js";
import { parsePositiveInt } from "./arguments.js";

interface PruneOptions {
  keepLast?: number;
  keepBest?: number;
  preserveModel?: boolean;
  dryRun?: boolean;
  json?: boolean;
}

/** The files `preserveModel` removes: the training state (as the manager's prune decides). */
const TRAINING_STATE = /^(rank_\d+(\.\d+)?\.pt|replicated(\.\d+)?\.pt|metadata\.pt)$/;

export function pruneCommand(program: Command): void {
  program
    .command("prune")
    .description("delete old checkpoints with the manager's retention rules (keep the last N, or the best N and the last)")
    .argument("<dir>", "the checkpoint directory")
    .option("--keep-last <n>", "keep the last n resumable checkpoints", parsePositiveInt)
    .option("--keep-best <n>", "keep the n best-scoring checkpoints, the last one and every unscored one", parsePositiveInt)
    .option("--preserve-model", "instead of deleting, keep the model files of pruned checkpoints (they become model-only)")
    .option("--dry-run", "only show what would be deleted")
    .option("--json", "print JSON for scripts")
    .addHelpText(
      "after",
      `
Takes the directory's lock like a training job does, so it refuses to prune a directory a running
job owns; as the manager does when it takes the lock, it also removes what a crashed save or
deletion left (.tmp and .deleting directories), and reports them with the bytes they held.
--dry-run takes no lock and changes nothing.`,
    )
    .action(exitCodeOf(async (dir: string, options: PruneOptions) => {
      if ((options.keepLast === undefined) === (options.keepBest === undefined)) throw new CliError("give exactly one of --keep-last <n> and --keep-best <n>");
      const listing = await requireCheckpointDir(dir);
      const preserveModel = options.preserveModel === true;
      const n = (options.keepLast ?? options.keepBest)!;
      const rule = options.keepLast !== undefined ? "keep-last" : "keep-best";
      const summaries = new Map(listing.checkpoints.filter((c) => c.status === "committed").map((c) => [c.stepNr, c]));

      const manager = new FileCheckpointManager({ checkpointDir: dir });
      let deleted: number[];
      let stripped: number[];
      try {
        if (options.dryRun === true) {
          ({ deleted, stripped } = planRetention(await manager.listCheckpoints(), rule === "keep-last" ? { keepLast: n, preserveModel } : { keepBest: n, preserveModel }));
        } else {
          ({ deleted, stripped } = rule === "keep-last" ? await manager.keepLastNCheckpoints(n, { preserveModel }) : await manager.keepBestNCheckpoints(n, { preserveModel }));
        }
      } finally {
        await manager.close();
      }
      const kept = [...summaries.keys()].filter((s) => !deleted.includes(s) && !stripped.includes(s));
      // Taking the lock removes what crashed saves and deletions left (.tmp, .deleting): say so.
      const leftovers = listing.checkpoints.filter((c) => c.status === "unfinished" || c.status === "deleting");
      const still = options.dryRun === true ? new Set<string>() : new Set((await listCheckpointDirectory(dir)).checkpoints.map((c) => c.name));
      const removed = leftovers.filter((c) => !still.has(c.name));
      const freed =
        deleted.reduce((sum, s) => sum + (summaries.get(s)?.size ?? 0), 0) +
        stripped.reduce((sum, s) => sum + trainingStateBytes(summaries.get(s)), 0) +
        removed.reduce((sum, c) => sum + c.size, 0);

      if (options.json === true) {
        const leftoverNames = removed.map((c) => c.name);
        printJson({ checkpointDir: dir, dryRun: options.dryRun === true, rule, n, preserveModel, deleted, stripped, kept, removedLeftovers: leftoverNames, freedBytes: freed });
        return EXIT_OK;
      }
      const would = options.dryRun === true;
      const steps = (list: number[]): string => (list.length === 0 ? "none" : list.map((s) => `step_${s}`).join(", "));
      print(`${would ? "would delete" : "deleted"}: ${steps(deleted)}`);
      if (preserveModel) print(`${would ? "would keep only the model of" : "kept only the model of"}: ${steps(stripped)}`);
      if (removed.length > 0) {
        const what = removed.map((c) => `${c.name} (${c.status === "unfinished" ? "an unfinished save" : "a cut-off deletion"}, ${formatBytes(c.size)})`).join(", ");
        print(`${would ? "would remove leftovers" : "removed leftovers"}: ${what}`);
      }
      print(`${would ? "would keep" : "kept"}: ${steps(kept)}`);
      print(`${would ? "would free" : "freed"} ${formatBytes(freed)}`);
      return EXIT_OK;
    }));
}

function trainingStateBytes(summary: CheckpointSummary | undefined): number {
  if (summary === undefined) return 0;
  return Object.entries(summary.fileSizes).reduce((sum, [name, size]) => sum + (TRAINING_STATE.test(name) ? size : 0), 0);
}
