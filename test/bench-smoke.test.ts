import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { join } from "node:path";
import { describe, it } from "node:test";

const ROOT = join(import.meta.dirname, "..");

// The benchmark is not part of the tests (its numbers are noisy); this only keeps it from rotting.
describe("the benchmark harness", () => {
  it("runs a quick pass and prints a table with a row for every operation of every scenario, the targets and the diagnostics", () => {
    const result = spawnSync(process.execPath, ["--import", "tsx", join(ROOT, "bench", "run.ts"), "--quick", "--runs", "1", "--no-python"], {
      cwd: ROOT,
      encoding: "utf8",
      timeout: 120_000,
    });
    assert.equal(result.status, 0, `the benchmark failed:\n${result.stdout}\n${result.stderr}`);
    const rows = result.stdout.split("\n").filter((line) => /^\| \([a-e]\)/.test(line));
    const row = (tag: string, text: string): string | undefined => rows.find((line) => line.startsWith(`| (${tag})`) && line.includes(text));

    for (const tag of ["a", "b"]) {
      for (const operation of [
        "save: TorchTensorDumper.dump",
        "save: FileCheckpointManager",
        "load: TorchTensorLoader.load",
        "load: FileCheckpointManager.loadCheckpoint",
        "load-into: TorchTensorLoader.load(path, { into })",
        "load-into: FileCheckpointManager.loadCheckpoint(step, { into })",
        "limit: plain write",
        "limit: O_DIRECT write",
        "limit: plain read",
        "limit: memory copy",
      ]) {
        const line = row(tag, operation);
        assert.ok(line, `no row for (${tag}) ${operation} in:\n${result.stdout}`);
        assert.match(line, /\d+(\.\d+)? (s|ms|µs) /, `no time in: ${line}`);
      }
    }
    // (b) also in steady state (after two untimed runs of the same size in the process).
    for (const operation of ["save, steady state (3rd run in one process): TorchTensorDumper.dump", "save, steady state (3rd run in one process): FileCheckpointManager", "load, steady state (3rd run in one process): TorchTensorLoader.load", "load-into, steady state (3rd run in one process): TorchTensorLoader.load(path, { into })"]) {
      const line = row("b", operation);
      assert.ok(line, `no row for (b) ${operation} in:\n${result.stdout}`);
      assert.match(line, /\d+(\.\d+)? (s|ms|µs) /, `no time in: ${line}`);
    }
    // Steady saves are judged against the O_DIRECT write measured the same way (third in a row).
    for (const tag of ["a", "b"]) {
      const line = row(tag, "limit, steady state (3rd run in one process): O_DIRECT write");
      assert.ok(line, `no steady O_DIRECT limit for (${tag}) in:\n${result.stdout}`);
      assert.match(line, /\d+(\.\d+)? (s|ms|µs) /, `no time in: ${line}`);
      assert.match(row(tag, "save, steady state (3rd run in one process): TorchTensorDumper.dump") ?? "", /\| \d+\.\d\d× +\|/, `no ratio to the steady limit for (${tag})`);
    }
    // (c): 4 ranks under ckpt launch against 4 plain parallel writes, each with a time.
    for (const operation of ["save: 4 ranks under ckpt launch", "limit: 4 processes writing the same bytes"]) {
      const line = row("c", operation);
      assert.ok(line, `no row for (c) ${operation} in:\n${result.stdout}`);
      assert.match(line, /\d+(\.\d+)? (s|ms|µs) /, `no time in: ${line}`);
    }
    // (d): the real background save, its time to finish and the event loop's delay, each with a time.
    for (const operation of ["blocked: beginCheckpoint", "until waitForPendingSave() resolved", "event loop's worst delay", "limit: memory copy of the state (reused", "limit: memory copy of the state into buffers last written 1 s before"]) {
      const line = row("d", operation);
      assert.ok(line, `no row for (d) ${operation} in:\n${result.stdout}`);
      assert.match(line, /\d+(\.\d+)? (s|ms|µs) /, `no time in: ${line}`);
    }
    // (e): S3 save and load against a plain PutObject / GetObject, each with a time.
    for (const operation of ["save: FileCheckpointManager to s3://", "limit: one plain PutObject", "load: loadCheckpoint from s3://", "limit: one plain GetObject"]) {
      const line = row("e", operation);
      assert.ok(line, `no row for (e) ${operation} in:\n${result.stdout}`);
      assert.match(line, /\d+(\.\d+)? (s|ms|µs) /, `no time in: ${line}`);
    }
    assert.match(row("d", "blocked: beginCheckpoint") ?? "", /\d\.\d\d× /, "the blocked time has no ratio to the memory copy");

    // The targets: each with a verdict (without the peer, its comparisons are NOT MEASURED).
    const targets = result.stdout.slice(result.stdout.indexOf("Targets (issues 6, 10 and 14):"), result.stdout.indexOf("How cost grows:"));
    const verdicts = targets.split("\n").filter((line) => /^\| \([a-d]\)/.test(line));
    for (const goal of ["steady state (3rd run in one process): TorchTensorLoader.load: ≥ 0.5× the speed of the best plain read", "the best plain write", "the best plain write, steady state", "the best plain read", "torch.load", "peak memory", "blocked by a background checkpoint", "event loop", "4 plain parallel writes"]) {
      assert.ok(verdicts.some((line) => line.includes(goal)), `no target about ${goal} in:\n${targets}`);
    }
    for (const line of verdicts) assert.match(line, /\| (MET|NOT MET|NOT MEASURED) +\|$/, `no verdict in: ${line}`);
    assert.ok(verdicts.some((line) => /\| (MET|NOT MET) +\|$/.test(line)), "no target was judged");
    // (d) is judged against the copy in a snapshot's conditions, the copy right after another beside it.
    assert.match(targets, /× the copy's time in a snapshot's conditions \(.*\); \d+\.\d+× a copy right after another/);

    // How cost grows: a row for each point of both sweeps, with a time for each Node operation.
    const scaling = result.stdout.slice(result.stdout.indexOf("How cost grows:"), result.stdout.indexOf("Diagnostics:"));
    const points = scaling.split("\n").filter((line) => /^\| (tensors|bytes) /.test(line));
    assert.equal(points.length, 4, `not two points per sweep in:\n${scaling}`);
    for (const line of points) assert.equal(line.match(/\d+(\.\d+)? (s|ms|µs) \(/g)?.length, 4, `not a time for each Node operation in: ${line}`);
    assert.match(scaling, /time per tensor at the largest point is \d/);

    // The diagnostics that back the reasons for targets not met.
    const diagnostics = result.stdout.slice(result.stdout.indexOf("Diagnostics:"));
    for (const tag of ["a", "b"]) {
      for (const diagnostic of ["zlib crc32", "plain write + fsync, a CRC-32 pass", "writer that discards", "load, verifyCrc: false", "{ into }), verifyCrc: false", "floor of a load"]) {
        assert.ok(
          diagnostics.split("\n").some((line) => line.startsWith(`| (${tag})`) && line.includes(diagnostic) && / (s|ms|µs) /.test(line)),
          `no diagnostic (${tag}) ${diagnostic} in:\n${diagnostics}`,
        );
      }
    }
    // (c) through the page cache too: what the write path costs, apart from the manager.
    assert.ok(diagnostics.split("\n").some((line) => line.startsWith("| (c)") && line.includes("directWrites: false") && / (s|ms|µs) /.test(line)), `no diagnostic (c) directWrites: false in:\n${diagnostics}`);
    assert.match(result.stdout, /page cache/);
    assert.match(result.stdout, /CPU: .*cores/);
    assert.match(result.stdout, /Load: .*load average/);
  });
});
