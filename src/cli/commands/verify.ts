import type { Command } from "commander";
import { type FileSystem, TensorLoadError, checkTensorFile, isShardIndexPath, verifyCheckpoints, verifyShardIndex } from "../../index.js";
import { classify } from "../inputs.js";
import { CliError, EXIT_NEGATIVE, EXIT_OK, exitCodeOf, formatBytes, print, printJson } from "../output.js";
import { progressBar, type Progress } from "../progress.js";
import { parseStepNr } from "./arguments.js";

export function verifyCommand(program: Command): void {
  program
    .command("verify")
    .description("re-read every file of the checkpoints against manifest.json (sizes, CRC-32) and parse every tensor file; or check a sharded model's index or one tensor file")
    .argument("<dir>", "the checkpoint directory, one step directory (step_<N>), a shard index (model.safetensors.index.json, pytorch_model.bin.index.json) or a tensor file")
    .option("--step <n>", "verify only this step", parseStepNr)
    .option("--json", "print JSON for scripts")
    .addHelpText(
      "after",
      `
Names every bad file and what is wrong: missing, truncated, changed bytes (CRC-32), an extra file
not in the manifest, a file that does not parse. Unfinished saves (.tmp) are listed, not checked.
A shard index: every shard it names is there and parses (a .pt shard's entries against their
CRC-32), every indexed tensor is in its shard and no tensor is in two. A single tensor file is
read and parsed the same way (the legacy .pt format and safetensors record no checksums).
Exit code: 0 when every checkpoint checked is sound, 1 when one is damaged, 2 on bad input.`,
    )
    .action(exitCodeOf(async (dir: string, options: { step?: number; json?: boolean }) => {
      const target = await classify(dir);
      if (target.kind === "file") {
        if (options.step !== undefined) throw new CliError("--step goes with a checkpoint directory, not a file");
        return verifyFile(dir, target.fileSystem, options.json === true);
      }
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
        report = await verifyCheckpoints(checkpointDir, { fileSystem: target.fileSystem, ...(stepNr === undefined ? {} : { stepNr }), onProgress: (done, total) => progress.update(done, total) });
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
          print(`${c.name}: sound (${c.filesChecked} ${c.filesChecked === 1 ? "file" : "files"}, ${formatBytes(c.bytesChecked)} checked${c.hasManifest ? "" : ", no manifest"})`);
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

/**
 * A shard index: every shard streamed and parsed, every indexed tensor in its shard. Any other
 * tensor file: streamed (a `.pt` file's entries against their CRC-32) and parsed.
 */
async function verifyFile(path: string, fileSystem: FileSystem, json: boolean): Promise<number> {
  const progress = progressBar("verifying");
  let report: { sound: boolean; problems: { file: string; problem: string }[]; summary: string; json: unknown };
  try {
    report = isShardIndexPath(path) ? await verifyIndex(path, fileSystem, progress) : await verifyTensorFile(path, fileSystem, progress);
  } finally {
    progress.stop();
  }
  if (json) {
    printJson(report.json);
    return report.sound ? EXIT_OK : EXIT_NEGATIVE;
  }
  print(report.sound ? `${path}: sound (${report.summary})` : `${path}: DAMAGED`);
  for (const p of report.problems) print(p.file === "" ? `  ${p.problem}` : `  ${p.file}: ${p.problem}`);
  return report.sound ? EXIT_OK : EXIT_NEGATIVE;
}

async function verifyIndex(path: string, fileSystem: FileSystem, progress: Progress): Promise<{ sound: boolean; problems: { file: string; problem: string }[]; summary: string; json: unknown }> {
  const report = await verifyShardIndex(path, { fileSystem, onProgress: (done, total) => progress.update(done, total) });
  const problems = [
    ...report.shards.filter((shard) => shard.status !== "sound").map((shard) => ({ file: shard.file, problem: shard.problem ?? shard.status })),
    ...report.problems.map((problem) => ({ file: "", problem })),
  ];
  const tensors = report.shards.reduce((sum, shard) => sum + shard.tensors, 0);
  return { sound: report.sound, problems, summary: `${report.shards.length} shards, ${tensors} tensors, ${formatBytes(report.bytesChecked)} checked`, json: report };
}

async function verifyTensorFile(path: string, fileSystem: FileSystem, progress: Progress): Promise<{ sound: boolean; problems: { file: string; problem: string }[]; summary: string; json: unknown }> {
  const reader = await fileSystem.openReader(path);
  const size = reader.size;
  await reader.close();
  try {
    await checkTensorFile(path, { fileSystem, onProgress: (done, total) => progress.update(done, total) });
  } catch (error) {
    if (!(error instanceof TensorLoadError)) throw error;
    const problem = error.message.startsWith(`${error.path}: `) ? error.message.slice(error.path.length + 2) : error.message;
    return { sound: false, problems: [{ file: "", problem }], summary: "", json: { path, sound: false, problem } };
  }
  return { sound: true, problems: [], summary: `${formatBytes(size)} checked`, json: { path, sound: true, size } };
}
