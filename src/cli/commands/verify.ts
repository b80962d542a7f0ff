import type { Command } from "commander";
import { verifyCheckpoints } from "../../index.js";
import { classify } from "../inputs.js";
import { CliError, EXIT_NEGATIVE, EXIT_OK, exitCodeOf, formatBytes, print, printJson } from "../output.js";
import { progressBar } from "../progress.js";
import { parseStepNr } from "./arguments.js";

export function verifyCommand(program: Command): void {
  program
    .command("verify")
    .description("re-read every file of the checkpoints against manifest.json (sizes, CRC-32) and parse every tensor file")
    .argument("<dir>", "the checkpoint directory, or one step directory (step_<N>)")
    .option("--step <n>", "verify only this step", parseStepNr)
    .option("--json", "print JSON for scripts")
    .addHelpText(
      "after",
      `
Names every bad file and what is wrong: missing, truncated, changed bytes (CRC-32), an extra file
not in the manifest, a file that does not parse. Unfinished saves (.tmp) are listed, not checked.
Exit code: 0 when every checkpoint checked is sound, 1 when one is damaged, 2 on bad input.`,
    )
    .action(exitCodeOf(async (dir: string, options: { step?: number; json?: boolean }) => {
      const target = await classify(dir);
      if (target.kind === "file") throw new CliError(`${dir} is a file: give a checkpoint directory or a step directory`);
      let checkpointDir = target.path;
      let stepNr = options.step;
      if (target.kind === "step") {
        if (stepNr !== undefined && stepNr !== target.stepNr) throw new CliError(`${dir} is step ${target.stepNr}, but --step ${stepNr} was given`);
        checkpointDir = target.checkpointDir;
        stepNr = target.stepNr;
      }
      const progress = progressBar("verifying");
      let report;
      try {
        report = await verifyCheckpoints(checkpointDir, { ...(stepNr === undefined ? {} : { stepNr }), onProgress: (done, total) => progress.update(done, total) });
      } finally {
        progress.stop();
      }
      if (options.json === true) {
        printJson(report);
        return report.sound ? EXIT_OK : EXIT_NEGATIVE;
      }
      let sound = 0;
      let damaged = 0;
      for (const c of report.checkpoints) {
        if (c.status === "sound") {
          sound++;
          print(`${c.name}: sound (${c.filesChecked} files, ${formatBytes(c.bytesChecked)} checked${c.hasManifest ? "" : ", no manifest"})`);
        } else if (c.status === "damaged") {
          damaged++;
          print(`${c.name}: DAMAGED`);
          for (const p of c.problems) print(`  ${p.file}: ${p.problem}`);
        } else {
          print(`${c.name}: ${c.status}, not checked`);
        }
        for (const note of c.notes) if (c.status === "sound" || c.status === "damaged") print(`  note: ${note}`);
      }
      print();
      print(`${sound + damaged} checkpoint${sound + damaged === 1 ? "" : "s"} verified: ${sound} sound, ${damaged} damaged`);
      return report.sound ? EXIT_OK : EXIT_NEGATIVE;
    }));
}
