#!/usr/bin/env node
import { Command, CommanderError } from "commander";
import { createRequire } from "node:module";
import { convertCommand } from "./commands/convert.js";
import { diffCommand } from "./commands/diff.js";
import { inspectCommand } from "./commands/inspect.js";
import { launchCommand } from "./commands/launch.js";
import { lsCommand } from "./commands/ls.js";
import { pruneCommand } from "./commands/prune.js";
import { reshardCommand } from "./commands/reshard.js";
import { serveCommand } from "./commands/serve.js";
import { verifyCommand } from "./commands/verify.js";
import { isCkptError } from "../index.js";
import { CliError, EXIT_ERROR, printJson, stopPrinting } from "./output.js";

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
  for (const add of [lsCommand, inspectCommand, verifyCommand, pruneCommand, convertCommand, reshardCommand, diffCommand, serveCommand, launchCommand]) add(program);
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

/** `--json` among the options (before a `--` that ends them): errors are then also JSON on stdout. */
function wantsJson(argv: string[]): boolean {
  const args = argv.slice(2);
  const end = args.indexOf("--");
  return (end < 0 ? args : args.slice(0, end)).includes("--json");
}

function errorCode(error: unknown): string {
  if (error instanceof CliError || isCkptError(error)) return error.code;
  if (error instanceof CommanderError) return "USAGE";
  return "INTERNAL";
}

/** An error as one line on stderr and, with --json, as `{"error": {"code", "message"}}` on stdout. */
function reportError(error: unknown, message: string, json: boolean): void {
  process.stderr.write(`ckpt: ${message}\n`);
  if (json) printJson({ error: { code: errorCode(error), message } });
}

async function main(argv: string[]): Promise<void> {
  const program = buildProgram();
  const json = wantsJson(argv);
  try {
    await program.parseAsync(argv);
  } catch (error) {
    if (error instanceof CommanderError) {
      // Help and version exit 0; `ckpt` alone prints help on stderr and is a usage error.
      const ok = error.code === "commander.helpDisplayed" || error.code === "commander.version";
      process.exitCode = ok ? 0 : EXIT_ERROR;
      // commander printed its own line on stderr already.
      if (!ok && json) printJson({ error: { code: errorCode(error), message: oneLine(error.message.replace(/^error: /, "")) } });
      return;
    }
    reportError(error, oneLine(error instanceof Error ? error.message : String(error)), json);
    if (process.env.CKPT_DEBUG === "1" && error instanceof Error) process.stderr.write(`${error.stack}\n`);
    process.exitCode = EXIT_ERROR;
  }
}

// `ckpt verify DIR | head -1`: the reader left. Stop writing, but let the command finish: its exit
// code is its verdict (verify still checks every checkpoint and exits 1 when one is damaged).
process.stdout.on("error", (error: NodeJS.ErrnoException) => {
  if (error.code === "EPIPE" || error.code === "ERR_STREAM_DESTROYED") {
    stopPrinting();
    return;
  }
  throw error;
});

await main(process.argv);
