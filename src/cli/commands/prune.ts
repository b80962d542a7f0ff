import type { Command } from "commander";
import { InvalidArgumentError as CommanderArgumentError } from "commander";
import { FileCheckpointManager, listCheckpointDirectory, parseDuration, planRetention, type CheckpointSummary, type RetentionDecision } from "../../index.js";
import { requireCheckpointDir } from "../inputs.js";
import { CliError, EXIT_OK, exitCodeOf, formatBytes, print, printJson } from "../output.js";
import { parsePositiveInt } from "./arguments.js";

interface PruneOptions {
  keepLast?: number;
  keepBest?: number;
  keepEvery?: number;
  keepOnePer?: string;
  preserveModel?: boolean;
  dryRun?: boolean;
  json?: boolean;
}

/** The files `preserveModel` removes: the training state (as the manager's prune decides). */
export const TRAINING_STATE = /^(rank_\d+(\.\d+)?\.pt|replicated(\.\d+)?\.pt|metadata\.pt)$/;

export function pruneCommand(program: Command): void {
  program
    .command("prune")
    .description("delete old checkpoints with the manager's retention rules (any of: the last N, the best N, milestones, one per interval)")
    .argument("<dir>", "the checkpoint directory")
    .option("--keep-last <n>", "keep the last n resumable checkpoints", parsePositiveInt)
    .option("--keep-best <n>", "keep the n best-scoring checkpoints and every unscored one", parsePositiveInt)
    .option("--keep-every <n>", "keep every step that is a multiple of n (milestones: no other rule prunes them)", parsePositiveInt)
    .option("--keep-one-per <duration>", "of the checkpoints older than the last --keep-last n, keep one per duration (90s, 30m, 6h, 1d, 2w)", parseDurationOption)
    .option("--preserve-model", "instead of deleting, keep the model files of pruned checkpoints (they become model-only)")
    .option("--dry-run", "only show what would be deleted")
    .option("--json", "print JSON for scripts")
    .addHelpText(
      "after",
      `
A checkpoint survives when any rule keeps it; the last resumable checkpoint always survives.
--keep-one-per dates a checkpoint by its manifest's createdAt, or by its directory's modification
time when it has no manifest (fairseq2). --dry-run shows which rule keeps each survivor.

Takes the directory's lock like a training job does, so it refuses to prune a directory a running
job owns; as the manager does when it takes the lock, it also removes what a crashed save or
deletion left (.tmp and .deleting directories), and reports them with the bytes they held.
--dry-run takes no lock and changes nothing.`,
    )
    .action(exitCodeOf(async (dir: string, options: PruneOptions) => {
      const rules = { keepLast: options.keepLast, keepBest: options.keepBest, keepEvery: options.keepEvery, keepOnePer: options.keepOnePer };
      if (Object.values(rules).every((value) => value === undefined)) {
        throw new CliError("give at least one rule: --keep-last <n>, --keep-best <n>, --keep-every <n> or --keep-one-per <duration>");
      }
      const listing = await requireCheckpointDir(dir);
      const preserveModel = options.preserveModel === true;
      const summaries = new Map(listing.checkpoints.filter((c) => c.status === "committed").map((c) => [c.stepNr, c]));

      const manager = new FileCheckpointManager({ checkpointDir: dir });
      let deleted: number[];
      let stripped: number[];
      let decisions: RetentionDecision[];
      try {
        const report = options.dryRun === true ? planRetention(await manager.listCheckpoints(), { ...rules, preserveModel }) : await manager.retain({ ...rules, preserveModel });
        ({ deleted, stripped, decisions } = report);
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
        const keptBy = Object.fromEntries(decisions.filter((d) => d.action === "keep").map((d) => [d.stepNr, d.keptBy]));
        printJson({ checkpointDir: dir, dryRun: options.dryRun === true, rules: definedRules(rules), preserveModel, deleted, stripped, kept, keptBy, removedLeftovers: leftoverNames, freedBytes: freed });
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
      if (would) {
        // Which rule keeps each survivor: what a dry run is for.
        for (const decision of decisions) if (decision.action === "keep" && kept.includes(decision.stepNr)) print(`  step_${decision.stepNr}: ${decision.keptBy.join("; ")}`);
      }
      print(`${would ? "would free" : "freed"} ${formatBytes(freed)}`);
      return EXIT_OK;
    }));
}

/** The rules given, for --json: those left out are not there. */
function definedRules(rules: Record<string, number | string | undefined>): Record<string, number | string> {
  return Object.fromEntries(Object.entries(rules).filter((entry): entry is [string, number | string] => entry[1] !== undefined));
}

/** `--keep-one-per 6h`: checked here so a bad duration is a one-line usage error. */
function parseDurationOption(text: string): string {
  try {
    parseDuration(text);
  } catch {
    throw new CommanderArgumentError("it must be a positive duration: a number with a unit, e.g. 90s, 30m, 6h, 1d, 2w");
  }
  return text;
}

function trainingStateBytes(summary: CheckpointSummary | undefined): number {
  if (summary === undefined) return 0;
  return Object.entries(summary.fileSizes).reduce((sum, [name, size]) => sum + (TRAINING_STATE.test(name) ? size : 0), 0);
}
