import type { Command } from "commander";
import type { CheckpointSummary } from "../../index.js";
import { requireCheckpointDir } from "../inputs.js";
import { EXIT_OK, exitCodeOf, formatBytes, formatNumber, print, printJson, table } from "../output.js";

export function lsCommand(program: Command): void {
  program
    .command("ls")
    .description("list the checkpoints in a checkpoint directory: step, score, size, files, kind, status")
    .argument("<dir>", "the checkpoint directory (the one holding step_<N>/)")
    .option("--json", "print JSON for scripts")
    .addHelpText(
      "after",
      `
Columns: SCORE as it was saved, with its direction: "0.479 ↓" for a loss saved with lowerBetter
(score.txt stores it negated, -0.479, so that higher is better on disk), "0.91 ↑" for a score where
higher is better. A checkpoint that does not record the direction (written by fairseq2 or an
earlier ckpt) shows score.txt's value with ↑, as that file's convention reads. --json gives both:
"score" as stored, "scoreAsSaved" and "lowerBetter" when known. SIZE and FILES of the step directory, KIND resumable or model-only (pruned with
--preserve-model), STATUS committed, unfinished (a .tmp save, never loaded), deleting or damaged.
"last" marks the checkpoint training resumes from, "best" the best score.`,
    )
    .action(exitCodeOf(async (dir: string, options: { json?: boolean }) => {
      const listing = await requireCheckpointDir(dir);
      if (options.json === true) {
        printJson(listing);
        return EXIT_OK;
      }
      const { checkpoints } = listing;
      if (checkpoints.length === 0) {
        print(`no checkpoints in ${dir}`);
        return EXIT_OK;
      }
      const rows = [["STEP", "SCORE", "SIZE", "FILES", "KIND", "STATUS", ""]];
      for (const c of checkpoints) {
        const committed = c.status === "committed";
        const kind = !committed ? "-" : c.modelOnly ? "model-only" : "resumable";
        const marks = [c.isLast ? "last" : "", c.isBest ? "best" : ""].filter((m) => m !== "").join(", ");
        const status = c.status !== "unfinished" ? c.status : c.name.endsWith(".tmp") ? "unfinished (.tmp)" : "unfinished (no manifest)";
        rows.push([String(c.stepNr), scoreText(c), formatBytes(c.size), String(c.files.length), kind, status, marks]);
      }
      for (const line of table(rows)) print(line);
      for (const c of checkpoints) if (c.status === "damaged") print(`${c.name}: ${c.problem}`);
      for (const c of checkpoints) if (c.warning !== undefined) print(`${c.name}: warning: ${c.warning}`);

      const committed = checkpoints.filter((c) => c.status === "committed");
      const modelOnly = committed.filter((c) => c.modelOnly).length;
      const unfinished = checkpoints.filter((c) => c.status === "unfinished").length;
      const parts = [`${committed.length} committed (${committed.length - modelOnly} resumable, ${modelOnly} model-only)`];
      if (unfinished > 0) parts.push(`${unfinished} unfinished`);
      const damaged = checkpoints.filter((c) => c.status === "damaged").length;
      if (damaged > 0) parts.push(`${damaged} damaged`);
      const total = committed.reduce((sum, c) => sum + c.size, 0);
      print();
      print(`${parts.join(", ")}; ${formatBytes(total)} committed; last: ${listing.lastStepNr ?? "none"}, best: ${listing.bestStepNr ?? "none"}`);
      return EXIT_OK;
    }));
}

/** The score as saved with its direction; without a recorded direction, score.txt's (higher is better). */
function scoreText(c: CheckpointSummary): string {
  if (c.score === undefined) return "-";
  if (c.scoreAsSaved === undefined || c.lowerBetter === undefined) return `${formatNumber(c.score)} ↑`;
  return `${formatNumber(c.scoreAsSaved)} ${c.lowerBetter ? "↓" : "↑"}`;
}
