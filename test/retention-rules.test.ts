import assert from "node:assert/strict";
import { readdir, utimes } from "node:fs/promises";
import { join } from "node:path";
import { describe, it } from "node:test";

import {
  CheckpointDeleteError,
  FileCheckpointManager,
  InvalidArgumentError,
  LocalFileSystem,
  combineRetention,
  keepEveryN,
  keepOnePerInterval,
  parseDuration,
  planRetention,
  type RetentionCandidate,
  type RetentionReport,
} from "../src/index.js";
import { editManifest } from "./helpers/manifest-edits.js";
import { entries, inProcessGangs, modelState, onAllRanks, saveStep, useTempDirs } from "./helpers/checkpoint-helpers.js";
import { requireTorch, runPython } from "./helpers/torch-python.js";

const tempDir = useTempDirs("retention-rules");
const HOUR = 3_600_000;

const candidate = (stepNr: number, extra: Partial<RetentionCandidate> = {}): RetentionCandidate => ({ stepNr, modelOnly: false, score: undefined, ...extra });

/** What retain decided, as `step → action: reasons`, for one readable assertion. */
function decided(report: RetentionReport): Record<number, string> {
  return Object.fromEntries(report.decisions.map((d) => [d.stepNr, d.keptBy.length === 0 ? d.action : `${d.action}: ${d.keptBy.join("; ")}`]));
}

/** Sets the `createdAt` of a committed checkpoint's manifest, as if it had been committed then. */
async function backdate(dir: string, stepNr: number, time: number): Promise<void> {
  const path = join(dir, `step_${stepNr}`, "manifest.json");
  await editManifest(path, (manifest) => {
    manifest.createdAt = new Date(time).toISOString();
  });
}

const stepDirs = async (dir: string): Promise<string[]> => (await entries(dir)).filter((name) => name.startsWith("step_"));

// ------------------------------------------------------------------ the rules as pure functions

describe("retention rules", () => {
  it("keepEveryN keeps the multiples of n, model-only ones included", () => {
    const all = [0, 500, 1000, 1500, 2000, 2500].map((s) => candidate(s, { modelOnly: s === 1000 }));
    assert.deepEqual([...keepEveryN(all, 1000)].sort((a, b) => a - b), [0, 1000, 2000]);
  });

  it("keepOnePerInterval keeps the first, then each one at least an interval after the last kept, skipping the recent and keeping the undated", () => {
    const t0 = Date.UTC(2026, 0, 1);
    const times: Record<number, number | undefined> = { 1: t0, 2: t0 + 0.5 * HOUR, 3: t0 + 1 * HOUR, 4: t0 + 1.9 * HOUR, 5: undefined, 6: t0 + 2.2 * HOUR, 7: t0 + 5 * HOUR, 8: t0 + 5.1 * HOUR };
    const all = Object.entries(times).map(([s, createdAt]) => candidate(Number(s), { createdAt }));
    const keep = keepOnePerInterval(all, HOUR, new Set([8]));
    assert.deepEqual([...keep].sort((a, b) => a - b), [1, 3, 5, 6, 7]);
    // Stable: pruning what it did not keep and asking again keeps the same ones.
    const after = all.filter((c) => keep.has(c.stepNr) || c.stepNr === 8);
    assert.deepEqual([...keepOnePerInterval(after, HOUR, new Set([8]))].sort((a, b) => a - b), [1, 3, 5, 6, 7]);
  });

  it("combineRetention keeps what any rule keeps and the last resumable checkpoint, and says why", () => {
    const all = [
      candidate(1000, { score: 9 }),
      candidate(1500, { score: 1 }),
      candidate(2000, { score: 2, modelOnly: true }),
      candidate(2500, { score: 3 }),
      candidate(3000, { score: 0 }),
      candidate(3500),
    ];
    const reasons = combineRetention(all, { keepBest: 1, keepEvery: 1000 });
    assert.deepEqual(Object.fromEntries(reasons), {
      1000: ["best 1", "milestone: every 1000 steps"],
      1500: [],
      2000: ["milestone: every 1000 steps"],
      2500: [],
      3000: ["milestone: every 1000 steps"],
      3500: ["unscored (keepBest never prunes it)", "the last checkpoint (always kept, to resume)"],
    });
    assert.deepEqual(combineRetention(all, { keepLast: 2 }).get(3000), ["last 2"]);
  });

  it("bad rules are errors naming the rule; a duration needs a unit", () => {
    assert.throws(() => combineRetention([], {}), (e) => e instanceof InvalidArgumentError && /at least one rule/.test(e.message));
    assert.throws(() => combineRetention([], { keepEvery: 0 }), /keepEvery must be a positive integer, got 0/);
    assert.throws(() => combineRetention([], { keepLast: 1.5 }), /keepLast must be a positive integer, got 1.5/);
    assert.throws(() => combineRetention([], { keepOnePer: "6" }), /keepOnePer must be a positive duration .* got "6"/);
    assert.throws(() => combineRetention([], { keepOnePer: -1 }), /keepOnePer must be a positive duration/);
    assert.equal(parseDuration("6h"), 6 * HOUR);
    assert.equal(parseDuration("1.5d"), 36 * HOUR);
    assert.equal(parseDuration(90), 90_000);
    assert.equal(parseDuration("500ms"), 500);
  });
});

// ------------------------------------------------------------------ the manager's retain

describe("retain on a checkpoint directory", () => {
  it("milestones survive keepBest, the last checkpoint always survives, and preserveModel strips the rest", async () => {
    const dir = await tempDir();
    const manager = new FileCheckpointManager({ checkpointDir: dir });
    for (const [stepNr, loss] of [[100, 5], [200, 1], [300, 4], [400, 3], [500, 6]] as const) await saveStep(manager, stepNr, { score: loss, lowerBetter: true });
    await manager.deleteCheckpoint(200, { preserveModel: true }); // the best, already model-only

    const report = await manager.retain({ keepBest: 1, keepEvery: 300, preserveModel: true });
    assert.deepEqual(decided(report), {
      100: "strip",
      200: "keep: best 1",
      300: "keep: milestone: every 300 steps",
      400: "strip",
      500: "keep: the last checkpoint (always kept, to resume)",
    });
    assert.deepEqual([report.deleted, report.stripped, report.kept], [[], [100, 400], [200, 300, 500]]);
    assert.deepEqual(await manager.getStepNumbers(), [300, 500], "the milestone and the last stay resumable");
    assert.deepEqual(await manager.getStepNumbers({ includeModelOnly: true }), [100, 200, 300, 400, 500]);
    assert.deepEqual(await readdir(join(dir, "step_400")), ["manifest.json", "model.pt", "score.txt"]);
    await manager.loadModel(400); // still loads as a model

    // Without preserveModel, the same rules delete; a model-only milestone is kept.
    await manager.deleteCheckpoint(300, { preserveModel: true });
    const again = await manager.retain({ keepLast: 1, keepEvery: 300 });
    assert.deepEqual([again.deleted, again.kept], [[100, 200, 400], [300, 500]]);
    assert.deepEqual(decided(again)[500], "keep: last 1; the last checkpoint (always kept, to resume)");
    assert.deepEqual(await stepDirs(dir), ["step_300", "step_500"]);
    await manager.close();
  });

  it("keepOnePer dates checkpoints by their manifest's createdAt and thins the ones older than the last n", async () => {
    const dir = await tempDir();
    const manager = new FileCheckpointManager({ checkpointDir: dir });
    const t0 = Date.UTC(2026, 5, 1);
    const hoursAfter: Record<number, number> = { 1: 0, 2: 2, 3: 5, 4: 7, 5: 12, 6: 12.5, 7: 13 };
    for (const stepNr of Object.keys(hoursAfter).map(Number)) await saveStep(manager, stepNr);
    await manager.close(); // the manifests are rewritten by hand: no manager holds the directory
    for (const [stepNr, hours] of Object.entries(hoursAfter)) await backdate(dir, Number(stepNr), t0 + hours * HOUR);

    const report = await manager.retain({ keepLast: 2, keepOnePer: "6h" });
    assert.deepEqual(decided(report), {
      1: "keep: one per 6h",
      2: "delete",
      3: "delete",
      4: "keep: one per 6h",
      5: "delete", // 5 hours after step 4
      6: "keep: last 2",
      7: "keep: last 2; the last checkpoint (always kept, to resume)",
    });
    assert.deepEqual(await manager.getStepNumbers(), [1, 4, 6, 7]);
    // Stable: as training goes on, what was kept per interval stays kept.
    assert.deepEqual((await manager.retain({ keepLast: 2, keepOnePer: "6h" })).deleted, []);
    await manager.close();
  });

  it("on a fairseq2 directory (no manifest) keepOnePer dates by the directory's modification time, and preserveModel strips it by its files", async (t) => {
    const python = requireTorch(t);
    if (python === null) return;
    const dir = await tempDir();
    runPython(python, FAIRSEQ2_WRITER, [dir]);
    const t0 = Date.UTC(2025, 0, 1) / 1000;
    for (const [stepNr, hours] of [[100, 0], [200, 1], [300, 30], [400, 31]] as const) await utimes(join(dir, `step_${stepNr}`), t0 + hours * 3600, t0 + hours * 3600);
    const manager = new FileCheckpointManager({ checkpointDir: dir });
    assert.equal((await manager.listCheckpoints())[2]!.createdAt, (t0 + 30 * 3600) * 1000);

    const dry = planRetention(await manager.listCheckpoints(), { keepLast: 1, keepOnePer: "1d", preserveModel: true });
    const report = await manager.retain({ keepLast: 1, keepOnePer: "1d", preserveModel: true });
    assert.deepEqual(decided(report), {
      100: "keep: one per 1d",
      200: "strip",
      300: "keep: one per 1d",
      400: "keep: last 1; the last checkpoint (always kept, to resume)",
    });
    assert.deepEqual(report.decisions, dry.decisions, "the dry run predicted it");
    assert.deepEqual((await readdir(join(dir, "step_200"))).sort(), ["model.pt", "score.txt"]);
    assert.deepEqual(await manager.getStepNumbers(), [100, 300, 400]);
    assert.deepEqual(await manager.getStepNumbers({ includeModelOnly: true }), [100, 200, 300, 400]);
    await manager.close();
  });
});

/** Four steps in fairseq2's layout, written with torch.save (no manifest.json), scored as fairseq2 does. */
const FAIRSEQ2_WRITER = `
import os, sys, torch
root = sys.argv[1]
for n in (100, 200, 300, 400):
    path = os.path.join(root, f"step_{n}")
    os.makedirs(path)
    torch.save({"model": {"proj.weight": torch.full((2, 3), float(n))}}, os.path.join(path, "model.pt"))
    torch.save({"optimizer": {"state": {}, "param_groups": []}, "step_nr": n}, os.path.join(path, "rank_0.pt"))
    with open(os.path.join(path, "score.txt"), "w") as f:
        f.write(f"{-n / 100}\\n")
`;

// ------------------------------------------------------------------ background deletion

/** A local disk whose removals of existing `.deleting` directories fail while `failing` is set. */
class FailingRemovals extends LocalFileSystem {
  failing = false;

  override async remove(path: string): Promise<void> {
    if (this.failing && path.endsWith(".deleting") && (await this.exists(path))) throw Object.assign(new Error(`EIO: i/o error, rm '${path}'`), { code: "EIO" });
    await super.remove(path);
  }
}

describe("background deletion", () => {
  it("returns with the pruned checkpoints already unlisted, removes them while training saves on, and is done by close()", async () => {
    const dir = await tempDir();
    const manager = new FileCheckpointManager({ checkpointDir: dir });
    for (const stepNr of [1, 2, 3, 4]) await saveStep(manager, stepNr);
    const report = await manager.retain({ keepLast: 1, keepEvery: 2, background: true });
    assert.deepEqual([report.deleted, report.kept], [[1, 3], [2, 4]]);
    // Renamed away before the call returned: nothing lists them, whatever the removal's progress.
    assert.deepEqual(await manager.getStepNumbers(), [2, 4]);
    assert.ok((await stepDirs(dir)).every((name) => /^step_(2|4)$|^step_(1|3)\.deleting$/.test(name)), (await stepDirs(dir)).join(", "));
    await saveStep(manager, 5, { state: { model: modelState(5) } });
    await manager.waitForPendingDeletions();
    assert.equal(manager.hasPendingDeletions, false);
    assert.deepEqual(await stepDirs(dir), ["step_2", "step_4", "step_5"]);
    // close() waits for deletes still running: none may outlive the lock.
    await manager.retain({ keepLast: 1, background: true });
    await manager.close();
    assert.deepEqual(await stepDirs(dir), ["step_5"]);
  });

  it("a failed background removal is raised by the next retention call, once, with the steps named; the directory stays sound", async () => {
    const dir = await tempDir();
    const fileSystem = new FailingRemovals();
    const manager = new FileCheckpointManager({ checkpointDir: dir, fileSystem });
    for (const stepNr of [1, 2, 3]) await saveStep(manager, stepNr);
    fileSystem.failing = true;
    await manager.keepLastNCheckpoints(1, { background: true }); // the renames work; the removal fails later
    fileSystem.failing = false;
    await assert.rejects(
      manager.keepLastNCheckpoints(1),
      (e) => e instanceof CheckpointDeleteError && /the background deletion of checkpoints 1, 2 failed: EIO: i\/o error, rm '.*step_1\.deleting'/.test(e.message),
    );
    assert.deepEqual(await manager.getStepNumbers(), [3], "raised once, and nothing pruned is listed");
    await manager.close();
    // The next owner's recovery removes what the failed removal left.
    const next = new FileCheckpointManager({ checkpointDir: dir });
    await saveStep(next, 4);
    await next.close();
    assert.deepEqual(await stepDirs(dir), ["step_3", "step_4"]);
  });

  it("close() raises a background failure nobody collected, and still releases the lock", async () => {
    const dir = await tempDir();
    const fileSystem = new FailingRemovals();
    const manager = new FileCheckpointManager({ checkpointDir: dir, fileSystem });
    for (const stepNr of [1, 2]) await saveStep(manager, stepNr);
    fileSystem.failing = true;
    await manager.retain({ keepLast: 1, background: true });
    await assert.rejects(manager.close(), (e) => e instanceof CheckpointDeleteError && /background deletion of checkpoints 1 failed/.test(e.message));
    const other = new FileCheckpointManager({ checkpointDir: dir });
    await saveStep(other, 3); // the lock was released
    await other.close();
    assert.deepEqual(await stepDirs(dir), ["step_2", "step_3"]);
  });

  it("on four ranks a background failure on rank 0 is raised on every rank at the next retention call", async () => {
    const dir = await tempDir();
    const gangs = inProcessGangs(4, 1);
    const fileSystem = new FailingRemovals();
    const managers = gangs.map((g) => new FileCheckpointManager({ checkpointDir: dir, gangs: g, fileSystem }));
    for (const stepNr of [1, 2]) {
      await onAllRanks(managers, (m) => m.beginCheckpoint(stepNr));
      await onAllRanks(managers, (m) => m.saveState({ model: modelState(stepNr), step_nr: stepNr }, { replicatedKeys: ["model"] }));
      await onAllRanks(managers, (m) => m.commitCheckpoint());
    }
    fileSystem.failing = true;
    const reports = await onAllRanks(managers, (m) => m.retain({ keepLast: 1, background: true }));
    assert.ok(reports.every((r) => r.deleted.length === 1 && r.deleted[0] === 1), "every rank got rank 0's report");
    fileSystem.failing = false;
    const outcomes = await Promise.allSettled(managers.map((m) => m.keepLastNCheckpoints(1)));
    assert.deepEqual(
      outcomes.map((o) => o.status === "rejected" && /background deletion of checkpoints 1 failed/.test(String((o.reason as Error).message))),
      [true, true, true, true],
      "every rank raised it",
    );
    await onAllRanks(managers, (m) => m.close());
    // What the failed removal left waits, unlisted, for the next owner's recovery.
    assert.deepEqual(await stepDirs(dir), ["step_1.deleting", "step_2"]);
  });
});
