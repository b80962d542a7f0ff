/**
 * Disk full: saves onto a small disk (a real tmpfs when this process may mount one) with its free
 * space set before each save. A save that does not fit must fail with a CheckpointSaveError naming
 * ENOSPC (early, before writing, when the tensors alone exceed the free space), leave the earlier
 * checkpoints loadable and no temporary files, and the same save must work once space is back.
 */
import { readdir } from "node:fs/promises";
import { join } from "node:path";
import { isDeepStrictEqual } from "node:util";
import { CheckpointSaveError, FileCheckpointManager, Tensor, type StateDict } from "../../src/index.js";
import { storageBytes } from "../../src/checkpoint/free-space.js";
import { smallDisk } from "../disk-full/small-disk.js";
import { arrayBufferPeak } from "../lib/memory-peak.js";
import { plainValues, seededRandom } from "../plain-values.js";
import type { ClassFailure, ClassOptions, ClassResult, FaultClass } from "../types.js";

/** Room for the last checkpoint kept and a new one (states are at most 2.4 MB of tensors), so a save fits once the filler is gone. */
const DISK_BYTES = 8 << 20;
const KINDS = ["far too small", "tight", "many small tensors", "no space at all", "retention on a full disk"] as const;
type CaseKind = (typeof KINDS)[number];
/**
 * A save holds about 13 MiB of fixed buffers whatever the state (the file writer's 4 MiB, the
 * digest's 8 MiB chunk, the zip stage's 1 MiB): below this the ratio would measure those, not the state.
 */
const MEMORY_RATIO_FLOOR_BYTES = 16 << 20;

/** A state of `count` float32 tensors of `elements` each, its values drawn from `seed`. */
function makeState(seed: number, count: number, elements: number): StateDict {
  const model: Record<string, Tensor> = {};
  for (let i = 0; i < count; i++) model[`layer${i}`] = Tensor.from(Float32Array.from({ length: elements }, (_, j) => seed + i * 0.5 + j));
  return { model, seed };
}

export const diskFull: FaultClass = async (options: ClassOptions): Promise<ClassResult> => {
  const result: ClassResult = { name: "Disk full", cases: {}, failures: [], figures: {} };
  const random = seededRandom(options.seed);
  // Odd seeds write files past 64 KiB around the page cache (O_DIRECT) in 64 KiB blocks, so a disk
  // fills up in the middle of a direct write too; even seeds write through the page cache only.
  const directWrites = options.seed % 2 === 1 ? { blockBytes: 64 << 10 } : false;
  const disk = await smallDisk(join(options.workDir, "small-disk"), DISK_BYTES, { directWrites });
  result.figures.disk = disk.kind;
  result.figures.writes = directWrites === false ? "through the page cache" : "direct (O_DIRECT) in 64 KiB blocks past the first";
  const manager = new FileCheckpointManager({ checkpointDir: disk.dir, fileSystem: disk.fileSystem });
  const committed = new Map<number, StateDict>();
  const fail = (kind: string, caseId: string, detail: string): void => void result.failures.push({ kind, detail: `${caseId}: ${detail}` } satisfies ClassFailure);
  const save = async (stepNr: number, state: StateDict): Promise<void> => {
    await manager.beginCheckpoint(stepNr);
    await manager.saveState(state);
    await manager.commitCheckpoint();
  };
  let early = 0;
  let midWrite = 0;
  let fitted = 0;
  let worstMemoryRatio = 0;
  let worstMemoryBytes = 0;
  try {
    await save(1, makeState(1, 2, 1000));
    committed.set(1, makeState(1, 2, 1000));
    const started = Date.now();
    const budgetCases = options.quick ? KINDS.length * 2 : Number.POSITIVE_INFINITY;
    for (let index = 0, stepNr = 2; index < budgetCases && Date.now() - started < options.budgetMs; index++, stepNr++) {
      const kind: CaseKind = options.quick ? KINDS[index % KINDS.length]! : KINDS[Math.floor(random() * KINDS.length)]!;
      const caseId = `case ${index} (seed ${options.seed}, ${kind}, step ${stepNr})`;
      result.cases[kind] = (result.cases[kind] ?? 0) + 1;
      const state =
        kind === "many small tensors" ? makeState(stepNr, 1500 + Math.floor(random() * 1000), 2) : makeState(stepNr, 1 + Math.floor(random() * 3), 50_000 + Math.floor(random() * 150_000));
      const needed = storageBytes([state]);
      const free = kind === "far too small" ? Math.floor(needed / 2) : kind === "no space at all" || kind === "retention on a full disk" ? 0 : needed + Math.floor(random() * 32_768);
      await disk.fillUntil(free);
      try {
        if (kind === "retention on a full disk") {
          // Deleting needs no space: retention must work on a full disk.
          await manager.keepLastNCheckpoints(1);
          for (const step of [...committed.keys()].sort((a, b) => a - b).slice(0, -1)) committed.delete(step);
        } else {
          const freeAtSave = await disk.freeBytes();
          let error: unknown;
          try {
            const { peakBytes } = await arrayBufferPeak(() => save(stepNr, state));
            worstMemoryRatio = Math.max(worstMemoryRatio, peakBytes / Math.max(needed, MEMORY_RATIO_FLOOR_BYTES));
            worstMemoryBytes = Math.max(worstMemoryBytes, peakBytes);
            committed.set(stepNr, state);
            fitted++;
          } catch (caught) {
            error = caught;
          }
          if (error !== undefined) {
            const chain = errorChain(error);
            const refusedEarly = chain.includes("bytes are free");
            if (!(error instanceof CheckpointSaveError)) fail("wrong error", caseId, `not a CheckpointSaveError: ${chain}`);
            else if (!chain.includes("ENOSPC")) fail("cause not named", caseId, `the error does not name ENOSPC: ${chain}`);
            if (needed > freeAtSave && !refusedEarly) fail("no early refusal", caseId, `tensors of ${needed} bytes, ${freeAtSave} free, yet the save started writing: ${chain}`);
            if (refusedEarly) early++;
            else midWrite++;
            await checkNoLeftovers(disk.dir, committed, (detail) => fail("temporary files left", caseId, detail));
            await checkCommitted(manager, committed, (detail) => fail("earlier checkpoint damaged", caseId, detail));
            await disk.release();
            try {
              await save(stepNr, state);
              committed.set(stepNr, state);
            } catch (retryError) {
              fail("no save once space is back", caseId, errorChain(retryError));
            }
          } else if (needed > freeAtSave) {
            fail("no early refusal", caseId, `tensors of ${needed} bytes were saved with ${freeAtSave} free: the estimate is wrong`);
          }
        }
      } catch (error) {
        fail("unexpected error", caseId, errorChain(error));
      }
      await disk.release();
      await checkCommitted(manager, committed, (detail) => fail("earlier checkpoint damaged", caseId, detail));
      // Keep the disk's own use small, so the next case sets its free space freely.
      await manager.keepLastNCheckpoints(1);
      for (const step of [...committed.keys()].sort((a, b) => a - b).slice(0, -1)) committed.delete(step);
    }
  } finally {
    await manager.close().catch(() => undefined);
    await disk.unmount();
  }
  result.figures["refused before writing"] = early;
  result.figures["ENOSPC while writing"] = midWrite;
  result.figures["fitted"] = fitted;
  result.figures["peak memory: ArrayBuffer growth during a save that fits / max(its tensor bytes, 16 MiB)"] = Number(worstMemoryRatio.toFixed(2));
  result.figures["largest ArrayBuffer growth during a save (bytes)"] = worstMemoryBytes;
  return result;
};

function errorChain(error: unknown): string {
  const parts: string[] = [];
  for (let e: unknown = error; e !== undefined && parts.length < 8; e = (e as { cause?: unknown }).cause) parts.push(e instanceof Error ? `${e.name}: ${e.message}` : String(e));
  return parts.join(" <- ");
}

async function checkCommitted(manager: FileCheckpointManager, committed: Map<number, StateDict>, fail: (detail: string) => void): Promise<void> {
  const listed = await manager.getStepNumbers();
  for (const [step, state] of committed) {
    if (!listed.includes(step)) {
      fail(`step ${step} is not listed (listed: ${listed.join(",")})`);
      continue;
    }
    try {
      if (!isDeepStrictEqual(plainValues(await manager.loadCheckpoint(step)), plainValues(state))) fail(`step ${step} loads different values`);
    } catch (error) {
      fail(`step ${step} does not load: ${errorChain(error)}`);
    }
  }
}

/** Only committed steps, the lock and nothing half-written may be in the directory. */
async function checkNoLeftovers(dir: string, committed: Map<number, StateDict>, fail: (detail: string) => void): Promise<void> {
  for (const entry of await readdir(dir, { recursive: true })) {
    const name = entry.toString();
    const top = name.split("/")[0]!;
    const allowed = top === ".ckpt.lock" || [...committed.keys()].some((step) => top === `step_${step}`);
    if (!allowed || name.endsWith(".partial")) fail(`${name} left in ${dir}`);
  }
}
