/**
 * `ckpt` against files built to hurt it and against the rough edges of issue 9: each test runs the
 * built command as a process on files built byte by byte here (or saved by the library), with a
 * timeout that only guards against a hang.
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdir, open, stat, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { before, describe, test } from "node:test";
import { crc32 } from "node:zlib";

import { FileCheckpointManager, ShardedTensor, Tensor, TorchTensorDumper, tensorStats as tensorStatsOf } from "../src/index.js";
import { floatRepr, pathText, treeKeyText } from "../src/cli/key-path.js";
import { Op } from "../src/formats/pickle/opcodes.js";
import { bytesOf, float, global, int, pickle, str, u32, utf8, torchZip, type Part } from "./helpers/pickle-bytes.js";
import { arange, saveStep, useTempDirs } from "./helpers/checkpoint-helpers.js";
import { requireTorch, runPython } from "./helpers/torch-python.js";

const tempDir = useTempDirs("cli-hostile");
const ROOT = join(import.meta.dirname, "..");
const CLI = join(ROOT, "dist", "cli", "main.js");
/** Kills a run that hangs; no assertion is about time. */
const HANG_GUARD_MS = 60_000;
const PEAK_RSS = join(ROOT, "test", "helpers", "report-peak-rss.mjs");

interface Run {
  status: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

function ckpt(...args: string[]): Run {
  const result = spawnSync(process.execPath, [CLI, ...args], { encoding: "utf8", timeout: HANG_GUARD_MS, maxBuffer: 64 << 20, env: { ...process.env, CKPT_DEBUG: "" } });
  return { status: result.status, signal: result.signal, stdout: result.stdout, stderr: result.stderr };
}

/** Runs a shell command line (for pipes and limits), with the hang guard. */
function shell(script: string): Run {
  const result = spawnSync("bash", ["-c", script], { encoding: "utf8", timeout: HANG_GUARD_MS, maxBuffer: 64 << 20, env: { ...process.env, CKPT_DEBUG: "" } });
  return { status: result.status, signal: result.signal, stdout: result.stdout, stderr: result.stderr };
}

function assertOk(run: Run, status = 0): void {
  assert.equal(run.signal, null, `killed by ${run.signal} (a hang?)`);
  assert.equal(run.status, status, `exit code ${status} expected, got ${run.status}\nstdout: ${run.stdout.slice(0, 2000)}\nstderr: ${run.stderr.slice(0, 2000)}`);
}

/** One clear line on stderr naming what is wrong, exit code 2, no stack trace. */
function assertFails(run: Run, message: RegExp): void {
  assertOk(run, 2);
  const lines = run.stderr.trimEnd().split("\n");
  assert.equal(lines.length, 1, `one line on stderr, got:\n${run.stderr.slice(0, 2000)}`);
  assert.match(lines[0]!, /^ckpt: /);
  assert.match(lines[0]!, message);
  assert.doesNotMatch(run.stderr, /Maximum call stack|\n\s+at /);
}

before(() => {
  assert.ok(existsSync(CLI), "dist/cli/main.js is missing: run `npm run build` (npm test does) first");
});

// ---------------------------------------------------------------------------------------------
// Byte builders for .pt files (the pickle ones are in helpers/pickle-bytes.ts)
// ---------------------------------------------------------------------------------------------

/** `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, False, OrderedDict())`. */
function rebuildTensor(storageType: string, key: string, numel: number, size: number[], stride: number[]): number[] {
  return [
    ...global("torch._utils", "_rebuild_tensor_v2"),
    Op.MARK,
    ...[Op.MARK, ...str("storage"), ...global("torch", storageType), ...str(key), ...str("cpu"), ...int(numel), Op.TUPLE, Op.BINPERSID],
    ...int(0),
    Op.MARK, ...size.flatMap(int), Op.TUPLE,
    Op.MARK, ...stride.flatMap(int), Op.TUPLE,
    Op.NEWFALSE,
    ...global("collections", "OrderedDict"), Op.EMPTY_TUPLE, Op.REDUCE,
    Op.TUPLE,
    Op.REDUCE,
  ];
}


async function fileWith(name: string, bytes: Uint8Array): Promise<string> {
  const path = join(await tempDir(), name);
  await writeFile(path, bytes);
  return path;
}

// ---------------------------------------------------------------------------------------------
// Item 4: keys that join alike
// ---------------------------------------------------------------------------------------------

describe("diff compares places by their key paths", () => {
  test('a key "b.c" beside b → c, and an int key 0 beside a str key "0", are different places', async () => {
    const dir = await tempDir();
    const dumper = new TorchTensorDumper();
    const one = (value: number): Tensor => Tensor.from(new Float32Array([value]));
    await dumper.dump({ "b.c": one(1), b: { c: one(2) } }, join(dir, "dots-a.pt"));
    await dumper.dump({ "b.c": one(1), b: { c: one(3) } }, join(dir, "dots-b.pt"));
    const dots = ckpt("diff", join(dir, "dots-a.pt"), join(dir, "dots-b.pt"));
    assertOk(dots, 1);
    assert.equal(dots.stdout, "differs:   b.c  float32 [1]  max |a-b| = 1  (1 of 1 elements)\n\n1 difference, 1 entries equal\n");

    await dumper.dump(new Map<number | string, number>([[0, 1], ["0", 2]]), join(dir, "ints-a.pt"));
    await dumper.dump(new Map<number | string, number>([[0, 1], ["0", 3]]), join(dir, "ints-b.pt"));
    const ints = ckpt("diff", join(dir, "ints-a.pt"), join(dir, "ints-b.pt"), "--json");
    assertOk(ints, 1);
    const result = JSON.parse(ints.stdout) as { identical: boolean; same: number; changes: unknown[] };
    assert.deepEqual(result.changes, [{ key: '["0"]', change: "value", a: "2", b: "3" }]);
    assert.equal(result.same, 1);

    // The int 0 and the str "0" never pair up, though both print as 0 in Python's repr of a path.
    await dumper.dump(new Map([[0, 1]]), join(dir, "int.pt"));
    await dumper.dump(new Map([["0", 1]]), join(dir, "str.pt"));
    const typed = ckpt("diff", join(dir, "int.pt"), join(dir, "str.pt"));
    assertOk(typed, 1);
    assert.match(typed.stdout, /^only in A: 0  1\nonly in B: \["0"\]  1\n/);
  });

  test("diff compares the data of FSDP shards, not only their place in the full tensor", async () => {
    const dir = await tempDir();
    const shard = (first: number): { w: ShardedTensor } => ({
      w: new ShardedTensor(Tensor.from(new Float32Array([first, 2, 3]), { shape: [1, 3] }), { globalShape: [2, 3], offsets: [1, 0] }),
    });
    await new TorchTensorDumper().dump(shard(1), join(dir, "a.pt"));
    await new TorchTensorDumper().dump(shard(5), join(dir, "b.pt"));
    const run = ckpt("diff", join(dir, "a.pt"), join(dir, "b.pt"));
    assertOk(run, 1);
    assert.match(run.stdout, /^differs: {3}w  float32 \[1, 3\]  max \|a-b\| = 4  \(1 of 3 elements\)$/m);
    assertOk(ckpt("diff", join(dir, "a.pt"), join(dir, "a.pt")));
  });

  test("inspect shows the places apart: a key holding a dot in brackets, a str that reads as an int quoted", async () => {
    const path = join(await tempDir(), "keys.pt");
    await new TorchTensorDumper().dump({ "b.c": arange(0, [1]), b: { c: arange(0, [2]) }, n: new Map<number | string, number>([[1, 10], ["1", 20]]) }, path);
    const tree = ckpt("inspect", path);
    assertOk(tree);
    assert.match(tree.stdout, /^  b\.c\s+float32\s+\[1\]/m);
    assert.match(tree.stdout, /^  b\n    c\s+float32\s+\[2\]/m);
    assert.match(tree.stdout, /^  n\n    1: 10\n    "1": 20$/m);
    const listed = JSON.parse(ckpt("inspect", path, "--json").stdout) as { files: { tensors: { key: string }[]; values: { key: string; value: string }[] }[] };
    assert.deepEqual(listed.files[0]!.tensors.map((t) => t.key), ['["b.c"]', "b.c"]);
    assert.deepEqual(listed.files[0]!.values, [{ key: "n.1", value: "10" }, { key: 'n["1"]', value: "20" }]);
    // --tensor takes a path as shown, or keys joined with "." when that names one place only.
    assert.match(ckpt("inspect", path, "--tensor", '["b.c"]').stdout, /^\["b\.c"\]  float32  \[1\]/);
    assert.match(ckpt("inspect", path, "--tensor", "b.c").stdout, /^b\.c  float32  \[2\]/, "the exact path wins");
  });

  test("paths and keys are written so that no two read alike", () => {
    assert.equal(pathText(["model", "encoder.weight"]), 'model["encoder.weight"]');
    assert.equal(pathText(["optimizer", "state", 0, "exp_avg"]), "optimizer.state.0.exp_avg");
    assert.equal(pathText(["state", "0"]), 'state["0"]');
    assert.equal(pathText([1.5, true, null, 2n ** 70n]), "[1.5][True][None].1180591620717411303424");
    assert.equal(pathText(["a b", "x:y", ""]), '["a b"]["x:y"][""]');
    assert.equal(treeKeyText("encoder.weight"), "encoder.weight");
    assert.equal(treeKeyText("1"), '"1"');
    assert.equal(treeKeyText(1), "1");
    assert.equal(treeKeyText("None"), '"None"');
    assert.equal(treeKeyText(null), "None");
  });
});

// ---------------------------------------------------------------------------------------------
// Item 5: small pickles that describe huge or deep trees
// ---------------------------------------------------------------------------------------------

/**
 * `{"x": L10}` where L0 = [] and L(i+1) is a list holding L(i) ten times (memo GETs): 10^10 paths
 * from a few hundred bytes. `leaf` replaces L0's emptiness with one int, so two files can differ.
 */
function sharedListsPickle(leaf?: number): Uint8Array {
  const parts: Part[] = [Op.EMPTY_DICT, ...str("x"), Op.EMPTY_LIST];
  if (leaf !== undefined) parts.push(...int(leaf), Op.APPEND);
  parts.push(Op.BINPUT, 0, Op.POP);
  for (let level = 1; level <= 10; level++) {
    parts.push(Op.EMPTY_LIST, Op.MARK);
    for (let i = 0; i < 10; i++) parts.push(Op.BINGET, level - 1);
    parts.push(Op.APPENDS, Op.BINPUT, level);
    if (level < 10) parts.push(Op.POP);
  }
  parts.push(Op.SETITEM);
  return pickle(...parts);
}

/** `{"deep": [[[ ... [leaf] ... ]]]}`, `depth` lists deep. */
function deepListsPickle(depth: number, leaf: number): Uint8Array {
  const body = new Uint8Array(depth * 2 + 16);
  let at = 0;
  for (let i = 0; i < depth; i++) body[at++] = Op.EMPTY_LIST;
  body.set(int(leaf), at);
  at += 5;
  for (let i = 0; i < depth; i++) body[at++] = Op.APPEND;
  return pickle(Op.EMPTY_DICT, ...str("deep"), body.subarray(0, at), Op.SETITEM);
}

describe("inspect and diff on small hostile pickles", () => {
  test("a list nested 10 deep holding the level below 10 times each is walked once per list", async () => {
    const bytes = await torchZip(sharedListsPickle());
    assert.ok(bytes.length < 1024, `a small file (${bytes.length} bytes)`);
    const path = await fileWith("shared.pt", bytes);
    const run = ckpt("inspect", path);
    assertOk(run);
    const lines = run.stdout.trimEnd().split("\n");
    assert.ok(lines.length < 200, `${lines.length} lines`);
    assert.match(run.stdout, /^    1: \(the same list as x\.0\)$/m);
    assert.match(run.stdout, /^ {22}0: \[\]$/m, "the innermost list is shown once");

    const json = ckpt("inspect", path, "--json");
    assertOk(json);
    assert.ok((JSON.parse(json.stdout) as { files: { values: unknown[] }[] }).files[0]!.values.length < 200);

    assertOk(ckpt("diff", path, path));
    const other = await fileWith("shared-other.pt", await torchZip(sharedListsPickle(7)));
    const diff = ckpt("diff", path, other);
    assertOk(diff, 1);
    // L0 is a list of plain values, shown (and compared) as a value wherever it is.
    assert.match(diff.stdout, /^differs: {3}x\.0\.0\.0\.0\.0\.0\.0\.0\.0\.9  \[\] -> \[7\]$/m);
    assert.match(diff.stdout, /^10 differences, 81 entries equal$/m);
  });

  test("lists nested 200,000 deep are shown to a depth, compared without recursion, and nothing overflows the stack", async () => {
    const path = await fileWith("deep.pt", await torchZip(deepListsPickle(200_000, 1)));
    const run = ckpt("inspect", path);
    assertOk(run);
    assert.match(run.stdout, /: \(a list nested more than 100 levels deep: not shown\)$/m);
    assert.ok(run.stdout.length < 100_000, "the output stays small");

    assertOk(ckpt("diff", path, path));
    const other = await fileWith("deep-other.pt", await torchZip(deepListsPickle(200_000, 2)));
    const diff = ckpt("diff", path, other);
    assertOk(diff, 1);
    assert.match(diff.stdout, /^differs: {3}deep(\.0){99}  \(a list nested more than 100 levels deep\) -> \(a list nested more than 100 levels deep\)$/m);
    assertFails(ckpt("inspect", path, "--tensor", "deep"), /deep in .*deep\.pt is not a tensor: \[\[\[/);
  });

  test("a state with more entries than its file could hold stops with an error naming the file", async () => {
    // One list of 2,000 ints referenced 100,000 times: 200 KB describing 2 * 10^8 entries.
    const ints = bytesOf(...Array.from({ length: 2000 }, (_, i) => int(i)));
    const references = new Uint8Array(200_000).map((_, i) => (i % 2 === 0 ? Op.BINGET : 0));
    const bytes = pickle(Op.EMPTY_DICT, ...str("x"), Op.EMPTY_LIST, Op.MARK, ints, Op.APPENDS, Op.BINPUT, 0, Op.POP, Op.EMPTY_LIST, Op.MARK, references, Op.APPENDS, Op.SETITEM);
    const path = await fileWith("wide.pt", await torchZip(bytes));
    assertFails(ckpt("inspect", path), /wide\.pt: its state has more than \d+ entries, more than a file of its size can hold/);
    assertFails(ckpt("diff", path, path), /wide\.pt: its state has more than \d+ entries/);
  });
});

// ---------------------------------------------------------------------------------------------
// Item 6: the verdict survives a closed pipe
// ---------------------------------------------------------------------------------------------

describe("verify's exit code whatever happens to its output", () => {
  test("verify DIR | head -1 exits 1 when a later step is damaged", async () => {
    const dir = await tempDir();
    const manager = new FileCheckpointManager({ checkpointDir: dir });
    await saveStep(manager, 1);
    await saveStep(manager, 2);
    await manager.close();
    // Step 2 damaged by 3,000 extra files with long names: ~700 KB of report, far more than a
    // pipe holds, so `head` has surely gone before verify finishes writing.
    const long = "x".repeat(200);
    await Promise.all(Array.from({ length: 3000 }, (_, i) => writeFile(join(dir, "step_2", `${long}-${i}.txt`), "")));

    const piped = shell(`set -o pipefail; "${process.execPath}" "${CLI}" verify "${dir}" | head -1`);
    assertOk(piped, 1);
    assert.match(piped.stdout, /^step_1: sound \(\d+ files, .* checked\)\n$/);
    assert.equal(piped.stderr, "", "a closed pipe is not an error to report");

    const json = shell(`set -o pipefail; "${process.execPath}" "${CLI}" verify "${dir}" --json | head -c 100`);
    assertOk(json, 1);
    assertOk(shell(`set -o pipefail; "${process.execPath}" "${CLI}" verify "${dir}" --step 1 | head -1`), 0);
  });
});

// ---------------------------------------------------------------------------------------------
// Rough edges
// ---------------------------------------------------------------------------------------------

describe("prune says what it removed", () => {
  test("the .tmp directory of a crashed save is reported with its bytes", async () => {
    const dir = await tempDir();
    const manager = new FileCheckpointManager({ checkpointDir: dir });
    await saveStep(manager, 1);
    await manager.close();
    await mkdir(join(dir, "step_2.tmp"));
    await writeFile(join(dir, "step_2.tmp", "rank_0.pt"), new Uint8Array(1000));

    const dry = ckpt("prune", dir, "--keep-last", "5", "--dry-run");
    assertOk(dry);
    assert.equal(dry.stdout, "would delete: none\nwould remove leftovers: step_2.tmp (an unfinished save, 1000 B)\nwould keep: step_1\n  step_1: last 5; the last checkpoint (always kept, to resume)\nwould free 1000 B\n");
    const run = ckpt("prune", dir, "--keep-last", "5");
    assertOk(run);
    assert.equal(run.stdout, "deleted: none\nremoved leftovers: step_2.tmp (an unfinished save, 1000 B)\nkept: step_1\nfreed 1000 B\n");
    assert.equal(existsSync(join(dir, "step_2.tmp")), false);
  });
});

/** `{"w": x}` where x is one float32 (2.5) expanded with stride 0 to 2^31 elements (8 GiB). */
async function expandedFile(): Promise<string> {
  const bytes = pickle(Op.EMPTY_DICT, ...str("w"), ...rebuildTensor("FloatStorage", "0", 1, [65536, 32768], [0, 0]), Op.SETITEM);
  return fileWith("expanded.pt", await torchZip(bytes, { "0": new Uint8Array(new Float32Array([2.5]).buffer) }));
}

describe("expanded tensors (stride 0) are never written out in memory", () => {
  test("--tensor gives exact statistics of a 525-byte file's 8 GiB tensor from its one stored element", async () => {
    const path = await expandedFile();
    assert.ok((await stat(path)).size < 1024);
    const run = ckpt("inspect", path, "--tensor", "w", "--json");
    assertOk(run);
    const result = JSON.parse(run.stdout) as { bytes: number; expandedFrom: number; stats: Record<string, unknown> };
    assert.deepEqual(result.stats, { numel: 2 ** 31, min: 2.5, max: 2.5, mean: 2.5, std: 0, nanCount: 0, infCount: 0 });
    assert.deepEqual([result.bytes, result.expandedFrom], [2 ** 33, 4]);
    assert.match(ckpt("inspect", path).stdout, /^  w\s+float32\s+\[65536, 32768\]\s+8\.0 GiB \(expanded from 4 B\)$/m);
  });

  test("statistics over a partly expanded view count each stored element for its repeats, NaN included", () => {
    // [3, 2^20] viewing 3 stored floats with strides [1, 0]: each of 1, 2 and NaN repeated 2^20 times.
    const stored = Tensor.from(new Float32Array([1, 2, Number.NaN]));
    const view = new Tensor({ storage: stored.storage, shape: [3, 2 ** 20], strides: [1, 0] });
    const stats = tensorStatsOf(view);
    const n = 2 ** 21;
    assert.deepEqual(stats, { numel: 3 * 2 ** 20, min: 1, max: 2, mean: 1.5, std: Math.sqrt((n * 0.25) / (n - 1)), nanCount: 2 ** 20, infCount: 0 });
    // Overlapping strides that read a few stored elements billions of times are refused, not walked.
    const overlap = new Tensor({ storage: Tensor.from(new Float32Array(64)).storage, shape: Array(32).fill(2), strides: Array(32).fill(1) });
    assert.throws(() => tensorStatsOf(overlap), /would read 4294967296 elements from 64 stored ones/);
  });

  test("convert keeps the expansion a view in .pt and refuses to write it out to safetensors", async (t) => {
    const path = await expandedFile();
    const dir = await tempDir();
    assertFails(ckpt("convert", path, join(dir, "out.safetensors")), /expanded tensors, e\.g\. w \(float32 \[65536, 32768\] viewing 1 stored elements\).*8\.0 GiB.*convert to \.pt instead/);
    assert.equal(existsSync(join(dir, "out.safetensors")), false);
    const pt = join(dir, "out.pt");
    assertOk(ckpt("convert", path, pt));
    assert.ok((await stat(pt)).size < 4096, "the output stores one element");
    const python = requireTorch(t);
    if (python === null) return;
    const check = runPython(python, "import sys, torch\nw = torch.load(sys.argv[1])['w']\nprint(tuple(w.shape), w.stride(), w[65535, 32767].item())", [pt]);
    assert.equal(check.trim(), "(65536, 32768) (0, 0) 2.5");
  });
});

describe("inspect reads the zip directory and the pickle, verify streams", () => {
  test("inspect lists a file whose tensor bytes are damaged; --tensor and verify find the damage", async () => {
    const bytes = await torchZip(pickle(Op.EMPTY_DICT, ...str("w"), ...rebuildTensor("FloatStorage", "0", 4, [4], [1]), Op.SETITEM), {
      "0": new Uint8Array(new Float32Array([1, 2, 3, 4]).buffer),
    });
    const at = Buffer.from(bytes).indexOf(Buffer.from(new Float32Array([3]).buffer));
    bytes[at]! ^= 0x01;
    const dir = await tempDir();
    await mkdir(join(dir, "step_1"));
    const path = join(dir, "step_1", "model.pt");
    await writeFile(path, bytes);

    const run = ckpt("inspect", path);
    assertOk(run);
    assert.match(run.stdout, /^  w\s+float32\s+\[4\]\s+16 B$/m);
    assertFails(ckpt("inspect", path, "--tensor", "w"), /model\.pt: not a valid PyTorch file: entry "archive\/data\/0" fails its CRC-32 check/);
    const verify = ckpt("verify", dir);
    assertOk(verify, 1);
    assert.match(verify.stdout, /^  model\.pt: not a valid PyTorch file: entry "archive\/data\/0" fails its CRC-32 check/m);
  });

  test("a 1.5 GiB checkpoint is inspected and verified in less memory than the file holds", async () => {
    // A fairseq2-style step (no manifest) whose model.pt holds one 1.5 GiB storage, written sparse:
    // the bytes are zeros that take no disk, but a reader that held them would hold 1.5 GiB.
    const dir = await tempDir();
    await mkdir(join(dir, "step_1"));
    const path = join(dir, "step_1", "model.pt");
    const storageBytes = 3 * 2 ** 29;
    await writeSparseTorchFile(path, storageBytes);

    // Peak resident memory, not an address-space limit: how much address space Node reserves
    // differs between versions (0.7 GB on Node 20, 1.3 GB on Node 24) and says nothing of use.
    const peakOf = (run: Run): number => Number(/^peak-rss-kib (\d+)$/m.exec(run.stderr)?.[1] ?? Number.NaN) * 1024;
    const measured = (...args: string[]): Run => {
      const result = spawnSync(process.execPath, ["--import", PEAK_RSS, ...args], { encoding: "utf8", timeout: HANG_GUARD_MS, maxBuffer: 64 << 20, env: { ...process.env, CKPT_DEBUG: "" } });
      return { status: result.status, signal: result.signal, stdout: result.stdout, stderr: result.stderr };
    };
    const bound = 400 * 2 ** 20; // Node and the CLI themselves take ~100 MiB; the file is 1.5 GiB
    const inspect = measured(CLI, "inspect", path);
    assertOk(inspect);
    assert.match(inspect.stdout, /^  w\s+float32\s+\[402653184\]\s+1\.5 GiB$/m);
    assert.ok(peakOf(inspect) < bound, `inspect held ${peakOf(inspect)} bytes at its peak`);
    const verify = measured(CLI, "verify", dir);
    assertOk(verify);
    assert.match(verify.stdout, /^step_1: sound \(1 file, 1\.5 GiB checked, no manifest\)$/m);
    assert.ok(peakOf(verify) < bound, `verify held ${peakOf(verify)} bytes at its peak`);
    // The measure is real: a process that reads the file whole peaks above the bound.
    const whole = measured("-e", 'require("fs").readFileSync(process.argv[1])', path);
    assert.equal(whole.status, 0, whole.stderr);
    assert.ok(peakOf(whole) > storageBytes, `reading the file whole peaks at ${peakOf(whole)} bytes`);
  });
});

/** Writes `{"w": float32 tensor of storageBytes / 4 zeros}` as a stored zip, leaving the data a hole. */
async function writeSparseTorchFile(path: string, storageBytes: number): Promise<void> {
  const entries: { name: string; data: Uint8Array | number }[] = [
    { name: "archive/data.pkl", data: pickle(Op.EMPTY_DICT, ...str("w"), ...rebuildTensor("FloatStorage", "0", storageBytes / 4, [storageBytes / 4], [1]), Op.SETITEM) },
    { name: "archive/byteorder", data: utf8("little") },
    { name: "archive/data/0", data: storageBytes },
    { name: "archive/version", data: utf8("3\n") },
  ];
  const zeros = new Uint8Array(64 << 20);
  const crcOf = (data: Uint8Array | number): number => {
    if (typeof data !== "number") return crc32(data);
    let crc = 0;
    for (let done = 0; done < data; done += zeros.length) crc = crc32(zeros.subarray(0, Math.min(zeros.length, data - done)), crc);
    return crc;
  };
  const handle = await open(path, "w");
  try {
    let offset = 0;
    const central: number[] = [];
    for (const { name, data } of entries) {
      const size = typeof data === "number" ? data : data.length;
      const crc = crcOf(data);
      const nameBytes = utf8(name);
      const local = bytesOf(u32(0x04034b50), [20, 0], [0, 0], [0, 0], [0, 0, 0, 0], u32(crc), u32(size), u32(size), [nameBytes.length, 0], [0, 0], nameBytes);
      await handle.write(local, 0, local.length, offset);
      if (typeof data !== "number") await handle.write(data, 0, data.length, offset + local.length);
      central.push(...bytesOf(u32(0x02014b50), [20, 0], [20, 0], [0, 0], [0, 0], [0, 0, 0, 0], u32(crc), u32(size), u32(size), [nameBytes.length, 0], [0, 0], [0, 0], [0, 0], [0, 0], [0, 0, 0, 0], u32(offset), nameBytes));
      offset += local.length + size;
    }
    const end = bytesOf(u32(0x06054b50), [0, 0], [0, 0], [entries.length, 0], [entries.length, 0], u32(central.length), u32(offset), [0, 0]);
    const tail = bytesOf(central, end);
    await handle.write(tail, 0, tail.length, offset);
  } finally {
    await handle.close();
  }
}

describe("values shown as Python shows them", () => {
  /** Python's float repr, and ints, keys and int64 extremes as they are. */
  async function valuesFile(): Promise<string> {
    const int64 = new BigInt64Array([2n ** 63n - 1n, -(2n ** 63n), 5n]);
    const bytes = pickle(
      Op.EMPTY_DICT, Op.MARK,
      ...str("big"), ...float(1e300),
      ...str("negzero"), ...float(-0),
      ...str("small"), ...float(1e-5),
      ...str("whole"), ...float(3),
      ...str("keys"), Op.EMPTY_DICT, Op.MARK, ...int(1), ...str("int key"), ...str("1"), ...str("str key"), Op.SETITEMS,
      ...str("i64"), ...rebuildTensor("LongStorage", "0", 3, [3], [1]),
      Op.SETITEMS,
    );
    return fileWith("values.pt", await torchZip(bytes, { "0": new Uint8Array(int64.buffer) }));
  }

  test("floats as Python's repr, -0.0 kept, keys 1 and \"1\" apart", async () => {
    const run = ckpt("inspect", await valuesFile());
    assertOk(run);
    assert.match(run.stdout, /^  big: 1e\+300$/m);
    assert.match(run.stdout, /^  negzero: -0\.0$/m);
    assert.match(run.stdout, /^  small: 1e-05$/m);
    assert.match(run.stdout, /^  whole: 3\.0$/m);
    assert.match(run.stdout, /^  keys\n    1: "int key"\n    "1": "str key"$/m);
  });

  test("int64 extremes are exact in text and JSON", async () => {
    const path = await valuesFile();
    const text = ckpt("inspect", path, "--tensor", "i64");
    assertOk(text);
    assert.match(text.stdout, /^min\s+-9223372036854775808$/m);
    assert.match(text.stdout, /^max\s+9223372036854775807$/m);
    const json = ckpt("inspect", path, "--tensor", "i64", "--json");
    assertOk(json);
    assert.match(json.stdout, /"min": -9223372036854775808,/);
    assert.match(json.stdout, /"max": 9223372036854775807,/);
  });

  test("floats print exactly as Python's repr prints them", () => {
    const values = [0, -0, 1, -1.5, 1e300, -1e300, 1e16, 1e15, 123456789012345680, 1e-4, 1e-5, 1.5e-7, 0.1, 2 / 3, 5e-324, 1.7976931348623157e308, Infinity, -Infinity, NaN, 3.14159, 100, 1234.5];
    const python = spawnSync("python3", ["-c", "import sys, json\nfor v in json.loads(sys.stdin.read()): print(repr(float(v)))"], {
      input: JSON.stringify(values.map((v) => (Number.isFinite(v) ? (Object.is(v, -0) ? "-0.0" : v.toString()) : String(v).replace("Infinity", "inf")))),
      encoding: "utf8",
    });
    assert.equal(python.status, 0, python.stderr);
    assert.deepEqual(values.map(floatRepr), python.stdout.trimEnd().split("\n"));
  });
});

describe("--json errors", () => {
  test("an error is a JSON object on stdout as well as a line on stderr", async () => {
    const dir = await tempDir();
    const missing = ckpt("inspect", join(dir, "missing.pt"), "--json");
    assertFailsJson(missing, "INVALID_INPUT", /missing\.pt: no such file or directory/);
    const bad = join(dir, "bad.pt");
    await writeFile(bad, "not a checkpoint");
    assertFailsJson(ckpt("inspect", bad, "--json"), "TENSOR_LOAD", /bad\.pt: not a valid PyTorch file/);
    assertFailsJson(ckpt("ls", dir, "--json", "--bogus"), "USAGE", /unknown option '--bogus'/);
    assert.equal(ckpt("inspect", join(dir, "missing.pt")).stdout, "", "without --json, stdout stays empty");
  });
});

function assertFailsJson(run: Run, code: string, message: RegExp): void {
  assertOk(run, 2);
  assert.match(run.stderr, message);
  const error = (JSON.parse(run.stdout) as { error: { code: string; message: string } }).error;
  assert.equal(error.code, code);
  assert.match(error.message, message);
}

