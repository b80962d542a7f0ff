// The package as users get it: the tarball `npm pack` makes, installed into an empty project, used
// there as ESM, from TypeScript against the shipped .d.ts files, and through its `ckpt` bin.
import assert from "node:assert/strict";
import { spawnSync, type SpawnSyncReturns } from "node:child_process";
import { existsSync, readFileSync, readdirSync } from "node:fs";
import { createRequire } from "node:module";
import { mkdir, mkdtemp, readdir, realpath, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { delimiter, dirname, join, sep } from "node:path";
import { after, before, describe, test } from "node:test";
import { pathToFileURL } from "node:url";

const ROOT = join(import.meta.dirname, "..");
const PACKAGE = JSON.parse(readFileSync(join(ROOT, "package.json"), "utf8")) as { version: string };

/**
 * Upper bound for the packed tarball: well above the library's own size means something that is not
 * the library (fixtures, bench data, source maps, a stray build) got in. About 180 KB at the first
 * 0.1.0 build, 324 KB once S3, the dashboard and the TF.js fit callbacks were in (2026-11-30); the
 * stray-file check above catches junk by name, this one by weight.
 */
const MAX_TARBALL_BYTES = 400 * 1024;
/** The files of `ckpt serve`'s page that are not compiled: copied from src/serve/page by the build. */
const PAGE_ASSETS = ["dist/serve/page/index.html", "dist/serve/page/style.css"];

/** What `npm pack --json` reports for one package. */
interface PackReport {
  filename: string;
  size: number;
  unpackedSize: number;
  files: { path: string; size: number }[];
}

// Children (npm, the installed bin through its `#!/usr/bin/env node`) run on the Node that runs
// this test, so the check holds for each Node version CI runs the suite on.
const env = { ...process.env, PATH: `${dirname(process.execPath)}${delimiter}${process.env.PATH ?? ""}`, CKPT_DEBUG: "" };

function run(command: string, args: string[], cwd: string): SpawnSyncReturns<string> {
  const result = spawnSync(command, args, { cwd, env, encoding: "utf8", maxBuffer: 64 << 20 });
  if (result.error) throw result.error;
  return result;
}

/** Runs a command that must succeed; a failure shows its output. */
function runOk(command: string, args: string[], cwd: string): string {
  const result = run(command, args, cwd);
  assert.equal(result.status, 0, `${command} ${args.join(" ")} exited with ${result.status}:\n${result.stdout}\n${result.stderr}`);
  return result.stdout;
}

let work: string;
let project: string;
let packed: PackReport;

before(async () => {
  // `npm test` builds dist/ before any test runs; building here would race with the test files that use it.
  assert.ok(existsSync(join(ROOT, "dist", "index.js")), "dist/ is missing: run `npm run build` (npm test does) first");
  work = await realpath(await mkdtemp(join(tmpdir(), "ckpt-installed-package-")));
  // --ignore-scripts: `prepare` would rebuild dist/ under the other test files' feet.
  const report = JSON.parse(runOk("npm", ["pack", "--json", "--ignore-scripts", "--pack-destination", work], ROOT)) as PackReport[];
  assert.equal(report.length, 1);
  packed = report[0]!;

  project = join(work, "project");
  await mkdir(project);
  await writeFile(join(project, "package.json"), JSON.stringify({ name: "uses-ckpt", private: true, type: "module" }));
  // The tarball's own dependencies come from the registry (or npm's cache: --prefer-offline);
  // @tensorflow/tfjs and @types/node are linked from this repository's node_modules, which keeps
  // the install fast and working offline. --ignore-scripts: npm would list the tarball's
  // `prepare` (which builds from sources the package does not ship) as an unreviewed script;
  // from the registry it is never run either.
  runOk(
    "npm",
    [
      "install",
      "--no-audit",
      "--no-fund",
      "--prefer-offline",
      "--ignore-scripts",
      join(work, packed.filename),
      join(ROOT, "node_modules", "@tensorflow", "tfjs"),
      join(ROOT, "node_modules", "@types", "node"),
    ],
    project,
  );
});

after(async () => {
  if (work !== undefined) await rm(work, { recursive: true, force: true });
});

describe("the package as npm pack makes it", () => {
  test("the tarball holds the built library, its types, the README and package.json, and nothing else", () => {
    const paths = packed.files.map((f) => f.path).sort();
    const stray = paths.filter((p) => !(p === "package.json" || p === "README.md" || p === "LICENSE" || /^dist\/.+\.(js|d\.ts)$/.test(p) || PAGE_ASSETS.includes(p)));
    assert.deepEqual(stray, [], "only package.json, README.md, LICENSE, dist/**/*.js, *.d.ts and the dashboard page's HTML and CSS belong in the tarball");
    for (const entry of ["dist/index.js", "dist/index.d.ts", "dist/tfjs/index.js", "dist/tfjs/index.d.ts", "dist/cli/main.js", "dist/serve/page/app.js", ...PAGE_ASSETS]) {
      assert.ok(paths.includes(entry), `${entry} is in the tarball`);
    }
    // Every built file comes from a source file: a stale dist/ (a renamed module) would ship dead code.
    const sources = new Set(listSources(join(ROOT, "src")));
    const stale = paths.filter((p) => p.startsWith("dist/") && !PAGE_ASSETS.includes(p)).map((p) => p.slice("dist/".length).replace(/(\.d\.ts|\.js)$/, ".ts")).filter((p) => !sources.has(p));
    assert.deepEqual(stale, [], "files in dist/ without a source in src/: `rm -rf dist && npm run build`");
    assert.ok(packed.size < MAX_TARBALL_BYTES, `the tarball is ${packed.size} bytes, more than ${MAX_TARBALL_BYTES}`);
  });
});

describe("the package installed from its tarball into an empty project", () => {
  test("ckpt and ckpt/tfjs import as ESM from the installed package, and a checkpoint saves and loads", async () => {
    await writeFile(join(project, "use.mjs"), USE_MJS);
    const checkpointDir = join(work, "checkpoints");
    const report = JSON.parse(runOk(process.execPath, ["use.mjs", checkpointDir], project)) as UseReport;
    const installed = pathToFileURL(join(project, "node_modules", "ckpt") + sep).href;
    assert.ok(report.core.startsWith(installed), `ckpt resolved to ${report.core}, not to the installed package`);
    assert.ok(report.tfjs.startsWith(installed), `ckpt/tfjs resolved to ${report.tfjs}, not to the installed package`);
    assert.deepEqual(report.steps, [10]);
    assert.equal(report.loadedStep, 10);
    assert.deepEqual(report.keys, ["model", "note", "step_nr"]);
    assert.equal(report.note, "saved by the installed package");
    assert.deepEqual(report.restoredWeights, report.savedWeights, "the reloaded weights are the saved ones");
    assert.notDeepEqual(report.freshWeights, report.savedWeights, "the model restored into started from other weights");
    assert.deepEqual((await readdir(join(checkpointDir, "step_10"))).sort(), ["manifest.json", "model.pt", "rank_0.pt"]);
  });

  test("ckpt/s3 imports from the installed package without the AWS SDK, and an s3:// directory says what to install", async () => {
    await writeFile(join(project, "use-s3.mjs"), USE_S3_MJS);
    const report = JSON.parse(runOk(process.execPath, ["use-s3.mjs"], project)) as { s3: string; exported: string; message: string };
    assert.ok(report.s3.startsWith(pathToFileURL(join(project, "node_modules", "ckpt") + sep).href), `ckpt/s3 resolved to ${report.s3}`);
    assert.equal(report.exported, "function");
    assert.match(report.message, /npm install @aws-sdk\/client-s3/);
  });

  test("a program that imports ckpt and ckpt/s3 bundles with esbuild where the optional peers are not installed, and runs", async () => {
    // The peers must be missing here, or the bundle would pass for the wrong reason.
    for (const peer of ["ioredis", "@aws-sdk/client-s3"]) {
      assert.throws(() => createRequire(join(project, "package.json")).resolve(peer), { code: "MODULE_NOT_FOUND" }, `${peer} resolves from the project`);
    }
    await writeFile(join(project, "use-bundled.mjs"), USE_BUNDLED_MJS);
    const { build } = await import("esbuild");
    // A literal import() of an optional peer anywhere the bundler can follow fails here ("Could not resolve").
    const result = await build({ absWorkingDir: project, entryPoints: ["use-bundled.mjs"], outfile: "bundled.mjs", bundle: true, platform: "node", format: "esm", logLevel: "silent" });
    assert.deepEqual(result.errors, []);
    const report = JSON.parse(runOk(process.execPath, ["bundled.mjs", join(work, "bundled-checkpoints")], project)) as { steps: number[]; s3: string };
    assert.deepEqual(report.steps, [3]);
    assert.match(report.s3, /npm install @aws-sdk\/client-s3/);
  });

  test("TypeScript files type-check against the shipped .d.ts files, and a wrong call does not", async () => {
    const tsc = join(ROOT, "node_modules", "typescript", "bin", "tsc");
    await writeFile(join(project, "tsconfig.json"), JSON.stringify(TSCONFIG_CORE));
    await writeFile(join(project, "tsconfig.tfjs.json"), JSON.stringify(TSCONFIG_TFJS));
    await writeFile(join(project, "tfjs.ts"), USE_TFJS_TS);
    await writeFile(join(project, "core.ts"), USE_CORE_TS);
    runOk(process.execPath, [tsc, "-p", "tsconfig.json"], project);
    runOk(process.execPath, [tsc, "-p", "tsconfig.tfjs.json"], project);

    // The same check must fail on a misuse, so the types are real and not `any`.
    await writeFile(join(project, "core.ts"), USE_CORE_TS.replace("await manager.beginCheckpoint(10);", 'await manager.beginCheckpoint("10");'));
    const wrong = run(process.execPath, [tsc, "-p", "tsconfig.json"], project);
    assert.equal(wrong.status, 2, `tsc should reject a string step number:\n${wrong.stdout}`);
    assert.match(wrong.stdout, /^core\.ts\(\d+,\d+\): error TS2345: Argument of type 'string' is not assignable to parameter of type 'number'/);
  });

  test("the ckpt bin prints the package's version and its help, and lists a directory it saved", async () => {
    const bin = join(project, "node_modules", ".bin", "ckpt");
    assert.equal(runOk(bin, ["--version"], project), `${PACKAGE.version}\n`);
    assert.equal(runOk(bin, ["-V"], project), `${PACKAGE.version}\n`);
    const help = runOk(bin, ["--help"], project);
    assert.match(help, /^Usage: ckpt \[options\] \[command\]/);
    for (const command of ["ls", "inspect", "verify", "prune", "convert", "diff", "launch"]) assert.match(help, new RegExp(`\\n  ${command} `), `--help lists ${command}`);

    const checkpointDir = join(work, "bin-checkpoints");
    await writeFile(join(project, "save-two.mjs"), SAVE_TWO_MJS);
    runOk(process.execPath, ["save-two.mjs", checkpointDir], project);
    const listing = JSON.parse(runOk(bin, ["ls", checkpointDir, "--json"], project)) as { checkpoints: { stepNr: number; status: string }[] };
    assert.deepEqual(
      listing.checkpoints.map((c) => [c.stepNr, c.status]),
      [
        [1, "committed"],
        [2, "committed"],
      ],
    );
    const table = runOk(bin, ["ls", checkpointDir], project);
    assert.match(table, /^STEP\s+SCORE\s+SIZE/);
    assert.match(table, /\n2 committed/);
  });
});

/** The .ts files under `dir`, as paths relative to it. */
function listSources(dir: string, prefix = ""): string[] {
  const names: string[] = [];
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    if (entry.isDirectory()) names.push(...listSources(join(dir, entry.name), `${prefix}${entry.name}/`));
    else if (entry.name.endsWith(".ts")) names.push(`${prefix}${entry.name}`);
  }
  return names;
}

interface UseReport {
  core: string;
  tfjs: string;
  steps: number[];
  loadedStep: number;
  keys: string[];
  note: string;
  savedWeights: number[][];
  freshWeights: number[][];
  restoredWeights: number[][];
}

// The project has no @aws-sdk/client-s3: ckpt/s3 loads, and using s3:// names the package to install.
const USE_S3_MJS = `
import { FileCheckpointManager } from "ckpt";
import { S3FileSystem } from "ckpt/s3";

let message = "no error";
try {
  await new FileCheckpointManager({ checkpointDir: "s3://bucket/run" }).getStepNumbers();
} catch (error) {
  message = error.message;
}
console.log(JSON.stringify({ s3: import.meta.resolve("ckpt/s3"), exported: typeof S3FileSystem, message }));
`;

// A program bundled into one file (esbuild): a save, and an s3:// directory without the AWS SDK.
const USE_BUNDLED_MJS = `
import { FileCheckpointManager, Tensor } from "ckpt";
import "ckpt/s3";

const manager = new FileCheckpointManager({ checkpointDir: process.argv[2] });
await manager.beginCheckpoint(3);
await manager.saveState({ model: { w: Tensor.from(new Float32Array([1, 2, 3]), { shape: [3] }) } });
await manager.commitCheckpoint();
const steps = await manager.getStepNumbers();
await manager.close();
let s3 = "no error";
try {
  await new FileCheckpointManager({ checkpointDir: "s3://bucket/run" }).getStepNumbers();
} catch (error) {
  s3 = error.message;
}
console.log(JSON.stringify({ steps, s3 }));
`;

// Plain JavaScript, as a user without TypeScript writes it.
const USE_MJS = `
import * as tf from "@tensorflow/tfjs";
import { FileCheckpointManager } from "ckpt";
import { captureModelState, restoreModelState } from "ckpt/tfjs";

await tf.setBackend("cpu");
tf.backend().firstUse = false; // the CPU backend's banner advising tfjs-node
const network = (seed) =>
  tf.sequential({ layers: [tf.layers.dense({ inputShape: [3], units: 2, kernelInitializer: tf.initializers.glorotUniform({ seed }) })] });
const weights = (model) => model.getWeights().map((w) => Array.from(w.dataSync()));

const trained = network(1);
const manager = new FileCheckpointManager({ checkpointDir: process.argv[2] });
await manager.beginCheckpoint(10);
await manager.saveState({ model: captureModelState(trained), step_nr: 10, note: "saved by the installed package" }, { modelKey: "model" });
await manager.commitCheckpoint();
await manager.close();

const reader = new FileCheckpointManager({ checkpointDir: process.argv[2] });
const { stepNr, state } = await reader.loadLastCheckpoint();
const fresh = network(2);
const freshWeights = weights(fresh);
restoreModelState(fresh, state.model);
console.log(JSON.stringify({
  core: import.meta.resolve("ckpt"),
  tfjs: import.meta.resolve("ckpt/tfjs"),
  steps: await reader.getStepNumbers(),
  loadedStep: stepNr,
  keys: Object.keys(state).sort(),
  note: state.note,
  savedWeights: weights(trained),
  freshWeights,
  restoredWeights: weights(fresh),
}));
await reader.close();
`;

const SAVE_TWO_MJS = `
import { FileCheckpointManager, Tensor } from "ckpt";

const manager = new FileCheckpointManager({ checkpointDir: process.argv[2] });
for (const step of [1, 2]) {
  await manager.beginCheckpoint(step);
  await manager.saveState({ model: { weight: Tensor.from(new Float32Array([step, 0.5])) }, step_nr: step });
  await manager.commitCheckpoint();
}
await manager.close();
`;

// A user's strict TypeScript project on Node. The core's .d.ts files are checked whole
// (skipLibCheck off); with ckpt/tfjs it has to be on, because tfjs 4.22's own .d.ts files do not
// pass a strict check (hash_util.d.ts names an undeclared Long; LayersModel vs InferenceModel).
const TSCONFIG_CORE = {
  compilerOptions: {
    target: "ES2022",
    module: "NodeNext",
    moduleResolution: "NodeNext",
    lib: ["ES2022"],
    types: ["node"],
    strict: true,
    exactOptionalPropertyTypes: true,
    noUncheckedIndexedAccess: true,
    skipLibCheck: false,
    noEmit: true,
  },
  files: ["core.ts"],
};

const TSCONFIG_TFJS = {
  extends: "./tsconfig.json",
  compilerOptions: { skipLibCheck: true },
  files: ["tfjs.ts"],
};

const USE_CORE_TS = `
import { CheckpointNotFoundError, FileCheckpointManager, Tensor, TorchTensorLoader, isOrderedDict, type StateDict, type StateValue } from "ckpt";

const manager = new FileCheckpointManager({ checkpointDir: "checkpoints" });
try {
  const { stepNr, state }: { stepNr: number; state: StateDict } = await manager.loadLastCheckpoint();
  console.log(stepNr, state.step_nr);
} catch (error) {
  if (!(error instanceof CheckpointNotFoundError)) throw error;
}
await manager.beginCheckpoint(10);
await manager.saveState({ model: { weight: Tensor.from(new Float32Array([1, 2])) }, step_nr: 10 }, { modelKey: "model" });
await manager.saveScore(0.5, { lowerBetter: true });
await manager.commitCheckpoint();
await manager.keepLastNCheckpoints(2);
const steps: number[] = await manager.getStepNumbers();
const loaded: StateValue = await new TorchTensorLoader().load("checkpoints/step_10/model.pt");
console.log(steps, isOrderedDict(loaded));
await manager.close();
`;

const USE_TFJS_TS = `
import * as tf from "@tensorflow/tfjs";
import type { StateDict } from "ckpt";
import { captureModelState, captureOptimizerState, restoreModelState, restoreOptimizerState } from "ckpt/tfjs";

const model: tf.Sequential = tf.sequential({ layers: [tf.layers.dense({ inputShape: [3], units: 2 })] });
const optimizer = tf.train.adam(0.01);
const state: StateDict = { model: captureModelState(model), optimizer: await captureOptimizerState(optimizer, model) };
restoreModelState(model, state.model as StateDict);
await restoreOptimizerState(optimizer, model, state.optimizer as StateDict);
`;
