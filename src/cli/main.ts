#!/usr/bin/env node
import { Command, CommanderError } from "commander";
import { createRequire } from "node:module";
import { convertCommand } from "./commands/convert.js";
import { diffCommand } from "./commands/diff.js";
import { inspectCommand } from "./commands/inspect.js";
import { launchCommand } from "./commands/launch.js";
import { lsCommand } from "./commands/ls.js";
import { pruneCommand } from "./commands/prune.js";
import { verifyCommand } from "./commands/verify.js";
import { EXIT_ERROR } from "./output.js";

/**
 * The `ckpt` command. Every failure is one line on stderr and exit code 2 (1 is kept for "the
 * check said no": verify found damage, diff found differences); CKPT_DEBUG=1 adds the stack.
 */
function buildProgram(): Command {
  const program = new Command("ckpt")
    .description("look at, check, prune and convert training checkpoints (PyTorch .pt and safetensors); launch training workers")
    .version(packageVersion(), "-V, --version")
    .showSuggestionAfterError(true)
    .exitOverride()
    .configureOutput({
      // commander's own errors ("unknown option", "missing argument"): one line, our prefix.
      outputError: (text, write) => write(`ckpt: ${oneLine(text.replace(/^error: /, ""))}\n`),
    })
    .addHelpText(
      "after",
      `
Exit codes: 0 success; 1 verify found a damaged checkpoint or diff found differences; 2 bad input
or an error. Progress bars appear on stderr only when it is a terminal.`,
    );
  for (const add of [lsCommand, inspectCommand, verifyCommand, pruneCommand, convertCommand, diffCommand, launchCommand]) add(program);
  return program;
}

function packageVersion(): string {
  try {
    return (createRequire(import.meta.url)("../../package.json") as { version: string }).version;
  } catch {
    return "unknown";
  }
}

function oneLine(text: string): string {
  return text.trim().replace(/\s*\n\s*/g, " ");
}

async function main(argv: string[]): Promise<void> {
  const program = buildProgram();
  try {
    await program.parseAsync(argv);
  } catch (error) {
    if (error instanceof CommanderError) {
      // Help and version exit 0; `ckpt` alone prints help on stderr and is a usage error.
      process.exitCode = error.code === "commander.helpDisplayed" || error.code === "commander.version" ? 0 : EXIT_ERROR;
      return;
    }
    process.stderr.write(`ckpt: ${oneLine(error instanceof Error ? error.message : String(error))}\n`);
    if (process.env.CKPT_DEBUG === "1" && error instanceof Error) process.stderr.write(`${error.stack}\n`);
    process.exitCode = EXIT_ERROR;
  }
}

// `ckpt inspect … | head`: the reader left; stop quietly, as command-line tools do.
process.stdout.on("error", (error: NodeJS.ErrnoException) => {
  if (error.code === "EPIPE") process.exit(0);
  throw error;
});

await main(process.argv);
