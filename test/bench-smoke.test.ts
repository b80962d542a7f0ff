import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { join } from "node:path";
import { describe, it } from "node:test";

const ROOT = join(import.meta.dirname, "..");

// The benchmark is not part of the tests (its numbers are noisy); this only keeps it from rotting.
describe("the benchmark harness", () => {
  it("runs a quick pass and prints a table with a row for every operation of every scenario", () => {
    const result = spawnSync(process.execPath, ["--import", "tsx", join(ROOT, "bench", "run.ts"), "--quick", "--runs", "1", "--no-python"], {
      cwd: ROOT,
      encoding: "utf8",
      timeout: 120_000,
    });
    assert.equal(result.status, 0, `the benchmark failed:\n${result.stdout}\n${result.stderr}`);
    const rows = result.stdout.split("\n").filter((line) => /^\| \([a-d]\)/.test(line));
    const row = (tag: string, text: string): string | undefined => rows.find((line) => line.startsWith(`| (${tag})`) && line.includes(text));

    for (const tag of ["a", "b"]) {
      for (const operation of [
        "save: TorchTensorDumper.dump",
        "save: FileCheckpointManager",
        "load: TorchTensorLoader.load",
        "load: FileCheckpointManager.loadCheckpoint",
        "limit: plain write",
        "limit: plain read",
        "limit: memory copy",
      ]) {
        const line = row(tag, operation);
        assert.ok(line, `no row for (${tag}) ${operation} in:\n${result.stdout}`);
        assert.match(line, /\d+(\.\d+)? (s|ms|µs) /, `no time in: ${line}`);
      }
    }
    assert.ok(row("c", ""), `no row for (c) in:\n${result.stdout}`);
    assert.ok(row("d", ""), `no row for (d) in:\n${result.stdout}`);
    assert.match(result.stdout, /page cache/);
    assert.match(result.stdout, /CPU: .*cores/);
  });
});
