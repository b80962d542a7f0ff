import { existsSync } from "node:fs";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdir, readFile, rm, truncate, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { before, describe, test } from "node:test";

import {
  FileCheckpointManager,
  SafetensorsDumper,
  SafetensorsLoader,
  Tensor,
  TorchTensorDumper,
  bfloat16ToNumber,
  float16ToNumber,
  tensorDifference,
  tensorStats,
  type StateDict,
} from "../src/index.js";
import { arange, assertSameState, entries, modelState, saveStep, useTempDirs } from "./helpers/checkpoint-helpers.js";
import { describe as describeState } from "./helpers/describe.js";
import { asVersion1Manifest } from "./helpers/manifest-edits.js";
import { writeShardedModel } from "./helpers/sharded-model.js";
import { requireTorch, runPython } from "./helpers/torch-python.js";

const tempDir = useTempDirs("cli");
const ROOT = join(import.meta.dirname, "..");
const CLI = join(ROOT, "dist", "cli", "main.js");

interface Run {
  status: number | null;
  stdout: string;
  stderr: string;
}

/** Runs the built `ckpt` as a process (stderr is a pipe, so no progress bars). */
function ckpt(...args: string[]): Run {
  const result = spawnSync(process.execPath, [CLI, ...args], { encoding: "utf8", env: { ...process.env, CKPT_DEBUG: "" } });
  return { status: result.status, stdout: result.stdout, stderr: result.stderr };
}

function json<T = Record<string, unknown>>(run: Run): T {
  assert.equal(run.stderr, "", "nothing on stderr");
  return JSON.parse(run.stdout) as T;
}

/** Asserts one clear line on stderr (no stack trace), exit code 2, nothing on stdout. */
function assertFails(run: Run, message: RegExp): void {
  assert.equal(run.status, 2, `exit code 2, got ${run.status}: ${run.stderr}`);
  assert.equal(run.stdout, "");
  const lines = run.stderr.trimEnd().split("\n");
  assert.equal(lines.length, 1, `one line on stderr, got:\n${run.stderr}`);
  assert.match(lines[0]!, /^ckpt: /);
  assert.match(lines[0]!, message);
  assert.doesNotMatch(run.stderr, /\n\s+at /, "no stack trace");
}

before(() => {
  // `npm test` builds dist/ before any test runs; building here would race with other test files that import it.
  assert.ok(existsSync(join(ROOT, "dist", "cli", "main.js")), "dist/cli/main.js is missing: run `npm run build` (npm test does) first");
});

/**
 * A directory made by the manager: steps 1000-4000 with losses (lower is better), 1000 pruned to
 * its model, and an unfinished step_5000.tmp.
 */
async function managerDir(): Promise<string> {
  const dir = await tempDir();
  const manager = new FileCheckpointManager({ checkpointDir: dir });
  for (const [stepNr, loss] of [[1000, 2.5], [2000, 1.5], [3000, 1.75], [4000, 2]] as const) {
    await saveStep(manager, stepNr, { score: loss, lowerBetter: true, ...(stepNr === 4000 ? { metadata: { tokenizer: "bpe" } } : {}) });
  }
  await manager.deleteCheckpoint(1000, { preserveModel: true });
  await manager.close();
  await mkdir(join(dir, "step_5000.tmp"));
  await writeFile(join(dir, "step_5000.tmp", "rank_0.pt"), "half written");
  return dir;
}

let shared: Promise<string> | undefined;
/** One managerDir() for the tests that only read it. */
function sharedManagerDir(): Promise<string> {
  shared ??= managerDir();
  return shared;
}

let sharedTorch: string | undefined;
/** A directory written by PyTorch (TORCH_WRITER); `fresh` for a test that damages it. */
async function torchDir(python: string, fresh = false): Promise<string> {
  if (!fresh && sharedTorch !== undefined) return sharedTorch;
  const dir = await tempDir();
  runPython(python, TORCH_WRITER, [dir]);
  if (!fresh) sharedTorch = dir;
  return dir;
}

/** A directory in fairseq2's layout written by torch.save (no manifest.json). */
const TORCH_WRITER = `
import collections, os, sys, torch
root = sys.argv[1]
for n, score in [(100, "-0.5\\n"), (200, "-0.25\\n")]:
    path = os.path.join(root, f"step_{n}")
    os.makedirs(path)
    model = collections.OrderedDict([
        ("proj.weight", torch.arange(6, dtype=torch.float32).reshape(2, 3) * n),
        ("proj.bias", torch.tensor([n, -n], dtype=torch.int64)),
        ("norm.scale", torch.tensor([1.5, float("nan")], dtype=torch.bfloat16)),
    ])
    torch.save({"model": model, "model_key": "module"}, os.path.join(path, "model.pt"))
    torch.save({"optimizer": {"state": {0: {"step": torch.tensor(float(n))}}, "param_groups": [{"lr": 0.001, "betas": (0.9, 0.98)}]},
                "step_nr": n}, os.path.join(path, "rank_0.pt"))
    with open(os.path.join(path, "score.txt"), "w") as f:
        f.write(score)
torch.save(model, os.path.join(root, "plain.pt"))
`;

// ------------------------------------------------------------------ help and usage

describe("help and usage", () => {
  test("every command has --help, exit code 0", () => {
    for (const command of ["ls", "inspect", "verify", "prune", "convert", "diff"]) {
      const run = ckpt(command, "--help");
      assert.equal(run.status, 0, command);
      assert.match(run.stdout, new RegExp(`^Usage: ckpt ${command} `), command);
      assert.match(run.stdout, /--json/, `${command} has --json`);
    }
    const top = ckpt("--help");
    assert.equal(top.status, 0);
    assert.match(top.stdout, /Exit codes: 0 success; 1 verify found/);
  });

  test("an unknown option, command or missing argument is one line on stderr and exit code 2", () => {
    assertFails(ckpt("ls", "--bogus", "x"), /unknown option '--bogus'/);
    assertFails(ckpt("prune", "x", "--kep-last", "2"), /unknown option '--kep-last' \(Did you mean --keep-last\?\)/);
    assertFails(ckpt("lss"), /unknown command 'lss'/);
    assertFails(ckpt("inspect"), /missing required argument 'path'/);
    assertFails(ckpt("prune", "x", "--keep-last", "0"), /'--keep-last <n>' argument '0' is invalid\. it must be a positive integer/);
    const bare = ckpt();
    assert.equal(bare.status, 2);
    assert.match(bare.stderr, /Usage: ckpt/);
  });

  test("`npx ckpt` works in a clone: the built bin runs as a program (the build sets its executable bit)", () => {
    // npx executes this file itself. Not npx here: with an empty npm cache it installs this directory
    // into its cache, which runs `prepare` and rebuilds dist/ under the other test files' feet.
    const run = spawnSync(join(ROOT, "dist", "cli", "main.js"), ["--version"], { cwd: ROOT, encoding: "utf8" });
    assert.equal(run.status, 0, `dist/cli/main.js --version failed as a program: ${run.error?.message ?? run.stderr}`);
    assert.match(run.stdout, /^\d+\.\d+\.\d+/);
  });
});

// ------------------------------------------------------------------ ls

describe("ckpt ls", () => {
  test("lists step, score as saved with its direction, size, files, kind and status, marking the last and the best", async () => {
    const dir = await sharedManagerDir();
    const run = ckpt("ls", dir);
    assert.equal(run.status, 0, run.stderr);
    assert.equal(run.stderr, "");
    const lines = run.stdout.split("\n");
    assert.match(lines[0]!, /^STEP\s+SCORE\s+SIZE\s+FILES\s+KIND\s+STATUS$/);
    // Losses saved with lowerBetter show as saved, with ↓ (score.txt holds them negated).
    assert.match(lines[1]!, /^1000\s+2\.5 ↓\s+[\d.]+ KiB\s+3\s+model-only\s+committed$/);
    assert.match(lines[2]!, /^2000\s+1\.5 ↓\s+[\d.]+ KiB\s+5\s+resumable\s+committed\s+best$/);
    assert.match(lines[3]!, /^3000\s+1\.75 ↓\s+.*resumable\s+committed$/);
    assert.match(lines[4]!, /^4000\s+2 ↓\s+[\d.]+ KiB\s+6\s+resumable\s+committed\s+last$/);
    assert.match(lines[5]!, /^5000\s+-\s+12 B\s+1\s+-\s+unfinished \(\.tmp\)$/);
    assert.match(run.stdout, /4 committed \(3 resumable, 1 model-only\), 1 unfinished; .* last: 4000, best: 2000/);
  });

  test("--json gives every checkpoint with its files for scripts", async () => {
    const dir = await sharedManagerDir();
    const listing = json<{ lastStepNr: number; bestStepNr: number; checkpoints: Record<string, unknown>[] }>(ckpt("ls", dir, "--json"));
    assert.equal(listing.lastStepNr, 4000);
    assert.equal(listing.bestStepNr, 2000);
    const byName = Object.fromEntries(listing.checkpoints.map((c) => [c.name, c]));
    assert.deepEqual(Object.keys(byName), ["step_1000", "step_2000", "step_3000", "step_4000", "step_5000.tmp"]);
    assert.equal(byName.step_1000!.modelOnly, true);
    assert.equal(byName.step_2000!.isBest, true);
    assert.equal(byName.step_4000!.isLast, true);
    assert.deepEqual(byName.step_4000!.files, ["manifest.json", "metadata.pt", "model.pt", "rank_0.pt", "replicated.pt", "score.txt"]);
    assert.equal(byName["step_5000.tmp"]!.status, "unfinished");
    // Both the stored score (higher is better) and the score as saved, with its direction.
    assert.deepEqual([byName.step_2000!.score, byName.step_2000!.scoreAsSaved, byName.step_2000!.lowerBetter], [-1.5, 1.5, true]);
  });

  test("a score saved higher-is-better shows ↑, and one without a recorded direction shows score.txt's value with ↑", async () => {
    const dir = await tempDir();
    const manager = new FileCheckpointManager({ checkpointDir: dir });
    await saveStep(manager, 1, { score: 0.478975, lowerBetter: true });
    await saveStep(manager, 2, { score: 0.91 });
    await saveStep(manager, 3, { score: 0.5, lowerBetter: true });
    await manager.close();
    // Step 3's manifest as an earlier version wrote it: no direction.
    const manifestPath = join(dir, "step_3", "manifest.json");
    const { lowerBetter: _, ...older } = JSON.parse(await readFile(manifestPath, "utf8")) as Record<string, unknown>;
    await writeFile(manifestPath, asVersion1Manifest(older));
    const run = ckpt("ls", dir);
    assert.equal(run.status, 0, run.stderr);
    assert.match(run.stdout, /^1\s+0\.478975 ↓\s/m);
    assert.match(run.stdout, /^2\s+0\.91 ↑\s.*best$/m);
    assert.match(run.stdout, /^3\s+-0\.5 ↑\s.*last$/m);
    const listing = json<{ checkpoints: Record<string, unknown>[] }>(ckpt("ls", dir, "--json"));
    assert.deepEqual(
      listing.checkpoints.map((c) => [c.score, c.scoreAsSaved, c.lowerBetter]),
      [[-0.478975, 0.478975, true], [0.91, 0.91, false], [-0.5, undefined, undefined]],
    );
  });

  test("a directory written by PyTorch in fairseq2's layout lists, with its scores", async (t) => {
    const python = requireTorch(t);
    if (python === null) return;
    const dir = await torchDir(python);
    const run = ckpt("ls", dir);
    assert.equal(run.status, 0, run.stderr);
    // fairseq2 records no direction: score.txt's value, which reads higher is better.
    assert.match(run.stdout, /^100\s+-0\.5 ↑\s.*3\s+resumable\s+committed$/m);
    assert.match(run.stdout, /^200\s+-0\.25 ↑\s.*resumable\s+committed\s+last, best$/m);
  });

  test("a missing directory, a step directory, a file or an unrelated directory is a one-line error", async () => {
    const dir = await managerDir();
    assertFails(ckpt("ls", join(dir, "nope")), /nope: no such file or directory/);
    assertFails(ckpt("ls", join(dir, "step_2000")), /step_2000 is one checkpoint, not a checkpoint directory: give its parent/);
    assertFails(ckpt("ls", join(dir, "step_2000", "model.pt")), /model\.pt is a file, not a checkpoint directory/);
    assertFails(ckpt("ls", join(dir, "step_5000.tmp")), /is not a checkpoint directory: it has no step_<N> directories/);
  });

  test("a checkpoint with a damaged manifest is listed as damaged, not a failure of the listing", async () => {
    const dir = await managerDir();
    await writeFile(join(dir, "step_3000", "manifest.json"), "{ not json");
    const run = ckpt("ls", dir);
    assert.equal(run.status, 0);
    assert.match(run.stdout, /^3000\s.*damaged$/m);
    assert.match(run.stdout, /^step_3000: manifest\.json of step 3000 is not valid JSON$/m);
  });
});

// ------------------------------------------------------------------ inspect

describe("ckpt inspect", () => {
  test("a step shows the tree of every file: tensors with dtype, shape and bytes, and the other values", async () => {
    const dir = await sharedManagerDir();
    const run = ckpt("inspect", join(dir, "step_4000"));
    assert.equal(run.status, 0, run.stderr);
    const out = run.stdout;
    assert.match(out, /^model\.pt  \(PyTorch, [\d.]+ (B|KiB)\)$/m);
    assert.match(out, /^  model\n    encoder\.weight\s+float32\s+\[2, 3\]\s+24 B$/m);
    assert.match(out, /^    head\.weight\s+int64\s+\[3\]\s+24 B$/m);
    assert.match(out, /^  model_key: "model"$/m);
    assert.match(out, /^replicated\.pt  /m);
    assert.match(out, /^  epoch: 3$/m);
    assert.match(out, /^rank_0\.pt  /m);
    assert.match(out, /^        betas: \(0\.9, 0\.999\)$/m);
    assert.match(out, /^  lr_scale: 1\.0$/m, "a whole float shows as a float");
    assert.match(out, /^  big: 1152921504606846976$/m);
    assert.match(out, /^  dtype: torch\.float32$/m);
    assert.match(out, /^  data_reader\n    position: 1234\n    shard: "train-00001"\n    exhausted: None$/m);
    assert.match(out, /^metadata\.pt  /m);
    assert.match(out, /^3 tensors, 64 B of tensor data$/m);
  });

  test("--json lists tensors and values with their key paths, a key holding a dot in brackets", async () => {
    const dir = await sharedManagerDir();
    const result = json<{ files: { name: string; tensors: { key: string; dtype: string; shape: number[]; bytes: number }[]; values: { key: string; value: string }[] }[] }>(
      ckpt("inspect", join(dir, "step_4000"), "--json"),
    );
    assert.deepEqual(result.files.map((f) => f.name), ["model.pt", "replicated.pt", "rank_0.pt", "metadata.pt"]);
    assert.deepEqual(result.files[0]!.tensors[0], { key: 'model["encoder.weight"]', dtype: "float32", shape: [2, 3], bytes: 24 });
    assert.deepEqual(result.files[0]!.values, [{ key: "model_key", value: '"model"' }]);
    const rank = result.files[2]!;
    assert.ok(rank.tensors.some((t) => t.key === "optimizer.state.0.exp_avg" && t.dtype === "float32"));
    assert.ok(rank.values.some((v) => v.key === "step_nr" && v.value === "4000"));
  });

  test("--tensor prints statistics matching numpy's, for a file written by PyTorch", async (t) => {
    const python = requireTorch(t);
    if (python === null) return;
    const dir = await torchDir(python);
    const stats = json<{ file: string; key: string; dtype: string; stats: Record<string, number> }>(
      ckpt("inspect", join(dir, "step_200"), "--tensor", "model.proj.weight", "--json"),
    );
    assert.equal(stats.file, "model.pt");
    const expected = JSON.parse(runPython(python, `
import json, sys, torch
w = torch.load(sys.argv[1])["model"]["proj.weight"].double()
print(json.dumps({"min": w.min().item(), "max": w.max().item(), "mean": w.mean().item(), "std": w.std().item()}))
`, [join(dir, "step_200", "model.pt")])) as Record<string, number>;
    for (const key of ["min", "max", "mean", "std"]) assert.ok(Math.abs(stats.stats[key]! - expected[key]!) < 1e-9, key);

    const text = ckpt("inspect", join(dir, "step_200", "model.pt"), "--tensor", "model.norm.scale");
    assert.equal(text.status, 0, text.stderr);
    assert.match(text.stdout, /^model\["norm\.scale"\]  bfloat16  \[2\]  4 B/);
    assert.match(text.stdout, /^min\s+1\.5$/m);
    assert.match(text.stdout, /^nan\s+1$/m);
    assert.match(text.stdout, /^inf\s+0$/m);
  });

  test("a safetensors file shows its tensors and metadata", async () => {
    const dir = await tempDir();
    const path = join(dir, "m.safetensors");
    await new SafetensorsDumper().dump(modelState(2), path);
    const run = ckpt("inspect", path);
    assert.equal(run.status, 0, run.stderr);
    assert.match(run.stdout, /\(safetensors, [\d.]+ B\)/);
    assert.match(run.stdout, /^  encoder\.bias\s+float64\s+\[2\]\s+16 B$/m);
    assert.match(run.stdout, /^  metadata: format=pt$/m);
  });

  test("FILE:KEY picks the file of a step that --tensor reads", async () => {
    const dir = await sharedManagerDir();
    const run = json<{ file: string; key: string; dtype: string; stats: { min: number; max: number } }>(
      ckpt("inspect", join(dir, "step_4000"), "--tensor", "rank_0.pt:optimizer.state.1.exp_avg", "--json"),
    );
    assert.deepEqual([run.file, run.key, run.dtype, run.stats.min, run.stats.max], ["rank_0.pt", "optimizer.state.1.exp_avg", "int32", 7, 4000]);
  });

  test("a corrupt file, a missing key or a checkpoint directory is a one-line error", async () => {
    const dir = await managerDir();
    const bad = join(dir, "bad.pt");
    await writeFile(bad, "this is not a checkpoint");
    assertFails(ckpt("inspect", bad), /bad\.pt: not a valid PyTorch file: no zip end record/);
    assertFails(ckpt("inspect", join(dir, "step_4000"), "--tensor", "model.nope"), /no tensor model\.nope in .*step_4000; .*model\["encoder\.weight"\]/);
    assertFails(ckpt("inspect", join(dir, "step_4000"), "--tensor", "step_nr"), /step_nr in rank_0\.pt is not a tensor: 4000/);
    assertFails(ckpt("inspect", dir), /is a checkpoint directory: inspect one of its steps/);
    const st = join(dir, "bad.safetensors");
    await writeFile(st, Buffer.concat([Buffer.from([0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f]), Buffer.from("{}")]));
    assertFails(ckpt("inspect", st), /bad\.safetensors: not a valid safetensors file: the header length is 9223372036854775807 bytes, more than the 100000000/);
  });
});

// ------------------------------------------------------------------ verify

describe("ckpt verify", () => {
  test("a sound directory verifies with exit code 0, unfinished saves listed and not checked", async () => {
    const dir = await sharedManagerDir();
    const run = ckpt("verify", dir);
    assert.equal(run.status, 0, run.stdout + run.stderr);
    assert.equal(run.stderr, "", "no progress bar when stderr is not a terminal");
    assert.match(run.stdout, /^step_1000: sound \(2 files, .* checked\)$/m);
    assert.match(run.stdout, /^step_4000: sound \(5 files, .* checked\)$/m);
    assert.match(run.stdout, /^step_5000\.tmp: unfinished, not checked$/m);
    assert.match(run.stdout, /^4 checkpoints verified: 4 sound, 0 damaged$/m);
  });

  test("a flipped byte, a truncated file, a missing file and an extra file are each named, with exit code 1", async () => {
    const dir = await managerDir();
    const flip = join(dir, "step_2000", "rank_0.pt");
    const bytes = await readFile(flip);
    bytes[Math.floor(bytes.length / 2)]! ^= 0x10;
    await writeFile(flip, bytes);
    await truncate(join(dir, "step_3000", "model.pt"), 100);
    await rm(join(dir, "step_4000", "replicated.pt"));
    await writeFile(join(dir, "step_1000", "notes.txt"), "added later");

    const run = ckpt("verify", dir);
    assert.equal(run.status, 1, run.stdout + run.stderr);
    assert.match(run.stdout, /^step_2000: DAMAGED\n  rank_0\.pt: corrupt: its CRC-32 is [0-9a-f]{8}, the manifest says [0-9a-f]{8}$/m);
    assert.match(run.stdout, /^step_3000: DAMAGED\n  model\.pt: truncated: 100 bytes, the manifest says \d+$/m);
    assert.match(run.stdout, /^step_4000: DAMAGED\n  replicated\.pt: missing: the manifest lists it with \d+ bytes$/m);
    assert.match(run.stdout, /^step_1000: DAMAGED\n  notes\.txt: an extra file: not in the manifest/m);
    assert.match(run.stdout, /^4 checkpoints verified: 0 sound, 4 damaged$/m);

    // One step at a time, by --step or by giving the step's directory; --json for scripts.
    assert.equal(ckpt("verify", dir, "--step", "2000").status, 1);
    const report = json<{ sound: boolean; checkpoints: { name: string; problems: { file: string; problem: string }[] }[] }>(ckpt("verify", join(dir, "step_3000"), "--json"));
    assert.equal(report.sound, false);
    assert.deepEqual(report.checkpoints.map((c) => [c.name, c.problems.map((p) => p.file)]), [["step_3000", ["model.pt"]]]);
  });

  test("a flipped byte the manifest does not cover (a fairseq2 directory) is caught by parsing", async (t) => {
    const python = requireTorch(t);
    if (python === null) return;
    const dir = await torchDir(python, true);
    const sound = ckpt("verify", dir);
    assert.equal(sound.status, 0, sound.stdout);
    assert.match(sound.stdout, /^step_100: sound \(3 files, .* checked, no manifest\)\n  note: no manifest\.json/m);

    await truncate(join(dir, "step_200", "rank_0.pt"), 300);
    const run = ckpt("verify", dir);
    assert.equal(run.status, 1);
    assert.match(run.stdout, /^step_200: DAMAGED\n  rank_0\.pt: not a valid PyTorch file: /m);
  });

  test("a damaged manifest or score is reported, and a missing step or directory is an error", async () => {
    const dir = await managerDir();
    await writeFile(join(dir, "step_3000", "manifest.json"), '{"format": "ckpt-manifest"');
    await writeFile(join(dir, "step_2000", "score.txt"), "lots\n"); // as long as "-1.5\n"
    const run = ckpt("verify", dir);
    assert.equal(run.status, 1);
    assert.match(run.stdout, /^step_3000: DAMAGED\n  manifest\.json: manifest\.json of step 3000 is not valid JSON; the other files are only parsed$/m);
    // The CRC makes it damaged; a score that is no number alone would leave it usable, unscored (a note).
    assert.match(run.stdout, /^step_2000: DAMAGED\n  score\.txt: corrupt: its CRC-32 is [0-9a-f]{8}, the manifest says [0-9a-f]{8}\n  note: score\.txt of step 2000 does not hold a finite number: "lots": the step is treated as unscored$/m);
    assertFails(ckpt("verify", dir, "--step", "7"), /there is no checkpoint 7 in/);
    assertFails(ckpt("verify", join(dir, "missing")), /missing: no such file or directory/);
  });
});

// ------------------------------------------------------------------ prune

describe("ckpt prune", () => {
  test("--dry-run shows what would go and changes nothing; the real run does it", async () => {
    const dir = await managerDir();
    const before = await entries(dir);
    const dry = ckpt("prune", dir, "--keep-best", "1", "--dry-run");
    assert.equal(dry.status, 0, dry.stderr);
    assert.equal(
      dry.stdout,
      "would delete: step_1000, step_3000\nwould remove leftovers: step_5000.tmp (an unfinished save, 12 B)\nwould keep: step_2000, step_4000\n" +
        "  step_2000: best 1\n  step_4000: the last checkpoint (always kept, to resume)\n" +
        dry.stdout.split("\n").at(-2) +
        "\n",
    );
    assert.match(dry.stdout, /^would free [\d.]+ KiB$/m);
    assert.deepEqual(await entries(dir), before, "nothing changed");

    const run = json<{ deleted: number[]; stripped: number[]; kept: number[]; freedBytes: number }>(ckpt("prune", dir, "--keep-best", "1", "--json"));
    assert.deepEqual([run.deleted, run.stripped, run.kept], [[1000, 3000], [], [2000, 4000]]);
    assert.ok(run.freedBytes > 0);
    assert.deepEqual((await entries(dir)).filter((name) => name.startsWith("step_")), ["step_2000", "step_4000"], "the crashed save's .tmp went too");
  });

  test("--keep-last with --preserve-model keeps the models of the pruned checkpoints", async () => {
    const dir = await managerDir();
    const dry = json<{ deleted: number[]; stripped: number[]; kept: number[] }>(ckpt("prune", dir, "--keep-last", "1", "--preserve-model", "--dry-run", "--json"));
    const run = ckpt("prune", dir, "--keep-last", "1", "--preserve-model");
    assert.equal(run.status, 0, run.stderr);
    assert.match(run.stdout, /^deleted: none\nkept only the model of: step_2000, step_3000\nremoved leftovers: step_5000\.tmp \(an unfinished save, 12 B\)\nkept: step_1000, step_4000\nfreed /);
    assert.deepEqual([dry.deleted, dry.stripped, dry.kept], [[], [2000, 3000], [1000, 4000]], "the dry run predicted it");
    const listing = json<{ checkpoints: { stepNr: number; modelOnly: boolean; status: string }[] }>(ckpt("ls", dir, "--json"));
    assert.deepEqual(listing.checkpoints.map((c) => [c.stepNr, c.modelOnly]), [[1000, true], [2000, true], [3000, true], [4000, false]]);
    assert.equal(ckpt("verify", dir).status, 0, "what is left is sound");
  });

  test("pruning a directory a running job owns is refused; bad arguments are one-line errors", async () => {
    const dir = await managerDir();
    const owner = new FileCheckpointManager({ checkpointDir: dir });
    await saveStep(owner, 6000);
    try {
      assertFails(ckpt("prune", dir, "--keep-last", "1"), /is in use by another manager/);
    } finally {
      await owner.close();
    }
    assertFails(ckpt("prune", dir), /give at least one rule: --keep-last <n>, --keep-best <n>, --keep-every <n> or --keep-one-per <duration>/);
    assertFails(ckpt("prune", dir, "--keep-one-per", "6"), /'--keep-one-per <duration>' argument '6' is invalid\. it must be a positive duration/);
    assertFails(ckpt("prune", dir, "--keep-one-per", "0h"), /it must be a positive duration/);
    assertFails(ckpt("prune", dir, "--keep-every", "0"), /'--keep-every <n>' argument '0' is invalid\. it must be a positive integer/);
    assertFails(ckpt("prune", join(dir, "nothing-here"), "--keep-last", "1"), /no such file or directory/);
  });

  test("rules combine: --dry-run names the rule that keeps each survivor, and the real run does what it said", async () => {
    const dir = await managerDir(); // losses: 1000 (model-only) 2.5, 2000 1.5, 3000 1.75, 4000 2
    const dry = ckpt("prune", dir, "--keep-last", "1", "--keep-best", "1", "--keep-every", "3000", "--dry-run");
    assert.equal(dry.status, 0, dry.stderr);
    assert.match(
      dry.stdout,
      /^would delete: step_1000\nwould remove leftovers: .*\nwould keep: step_2000, step_3000, step_4000\n  step_2000: best 1\n  step_3000: milestone: every 3000 steps\n  step_4000: last 1; the last checkpoint \(always kept, to resume\)\nwould free /,
    );
    const run = json<{ deleted: number[]; kept: number[]; keptBy: Record<string, string[]>; rules: Record<string, unknown> }>(
      ckpt("prune", dir, "--keep-last", "1", "--keep-best", "1", "--keep-every", "3000", "--json"),
    );
    assert.deepEqual(run.rules, { keepLast: 1, keepBest: 1, keepEvery: 3000 });
    assert.deepEqual([run.deleted, run.kept], [[1000], [2000, 3000, 4000]]);
    assert.deepEqual(run.keptBy["3000"], ["milestone: every 3000 steps"]);
    assert.deepEqual((await entries(dir)).filter((name) => name.startsWith("step_")), ["step_2000", "step_3000", "step_4000"]);
  });

  test("--keep-one-per thins the checkpoints older than the last n by their commit time", async () => {
    const dir = await managerDir();
    // Every step was committed within the same few seconds: one per day keeps the first of the older ones.
    const run = json<{ deleted: number[]; stripped: number[]; kept: number[]; keptBy: Record<string, string[]> }>(
      ckpt("prune", dir, "--keep-last", "1", "--keep-one-per", "1d", "--json"),
    );
    assert.deepEqual([run.deleted, run.stripped, run.kept], [[2000, 3000], [], [1000, 4000]]);
    assert.deepEqual(run.keptBy["1000"], ["one per 1d"]);
  });
});

// ------------------------------------------------------------------ convert and diff

describe("ckpt convert and ckpt diff", () => {
  test("a PyTorch state dict converts to safetensors and back; PyTorch loads the result and numpy parses the safetensors", async (t) => {
    const python = requireTorch(t);
    if (python === null) return;
    const dir = await torchDir(python);
    const st = join(dir, "plain.safetensors");
    const back = join(dir, "back.pt");
    const one = ckpt("convert", join(dir, "plain.pt"), st);
    assert.equal(one.status, 0, one.stderr);
    assert.match(one.stdout, /^wrote .*plain\.safetensors \(safetensors, 3 tensors, \d+ B\) from .*plain\.pt$/m);
    assert.equal(ckpt("convert", st, back).status, 0);

    const check = runPython(python, `
import json, struct, sys, numpy as np, torch
original, back = torch.load(sys.argv[1]), torch.load(sys.argv[2])
assert type(back).__name__ == "OrderedDict" and list(back) == list(original)
for k in original:
    assert back[k].dtype == original[k].dtype and torch.equal(back[k].view(torch.int16) if back[k].dtype == torch.bfloat16 else back[k], original[k].view(torch.int16) if original[k].dtype == torch.bfloat16 else original[k]), k
data = open(sys.argv[3], "rb").read()
(n,) = struct.unpack("<Q", data[:8])
header = json.loads(data[8:8 + n])
begin, end = header["proj.weight"]["data_offsets"]
w = np.frombuffer(data[8 + n + begin:8 + n + end], dtype="<f4").reshape(header["proj.weight"]["shape"])
assert (w == original["proj.weight"].numpy()).all()
print("ok")
`, [join(dir, "plain.pt"), back, st]);
    assert.equal(check.trim(), "ok");

    const same = ckpt("diff", join(dir, "plain.pt"), st);
    assert.equal(same.status, 0, same.stdout);
    assert.equal(same.stdout, "identical: 3 entries\n");
  });

  test("a checkpoint step converts to one model file, which diffs equal to the step", async () => {
    const dir = await managerDir();
    const out = join(dir, "model.safetensors");
    const run = ckpt("convert", join(dir, "step_3000"), out);
    assert.equal(run.status, 0, run.stderr);
    assert.match(run.stdout, /\(safetensors, 3 tensors, \d+ B\) from the model of checkpoint 3000$/m);
    assertSameState(await new SafetensorsLoader().load(out), modelState(3000));
    const byDir = json<{ stepNr: number; tensors: number }>(ckpt("convert", dir, join(dir, "last.pt"), "--json"));
    assert.deepEqual([byDir.stepNr, byDir.tensors], [4000, 3]);
    assert.equal(ckpt("diff", out, join(dir, "step_3000")).status, 0);
    assertFails(ckpt("convert", join(dir, "step_3000"), out), /model\.safetensors exists: pass --force/);
    assert.equal(ckpt("convert", join(dir, "step_2000"), out, "--force").status, 0);
  });

  test("converting training state to safetensors, or to an unknown extension, is a one-line error", async () => {
    const dir = await managerDir();
    assertFails(ckpt("convert", join(dir, "step_4000", "rank_0.pt"), join(dir, "r.safetensors")), /cannot save the state as safetensors: "optimizer\.state" is a dict with non-string keys/);
    assertFails(ckpt("convert", join(dir, "step_4000"), join(dir, "x.txt")), /cannot tell the format to write from the name .*x\.txt/);
    assertFails(ckpt("convert", join(dir, "step_77"), join(dir, "x.pt")), /step_77: no such file or directory/);
  });

  test("diff names missing keys, dtype and shape changes and the max absolute difference, exit code 1", async () => {
    const dir = await tempDir();
    const a: StateDict = { same: arange(0, [3]), moved: arange(0, [2, 2]), retyped: arange(0, [2]), reshaped: arange(0, [4]), gone: arange(0, [1]), lr: 0.5 };
    const b: StateDict = {
      same: arange(0, [3]),
      moved: Tensor.from(new Float32Array([0, 1, 2.25, 3]), { shape: [2, 2] }),
      retyped: Tensor.from(new Float64Array([0, 1])),
      reshaped: arange(0, [2, 2]),
      added: arange(0, [1]),
      lr: 0.25,
    };
    await new TorchTensorDumper().dump(a, join(dir, "a.pt"));
    await new SafetensorsDumper().dump(Object.fromEntries(Object.entries(b).filter(([, v]) => v instanceof Tensor)), join(dir, "b.safetensors"));
    await new TorchTensorDumper().dump(b, join(dir, "b.pt"));

    const run = ckpt("diff", join(dir, "a.pt"), join(dir, "b.pt"));
    assert.equal(run.status, 1);
    assert.equal(
      run.stdout,
      [
        "differs:   moved  float32 [2, 2]  max |a-b| = 0.25  (1 of 4 elements)",
        "changed:   retyped  float32 [2] -> float64 [2]",
        "changed:   reshaped  float32 [4] -> float32 [2, 2]",
        "only in A: gone  float32 [1]",
        "differs:   lr  0.5 -> 0.25",
        "only in B: added  float32 [1]",
        "",
        "6 differences, 1 entries equal",
        "",
      ].join("\n"),
    );
    const tolerant = json<{ identical: boolean; changes: { key: string }[] }>(ckpt("diff", join(dir, "a.pt"), join(dir, "b.pt"), "--atol", "0.5", "--json"));
    assert.deepEqual(tolerant.changes.map((c) => c.key), ["retyped", "reshaped", "gone", "lr", "added"], "within --atol, moved counts as equal");
    assert.equal(ckpt("diff", join(dir, "b.pt"), join(dir, "b.pt")).status, 0);
    assertFails(ckpt("diff", join(dir, "a.pt"), join(dir, "nope.pt")), /nope\.pt: no such file or directory/);
  });

  test("two steps are compared file by file", async () => {
    const dir = await sharedManagerDir();
    const run = json<{ identical: boolean; changes: { key: string; change: string }[] }>(ckpt("diff", join(dir, "step_1000"), join(dir, "step_4000"), "--json"));
    assert.equal(run.identical, false);
    const keys = run.changes.map((c) => `${c.change} ${c.key}`);
    assert.ok(keys.includes('values model.pt:["encoder.weight"]'));
    assert.ok(keys.includes("only-in-b rank_0.pt"), "step 1000 is model-only");
  });
});

describe("a checkpoint directory saved as safetensors", () => {
  test("lists, inspects, verifies and converts, the format told from the content", async () => {
    const dir = await tempDir();
    const manager = new FileCheckpointManager({ checkpointDir: dir, tensorLoader: new SafetensorsLoader(), tensorDumper: new SafetensorsDumper() });
    await saveStep(manager, 7, { state: { model: modelState(7) }, score: 0.5 });
    await manager.close();

    assert.match(ckpt("ls", dir).stdout, /^7\s+0\.5\s.*resumable\s+committed\s+last, best$/m);
    const inspect = ckpt("inspect", join(dir, "step_7"));
    assert.equal(inspect.status, 0, inspect.stderr);
    assert.match(inspect.stdout, /^model\.pt  \(safetensors, [\d.]+ (B|KiB)\)\n  model\n    encoder\.weight\s+float32\s+\[2, 3\]\s+24 B$/m);
    assert.match(inspect.stdout, /^  metadata: format=pt$/m);
    assert.equal(ckpt("verify", dir).status, 0);
    const out = join(dir, "model.pt");
    assert.equal(ckpt("convert", join(dir, "step_7"), out).status, 0);
    assert.equal(ckpt("diff", out, join(dir, "step_7")).stdout, "identical: 3 entries\n");

    const path = join(dir, "step_7", "model.pt");
    const bytes = await readFile(path);
    bytes[bytes.length - 3]! ^= 0x04;
    await writeFile(path, bytes);
    const damaged = ckpt("verify", dir);
    assert.equal(damaged.status, 1);
    assert.match(damaged.stdout, /^  model\.pt: corrupt: its CRC-32 is [0-9a-f]{8}, the manifest says [0-9a-f]{8}$/m);
  });
});

describe("the numbers behind inspect and diff", () => {
  test("16-bit floats decode exactly; statistics count NaN and Inf apart; differences honour the tolerance and NaN equals NaN", () => {
    assert.deepEqual([0x3c00, 0xc000, 0x3555, 0x0001, 0x7bff, 0x7c00, 0xfc00].map(float16ToNumber), [1, -2, 0.333251953125, 2 ** -24, 65504, Infinity, -Infinity]);
    assert.ok(Number.isNaN(float16ToNumber(0x7e00)));
    assert.deepEqual([0x3f80, 0x4049, 0xc2c8].map(bfloat16ToNumber), [1, 3.140625, -100]);

    const t = Tensor.from(new Float64Array([1, 2, 3, Number.NaN, Infinity, -Infinity]));
    // std is torch.std's default: unbiased (n - 1) over the finite elements.
    assert.deepEqual(tensorStats(t), { numel: 6, min: 1, max: 3, mean: 2, std: 1, nanCount: 1, infCount: 2 });
    assert.deepEqual(tensorStats(Tensor.from(BigInt64Array.from([-5n, 5n]))), { numel: 2, min: -5, max: 5, mean: 0, std: Math.sqrt(50), nanCount: 0, infCount: 0 });
    assert.equal(tensorStats(Tensor.zeros([0])).min, undefined);

    const a = Tensor.from(new Float32Array([0, 1, Number.NaN, 4]));
    const b = Tensor.from(new Float64Array([0, 1.5, Number.NaN, 3]));
    assert.deepEqual(tensorDifference(a, b), { maxAbsDiff: 1, differing: 2 });
    assert.deepEqual(tensorDifference(a, b, 0.5), { maxAbsDiff: 1, differing: 1 });
    assert.deepEqual(tensorDifference(a, Tensor.from(new Float32Array([0, 1, 7, 4]))), { maxAbsDiff: 0, differing: 1 }, "NaN against a number differs");
    // A transposed view is compared in row-major order, like its contiguous copy.
    const m = arange(0, [2, 3]);
    assert.deepEqual(tensorDifference(m.transpose(0, 1), m.transpose(0, 1).contiguous()), { maxAbsDiff: 0, differing: 0 });
  });
});

// ------------------------------------------------------------------ issue 12: indexes, legacy files, custom model keys

describe("sharded models with an index", () => {
  for (const kind of ["safetensors", "bin-legacy"] as const) {
    test(`inspect shows an index of ${kind} shards as one tree and what each shard holds; --tensor reads from its shard`, async (t) => {
      const python = requireTorch(t);
      if (python === null) return;
      const { indexPath } = await writeShardedModel(python, await tempDir(), kind);
      const run = ckpt("inspect", indexPath);
      assert.equal(run.status, 0, run.stderr);
      const format = kind === "safetensors" ? "safetensors" : "PyTorch";
      assert.match(run.stdout, new RegExp(`^.*index\\.json  \\(index of 3 ${format} shards, [\\d.]+ KiB\\)$`, "m"));
      assert.match(run.stdout, /^  embed\.weight\s+float32\s+\[256, 64\]\s+64 KiB$/m);
      assert.match(run.stdout, /^  head\.steps\s+int64\s+\[3\]\s+24 B$/m);
      assert.match(run.stdout, /^  shard \S+-00003-of-00003\.\S+: 4 tensors, [\d.]+ KiB$/m);
      assert.match(run.stdout, /^11 tensors, /m);
      const stats = json<{ stats: { min: number; max: number } }>(ckpt("inspect", indexPath, "--tensor", "head.steps", "--json"));
      assert.deepEqual([stats.stats.min, stats.stats.max], [1, 3]);
      const described = json<{ files: { shards: { tensors: number }[]; tensorCount: number }[] }>(ckpt("inspect", indexPath, "--json"));
      assert.deepEqual(described.files[0]!.shards.map((shard) => shard.tensors), [3, 4, 4]);
      assert.equal(described.files[0]!.tensorCount, 11);
    });
  }

  test("verify checks every shard of an index and the index against them: sound is 0, a damaged or missing shard is named with 1", async (t) => {
    const python = requireTorch(t);
    if (python === null) return;
    const { indexPath } = await writeShardedModel(python, await tempDir(), "bin");
    const sound = ckpt("verify", indexPath);
    assert.equal(sound.status, 0, sound.stdout + sound.stderr);
    assert.match(sound.stdout, /^.*pytorch_model\.bin\.index\.json: sound \(3 shards, 11 tensors, [\d.]+ KiB checked\)$/m);

    const second = join(indexPath, "..", "pytorch_model-00002-of-00003.bin");
    const bytes = await readFile(second);
    bytes[Math.floor(bytes.length / 2)]! ^= 0xff;
    await writeFile(second, bytes);
    await rm(join(indexPath, "..", "pytorch_model-00003-of-00003.bin"));
    const damaged = ckpt("verify", indexPath);
    assert.equal(damaged.status, 1, damaged.stderr);
    assert.match(damaged.stdout, /: DAMAGED$/m);
    assert.match(damaged.stdout, /^  pytorch_model-00002-of-00003\.bin: .*CRC-32/m);
    assert.match(damaged.stdout, /^  pytorch_model-00003-of-00003\.bin: missing: the index names it$/m);
    const report = json<{ sound: boolean; shards: { status: string }[] }>(ckpt("verify", indexPath, "--json"));
    assert.deepEqual([report.sound, report.shards.map((shard) => shard.status)], [false, ["sound", "damaged", "missing"]]);
  });

  test("an index converts to one .safetensors file, which diffs equal to it and to the same model indexed in the other format", async (t) => {
    const python = requireTorch(t);
    if (python === null) return;
    const bin = await writeShardedModel(python, await tempDir(), "bin-legacy");
    const safetensors = await writeShardedModel(python, await tempDir(), "safetensors");
    const out = join(await tempDir(), "model.safetensors");
    const converted = ckpt("convert", bin.indexPath, out);
    assert.equal(converted.status, 0, converted.stderr);
    assert.match(converted.stdout, /^wrote .*model\.safetensors \(safetensors, 11 tensors, [\d.]+ KiB\) from .*pytorch_model\.bin\.index\.json$/m);
    assert.deepEqual(describeState(await new SafetensorsLoader().load(out)), bin.expected);

    assert.equal(ckpt("diff", out, bin.indexPath).stdout, "identical: 11 entries\n");
    const across = ckpt("diff", bin.indexPath, safetensors.indexPath);
    assert.equal(across.status, 0, across.stdout);
    assert.equal(across.stdout, "identical: 11 entries\n");
    // One changed tensor shows as one difference.
    const changed = join(await tempDir(), "changed.safetensors");
    const state = (await new SafetensorsLoader().load(out)) as StateDict;
    await new SafetensorsDumper().dump({ ...state, "head.steps": Tensor.from(new BigInt64Array([1n, 2n, 4n])) }, changed);
    const differs = ckpt("diff", safetensors.indexPath, changed);
    assert.equal(differs.status, 1);
    assert.match(differs.stdout, /^differs:   \["head\.steps"\]  int64 \[3\]  max \|a-b\| = 1  \(1 of 3 elements\)$/m);
  });

  test("an index naming a missing shard is a one-line error for inspect, convert and diff", async () => {
    const dir = await tempDir();
    await new SafetensorsDumper().dump({ a: Tensor.from(new Float32Array([1])) }, join(dir, "one.safetensors"));
    const indexPath = join(dir, "model.safetensors.index.json");
    await writeFile(indexPath, JSON.stringify({ weight_map: { a: "one.safetensors", b: "two.safetensors" } }));
    assertFails(ckpt("inspect", indexPath), /the shard two\.safetensors named in the index is missing/);
    assertFails(ckpt("convert", indexPath, join(dir, "out.pt")), /the shard two\.safetensors named in the index is missing/);
    assertFails(ckpt("diff", indexPath, join(dir, "one.safetensors")), /the shard two\.safetensors named in the index is missing/);
  });
});

describe("legacy .pt files and custom model keys", () => {
  test("a legacy torch.save file inspects, verifies and converts", async (t) => {
    const python = requireTorch(t);
    if (python === null) return;
    const dir = await tempDir();
    const legacy = join(dir, "pytorch_model.bin");
    runPython(python, `
import collections, sys, torch
state = collections.OrderedDict([("proj.weight", torch.arange(6, dtype=torch.float32).reshape(2, 3)), ("proj.bias", torch.tensor([0.5, -0.5]))])
torch.save(state, sys.argv[1], _use_new_zipfile_serialization=False)
`, [legacy]);
    const inspected = ckpt("inspect", legacy);
    assert.equal(inspected.status, 0, inspected.stderr);
    assert.match(inspected.stdout, /^  proj\.weight\s+float32\s+\[2, 3\]\s+24 B$/m);
    assert.equal(json<{ stats: { max: number } }>(ckpt("inspect", legacy, "--tensor", "proj.weight", "--json")).stats.max, 5);
    const verified = ckpt("verify", legacy);
    assert.equal(verified.status, 0, verified.stdout + verified.stderr);
    assert.match(verified.stdout, /pytorch_model\.bin: sound \(\d+ B checked\)$/m);
    const out = join(dir, "model.safetensors");
    assert.equal(ckpt("convert", legacy, out).status, 0);
    assert.equal(ckpt("diff", legacy, out).stdout, "identical: 2 entries\n");

    // Cut inside its last storage: verify names what is wrong. Which storage is last depends on
    // memory addresses: a legacy file orders storages by the text of their Python object ids.
    const size = (await readFile(legacy)).length;
    await truncate(legacy, size - 4);
    const cut = ckpt("verify", legacy);
    assert.equal(cut.status, 1);
    assert.match(cut.stdout, new RegExp(`^  not a valid PyTorch file: truncated: storage "\\d+" \\((2|6) float32 elements\\) ends at byte ${size} but the file has ${size - 4} bytes$`, "m"));
  });

  test("a model file saved with a custom model key converts and diffs as its bare model", async () => {
    const dir = await tempDir();
    const manager = new FileCheckpointManager({ checkpointDir: dir });
    await manager.beginCheckpoint(7);
    await manager.saveState({ _model: modelState(7), step_nr: 7 }, { modelKey: "_model" });
    await manager.commitCheckpoint();
    await manager.close();
    const out = join(dir, "model.safetensors");
    const run = ckpt("convert", join(dir, "step_7", "model.pt"), out);
    assert.equal(run.status, 0, run.stderr);
    assertSameState(await new SafetensorsLoader().load(out), modelState(7));
    assert.equal(ckpt("diff", join(dir, "step_7", "model.pt"), out).stdout, "identical: 3 entries\n");
    assert.equal(ckpt("diff", join(dir, "step_7"), out).stdout, "identical: 3 entries\n");
  });
});
