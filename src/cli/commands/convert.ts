import type { Command } from "commander";
import { extname } from "node:path";
import { DTYPES, SafetensorsDumper, Tensor, TorchTensorDumper, orderedDict, type StateValue } from "../../index.js";
import { fileSystemForPath } from "../../fs/file-system-for-path.js";
import { classify, isDict, loadCheckpointModel, loadFile, requireCheckpointDir, unwrapModel } from "../inputs.js";
import { CliError, EXIT_OK, exitCodeOf, formatBytes, print, printJson } from "../output.js";
import { progressBar } from "../progress.js";
import { nodePath, walkBudget, walkState } from "../state-walk.js";
import { parseStepNr } from "./arguments.js";

const OUTPUT_FORMATS: Record<string, "pt" | "safetensors"> = { ".pt": "pt", ".pth": "pt", ".safetensors": "safetensors" };

/**
 * Bytes that writing expanded tensors out in full may add to a safetensors file (which has no
 * strides, so a tensor broadcast with stride 0 is written element by element): a 500-byte `.pt`
 * can hold a tensor of a few bytes expanded to gigabytes. Beyond this, convert refuses and says
 * to write `.pt`, which keeps the expansion a view.
 */
export const MAX_EXPANSION_BYTES = 64 << 20;

export function convertCommand(program: Command): void {
  program
    .command("convert")
    .description("convert a model state dict between .pt and .safetensors, or write a checkpoint's model as one file")
    .argument("<in>", "a .pt or .safetensors file, a shard index (model.safetensors.index.json, pytorch_model.bin.index.json), a checkpoint step directory (step_<N>), or a checkpoint directory (its last checkpoint, or --step)")
    .argument("<out>", "the file to write: its extension (.pt, .pth or .safetensors) decides the format")
    .option("--step <n>", "with a checkpoint directory: the step to convert", parseStepNr)
    .option("--force", "overwrite <out> if it exists")
    .option("--json", "print JSON for scripts")
    .addHelpText(
      "after",
      `
A checkpoint's model file ({<model_key>: ..., "model_key": ...}) is written as the bare model state
dict, which model.load_state_dict(torch.load(OUT)) and safetensors readers take. A shard index is
read shard by shard into one state dict, so a sharded model becomes one file. safetensors holds
tensors only: nested dicts are flattened with "." (the tree is kept in the metadata), and a file
with other values (optimizer state, counters) cannot be converted to it. Tensors that share
storage in a .pt file are written once each in safetensors, which has no shared storage. An
expanded tensor (stride 0) stays a view in .pt; written to safetensors it is written out in full,
which is refused beyond ${formatBytes(MAX_EXPANSION_BYTES)} of added bytes.`,
    )
    .action(exitCodeOf(async (input: string, output: string, options: { step?: number; force?: boolean; json?: boolean }) => {
      const format = OUTPUT_FORMATS[extname(output).toLowerCase()];
      if (format === undefined) throw new CliError(`cannot tell the format to write from the name ${output}: end it in .pt or .safetensors`);
      const outputFileSystem = fileSystemForPath(output);
      if (options.force !== true && (await outputFileSystem.exists(output))) throw new CliError(`${output} exists: pass --force to overwrite it`);

      const target = await classify(input);
      let state: StateValue;
      let stepNr: number | undefined;
      let inputSize: number;
      if (target.kind === "file") {
        if (options.step !== undefined) throw new CliError("--step goes with a checkpoint directory, not a file");
        const progress = progressBar(`reading ${input}`);
        try {
          const file = await loadFile(input, target.fileSystem, progress);
          state = unwrapModel(file.state);
          inputSize = file.size;
        } finally {
          progress.stop();
        }
      } else {
        let checkpointDir: string;
        if (target.kind === "step") {
          if (options.step !== undefined && options.step !== target.stepNr) throw new CliError(`${input} is step ${target.stepNr}, but --step ${options.step} was given`);
          checkpointDir = target.checkpointDir;
          stepNr = target.stepNr;
        } else {
          await requireCheckpointDir(input);
          checkpointDir = input;
          stepNr = options.step;
        }
        const progress = progressBar("reading the model");
        let loaded;
        try {
          loaded = await loadCheckpointModel(checkpointDir, stepNr, progress);
        } finally {
          progress.stop();
        }
        stepNr = loaded.stepNr;
        state = loaded.model;
        inputSize = loaded.size;
      }
      if (state instanceof Tensor || !(isDict(state) || state instanceof Map)) throw new CliError(`${input} does not hold a state dict (a dict of tensors)`);
      // torch's state_dict() is an OrderedDict; give PyTorch what it would have saved itself.
      if (format === "pt" && isDict(state)) orderedDict(state);
      const tensors: Tensor[] = [];
      let expansion = 0;
      let expanded: string | undefined;
      walkState(state, { what: input, budget: walkBudget(inputSize) }, (event) => {
        if (event.kind !== "leaf" || !(event.value instanceof Tensor)) return;
        const tensor = event.value;
        tensors.push(tensor);
        const added = tensor.byteLength - tensor.storage.numel * DTYPES[tensor.dtype].itemSize;
        if (added > 0) {
          expansion += added;
          expanded ??= `${nodePath(event.node)} (${tensor.dtype} [${tensor.shape.join(", ")}] viewing ${tensor.storage.numel} stored elements)`;
        }
      });
      if (format === "safetensors" && expansion > MAX_EXPANSION_BYTES) {
        throw new CliError(
          `${input} holds expanded tensors, e.g. ${expanded}: safetensors has no strides, so writing them out would add ${formatBytes(expansion)} ` +
            `(more than ${formatBytes(MAX_EXPANSION_BYTES)}); convert to .pt instead, which keeps them as views`,
          "EXPANSION_LIMIT",
        );
      }

      const dumper = format === "pt" ? new TorchTensorDumper({ fileSystem: outputFileSystem }) : new SafetensorsDumper({ fileSystem: outputFileSystem });
      const writing = progressBar(`writing ${output}`);
      let digest;
      try {
        digest = await dumper.dump(state, output, { onProgress: (done, total) => writing.update(done, total) });
      } finally {
        writing.stop();
      }
      const tensorBytes = tensors.reduce((sum, tensor) => sum + tensor.byteLength, 0);
      if (options.json === true) {
        printJson({ input, output, format, ...(stepNr === undefined ? {} : { stepNr }), tensors: tensors.length, tensorBytes, size: digest.size });
      } else {
        const from = stepNr === undefined ? input : `the model of checkpoint ${stepNr}`;
        print(`wrote ${output} (${format === "pt" ? "PyTorch" : "safetensors"}, ${tensors.length} tensors, ${formatBytes(digest.size)}) from ${from}`);
      }
      return EXIT_OK;
    }));
}
