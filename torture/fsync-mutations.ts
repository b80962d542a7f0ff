/**
 * Drops each fsync of the code in turn and runs the power-loss class on it: every fsync that
 * matters must make the class fail. Usage: npx tsx torture/fsync-mutations.ts [--full]
 * It edits the source files in place and restores each one before the next mutation.
 */
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";

interface Mutation {
  name: string;
  /** Each file's lines to take the fsync out of (each must occur exactly once in its file). */
  edits: { file: string; line: string }[];
}

export const FSYNC_MUTATIONS: Mutation[] = [
  { name: "file fsync before its rename (LocalFileWriter.close)", edits: [{ file: "src/fs/local-file-system.ts", line: "      await this.handle.sync();\n" }] },
  { name: "directory fsync after a file's rename (LocalFileWriter.close)", edits: [{ file: "src/fs/local-file-system.ts", line: "      await syncDirectoryOf(this.finalPath);\n" }] },
  { name: "staging directory fsync before the commit rename", edits: [{ file: "src/checkpoint/rename-commit.ts", line: "  await fileSystem.syncDirectory(tmp);\n" }] },
  { name: "checkpoint directory fsync after the commit rename", edits: [{ file: "src/checkpoint/rename-commit.ts", line: "  await fileSystem.renameDirectory(tmp, target);\n  await fileSystem.syncDirectory(checkpointDir);\n" }] },
  { name: "checkpoint directory fsync after moving a checkpoint away (delete, retention)", edits: [{ file: "src/checkpoint/rename-commit.ts", line: "  await fileSystem.renameDirectory(path, deleting);\n  await fileSystem.syncDirectory(checkpointDir);\n" }] },
  { name: "checkpoint directory fsync at the end of recovery", edits: [{ file: "src/checkpoint/rename-commit.ts", line: "  }\n  await fileSystem.syncDirectory(checkpointDir);\n}" }] },
  { name: "step directory fsync after stripping training state (preserveModel)", edits: [{ file: "src/checkpoint/checkpoint-pruner.ts", line: "      await fileSystem.syncDirectory(info.path);\n" }] },
  {
    name: "both directory fsyncs that cover a staged file (after its rename, and the staging directory's before the commit)",
    edits: [
      { file: "src/fs/local-file-system.ts", line: "      await syncDirectoryOf(this.finalPath);\n" },
      { file: "src/checkpoint/rename-commit.ts", line: "  await fileSystem.syncDirectory(tmp);\n" },
    ],
  },
  { name: "lock file fsync before its link", edits: [{ file: "src/fs/local-lock.ts", line: "    await handle.sync();\n" }] },
];

/** What removing `line` leaves: the rename lines stay, only the fsync goes. */
function mutate(source: string, line: string): string {
  const at = source.indexOf(line);
  if (at < 0 || source.indexOf(line, at + 1) >= 0) throw new Error(`the line to remove must occur once: ${JSON.stringify(line)}`);
  const kept = line.split("\n").filter((l) => !l.includes("sync")).join("\n");
  return source.slice(0, at) + kept + source.slice(at + line.length);
}

const REPO_ROOT = fileURLToPath(new URL("../", import.meta.url));

async function main(): Promise<void> {
  const quick = !process.argv.includes("--full");
  const { powerLoss } = await import("./classes/power-loss.js");
  for (const mutation of FSYNC_MUTATIONS) {
    const originals = new Map<string, string>();
    const workDir = await mkdtemp(join(tmpdir(), "ckpt-fsync-mutation-"));
    try {
      for (const { file, line } of mutation.edits) {
        const path = join(REPO_ROOT, file);
        const original = originals.get(path) ?? (await readFile(path, "utf8"));
        originals.set(path, original);
        await writeFile(path, mutate(await readFile(path, "utf8"), line));
      }
      // The workload runs in a child process, which reads the mutated source.
      const result = await powerLoss({ seed: 1, budgetMs: 10 * 60_000, workDir, quick });
      // One example per kind of failure, the model card's apart from the checkpoints'.
      const examples = new Map<string, string>();
      for (const failure of result.failures) {
        const key = failure.detail.includes("model.yaml") ? `${failure.kind} (model.yaml)` : failure.kind;
        if (!examples.has(key)) examples.set(key, failure.detail);
      }
      console.log(`${result.failures.length > 0 ? "FAILS (caught)" : "passes (NOT caught)"}: ${mutation.name}: ${result.failures.length} failures`);
      for (const [key, detail] of examples) console.log(`    ${key}: ${detail.slice(0, 300)}`);
    } finally {
      for (const [path, original] of originals) await writeFile(path, original);
      await rm(workDir, { recursive: true, force: true });
    }
  }
}

if (process.argv[1] === fileURLToPath(import.meta.url)) await main();
