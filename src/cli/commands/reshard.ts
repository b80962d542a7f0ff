import type { Command } from "commander";
import { resolve } from "node:path";
import { reshardCheckpoint } from "../../index.js";
import { requireCheckpointDir } from "../inputs.js";
import { CliError, EXIT_OK, exitCodeOf, print, printJson } from "../output.js";
import { parsePositiveInt, parseStepNr } from "./arguments.js";

export function reshardCommand(program: Command): void {
  program
    .command("reshard")
    .description("write a checkpoint again for another data-parallel / tensor-parallel layout")
    .argument("<dir>", "the checkpoint directory to read")
    .argument("<out>", "the checkpoint directory to write the step into (not <dir>)")
    .requiredOption("--dp <n>", "the new data-parallel size", parsePositiveInt)
    .requiredOption("--tp <n>", "the new tensor-parallel size", parsePositiveInt)
    .option("--step <n>", "the step to reshard (default: the last)", parseStepNr)
    .option("--per-rank <policy>", 'what new ranks get of values that differ by rank: "refuse" (default) or "rank0"', "refuse")
    .option("--json", "print JSON for scripts")
    .addHelpText(
      "after",
      `
Every ShardedTensor is cut again along the dimension it was split along, evenly over the new
ranks; values equal on every rank are kept; values that differ by rank (a data loader position,
a generator state) are refused by name unless --per-rank rank0 gives every new rank rank 0's.
<out> gets a regular committed checkpoint that loads under the new gangs without resharding.`,
    )
    .action(exitCodeOf(async (dir: string, out: string, options: { dp: number; tp: number; step?: number; perRank: string; json?: boolean }) => {
      if (options.perRank !== "refuse" && options.perRank !== "rank0") throw new CliError(`--per-rank must be "refuse" or "rank0", not ${JSON.stringify(options.perRank)}`);
      if (resolve(dir) === resolve(out)) throw new CliError("<out> must be another directory than <dir>: a checkpoint is never rewritten in place");
      await requireCheckpointDir(dir);
      const { stepNr } = await reshardCheckpoint({
        checkpointDir: dir,
        outputDir: out,
        dpSize: options.dp,
        tpSize: options.tp,
        ...(options.step === undefined ? {} : { stepNr: options.step }),
        reshard: { perRank: { "*": options.perRank } },
      });
      if (options.json === true) printJson({ input: dir, output: out, stepNr, dpSize: options.dp, tpSize: options.tp });
      else print(`wrote step ${stepNr} of ${dir} to ${out} for dp=${options.dp}, tp=${options.tp}`);
      return EXIT_OK;
    }));
}
