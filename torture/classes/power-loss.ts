/**
 * Power loss: a SIGKILL keeps the page cache, so only a model of what a power cut loses can show a
 * missing fsync. The workload (saves, a re-save, a delete, retention, a model card) runs under
 * strace; every state a cut could leave (torture/power-loss/crash-states.ts) is materialised as a
 * real directory and must recover to what had been committed, with the values that were saved.
 */
import { spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdir, mkdtemp, readFile, readdir, rm, stat } from "node:fs/promises";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { bundledOnce } from "../lib/bundle-child.js";
import { checkState, materialise, promisesAt } from "../power-loss/check-state.js";
import { crashStates, describeOperation, fingerprint, type DirectoryState } from "../power-loss/crash-states.js";
import { fileOperations } from "../power-loss/file-operations.js";
import { parseStrace, straceArgs } from "../power-loss/strace-log.js";
import type { ClassFailure, ClassOptions, ClassResult, FaultClass } from "../types.js";

const REPO_ROOT = fileURLToPath(new URL("../../", import.meta.url));
const RAM_DISK = "/dev/shm";
const WORKLOAD = fileURLToPath(new URL("../power-loss/workload.ts", import.meta.url));

/** Both ways a file reaches the disk: through the page cache, and around it (direct writes). */
export const powerLoss: FaultClass = async (options) => {
  const halfBudget = { ...options, budgetMs: options.budgetMs / 2 };
  const buffered = await runPowerLoss({ ...halfBudget, workDir: join(options.workDir, "buffered") });
  const direct = await runPowerLoss({ ...halfBudget, workDir: join(options.workDir, "direct") }, { directWrites: true });
  const result: ClassResult = { name: "Power loss", cases: {}, failures: [...buffered.failures, ...direct.failures], figures: {} };
  for (const [label, run] of [["page cache", buffered], ["direct writes", direct]] as const) {
    for (const [kind, count] of Object.entries(run.cases)) result.cases[kind] = (result.cases[kind] ?? 0) + count;
    for (const [name, value] of Object.entries(run.figures)) result.figures[`${name} (${label})`] = value;
  }
  return result;
};

/**
 * `skipDirectorySync` runs the workload on a disk whose syncDirectory does nothing (a planted bug);
 * `stopAtFailure` ends the run at the first state that fails; `directWrites` has files past 4 KiB
 * written around the page cache (O_DIRECT) in 4 KiB blocks, as large files are by default.
 */
export async function runPowerLoss(options: ClassOptions, { skipDirectorySync = false, stopAtFailure = false, directWrites = false } = {}): Promise<ClassResult> {
  const result: ClassResult = { name: "Power loss", cases: {}, failures: [], figures: {} };
  const root = join(options.workDir, "traced");
  const traceFile = join(options.workDir, "trace.txt");
  await mkdir(root, { recursive: true });
  const run = await runTraced(root, traceFile, [...(options.quick ? ["quick"] : []), ...(directWrites ? ["direct"] : [])], skipDirectorySync);
  if (run !== undefined) {
    result.failures.push({ kind: "workload failed", detail: run });
    return result;
  }
  const calls = parseStrace(await readFile(traceFile, "utf8"));
  const ops = fileOperations(calls, root);
  // The model must end where the disk did, or the states built from it mean nothing.
  const final = await readTree(root);
  const states = crashStates(ops);
  const modelFinal = states.find((s) => s.cutAfter === ops.length && s.variant === "all kept")?.tree ?? lastAllKept(states);
  if (fingerprint(final) !== fingerprint(modelFinal)) {
    result.failures.push({ kind: "trace model differs from the disk", detail: `disk: ${[...final.keys()].join(", ")}; model: ${[...modelFinal.keys()].join(", ")}` });
  }
  result.figures["operations traced"] = ops.length;
  result.figures["fsyncs traced"] = ops.filter((op) => op.op === "fsync").length;
  result.figures["direct opens traced"] = calls.filter((call) => call.name === "openat" && call.result >= 0 && call.args[2]?.kind === "raw" && call.args[2].text.split("|").includes("O_DIRECT")).length;
  result.figures["distinct crash states"] = states.length;
  const started = Date.now();
  let checked = 0;
  // States are materialised on a RAM disk when there is one: fsync there costs nothing.
  const scratch = await mkdtemp(join(existsSync(RAM_DISK) ? RAM_DISK : options.workDir, "ckpt-power-loss-"));
  try {
    for (const state of states) {
      if (Date.now() - started > options.budgetMs || (stopAtFailure && result.failures.length > 0)) break;
      const dir = join(scratch, `state-${checked}`);
      await materialise(state.tree, dir);
      const problems = await checkState(dir, promisesAt(ops, state.cutAfter));
      await rm(dir, { recursive: true, force: true });
      checked++;
      const kind = state.variant.startsWith("durable plus") || state.variant.startsWith("all but") ? "reordered cut" : state.variant;
      result.cases[kind] = (result.cases[kind] ?? 0) + 1;
      for (const problem of problems) result.failures.push(failure(state.cutAfter, state.variant, ops.map(describeOperation), problem));
    }
  } finally {
    await rm(scratch, { recursive: true, force: true });
  }
  result.figures["crash states checked"] = checked;
  if (checked < states.length) result.figures["crash states left unchecked (budget)"] = states.length - checked;
  return result;
}

function failure(cut: number, variant: string, described: string[], problem: string): ClassFailure {
  const last = cut > 0 ? described[cut - 1] : "nothing";
  const kind = problem.includes("not listed") || problem.includes("lost") ? "committed checkpoint lost" : problem.includes("saving after the cut") || problem.includes("listing failed") ? "recovery failed" : "wrong or unloadable values";
  return { kind, detail: `cut after operation ${cut} (${last}), ${variant}: ${problem}` };
}

function lastAllKept(states: { cutAfter: number; variant: string; tree: DirectoryState }[]): DirectoryState {
  // The final "all kept" state may equal an earlier one (and so be deduplicated): the latest such is it.
  return [...states].reverse().find((s) => s.variant === "all kept")!.tree;
}

/** Runs the workload under strace; returns what went wrong, or undefined. */
async function runTraced(root: string, traceFile: string, flags: string[], skipDirectorySync: boolean): Promise<string | undefined> {
  // Bundled here, outside the trace: the traced process is plain node, without tsx's loader.
  const args = [...straceArgs(traceFile), process.execPath, await bundledOnce(WORKLOAD), root, ...flags];
  return new Promise((resolve) => {
    const child = spawn("strace", args, { cwd: REPO_ROOT, stdio: ["ignore", "ignore", "pipe"], env: { ...process.env, CKPT_TORTURE_SKIP_DIRECTORY_SYNC: skipDirectorySync ? "1" : "0" } });
    let stderr = "";
    child.stderr.on("data", (chunk: Buffer) => (stderr += chunk.toString()));
    child.on("error", (error) => resolve(`cannot run strace (apt-get install -y strace): ${error.message}`));
    child.on("close", (code) => resolve(code === 0 ? undefined : `strace + workload exited with ${code}: ${stderr.slice(-2000)}`));
  });
}

async function readTree(dir: string, prefix = "", tree: DirectoryState = new Map()): Promise<DirectoryState> {
  for (const name of (await readdir(join(dir, prefix))).sort()) {
    const path = prefix === "" ? name : `${prefix}/${name}`;
    if ((await stat(join(dir, path))).isDirectory()) {
      tree.set(path, "dir");
      await readTree(dir, path, tree);
    } else {
      tree.set(path, await readFile(join(dir, path)));
    }
  }
  return tree;
}
