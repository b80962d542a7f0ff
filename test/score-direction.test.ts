/**
 * Scores as the user saved them: the manifest records whether a score was saved with lowerBetter,
 * score.txt keeps the higher-is-better convention, and listings give both.
 */
import assert from "node:assert/strict";
import { readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { test } from "node:test";

import { FileCheckpointManager, listCheckpointDirectory } from "../src/index.js";
import { readManifest, trainingState, useTempDirs } from "./helpers/checkpoint-helpers.js";
import { asVersion1Manifest, resealManifest } from "./helpers/manifest-edits.js";

const tempDir = useTempDirs("score-direction");

async function saveSteps(dir: string, scores: ({ score: number; lowerBetter?: boolean } | undefined)[]): Promise<FileCheckpointManager> {
  const manager = new FileCheckpointManager({ checkpointDir: dir });
  for (const [index, score] of scores.entries()) {
    await manager.beginCheckpoint(index + 1);
    await manager.saveState(trainingState(index + 1));
    if (score !== undefined) await manager.saveScore(score.score, score.lowerBetter === undefined ? {} : { lowerBetter: score.lowerBetter });
    await manager.commitCheckpoint();
  }
  return manager;
}

test("the manifest records the score's direction, score.txt keeps the stored convention, and listings give both", async () => {
  const dir = await tempDir();
  const manager = await saveSteps(dir, [{ score: 0.478975, lowerBetter: true }, { score: 0.91 }, undefined, { score: -2, lowerBetter: true }]);
  assert.equal((await readManifest(dir, 1)).lowerBetter, true);
  assert.equal((await readManifest(dir, 2)).lowerBetter, false);
  assert.equal("lowerBetter" in (await readManifest(dir, 3)), false, "no score, no direction");
  assert.equal(await readFile(join(dir, "step_1", "score.txt"), "utf8"), "-0.478975\n", "score.txt is unchanged: negated when lower is better");

  const { checkpoints } = await listCheckpointDirectory(dir);
  assert.deepEqual(
    checkpoints.map(({ score, scoreAsSaved, lowerBetter }) => ({ score, scoreAsSaved, lowerBetter })),
    [
      { score: -0.478975, scoreAsSaved: 0.478975, lowerBetter: true },
      { score: 0.91, scoreAsSaved: 0.91, lowerBetter: false },
      { score: undefined, scoreAsSaved: undefined, lowerBetter: undefined },
      { score: 2, scoreAsSaved: -2, lowerBetter: true },
    ],
  );
  const infos = await manager.listCheckpoints();
  assert.deepEqual(infos.map((info) => info.scoreAsSaved), [0.478975, 0.91, undefined, -2]);
  assert.deepEqual(await manager.getScores(), [{ stepNr: 1, score: -0.478975 }, { stepNr: 2, score: 0.91 }, { stepNr: 4, score: 2 }], "getScores keeps the stored values");

  // Stripping a checkpoint to its model rewrites the manifest and keeps the direction.
  await manager.deleteCheckpoint(1, { preserveModel: true });
  assert.equal((await readManifest(dir, 1)).lowerBetter, true);
  await manager.close();
});

test("a manifest written before the direction was recorded still lists and loads, with the direction unknown", async () => {
  const dir = await tempDir();
  const manager = await saveSteps(dir, [{ score: 0.5, lowerBetter: true }]);
  const path = join(dir, "step_1", "manifest.json");
  const { lowerBetter: _, ...older } = JSON.parse(await readFile(path, "utf8")) as Record<string, unknown>;
  await writeFile(path, asVersion1Manifest(older));
  const [summary] = (await listCheckpointDirectory(dir)).checkpoints;
  assert.equal(summary?.status, "committed");
  assert.deepEqual([summary?.score, summary?.scoreAsSaved, summary?.lowerBetter], [-0.5, undefined, undefined]);
  assert.equal((await manager.loadLastCheckpoint()).stepNr, 1);
  await manager.close();
});

test("a manifest whose lowerBetter is not a boolean marks the checkpoint damaged", async () => {
  const dir = await tempDir();
  const manager = await saveSteps(dir, [{ score: 0.5, lowerBetter: true }]);
  const path = join(dir, "step_1", "manifest.json");
  await writeFile(path, resealManifest({ ...(JSON.parse(await readFile(path, "utf8")) as object), lowerBetter: "yes" }));
  const [summary] = (await listCheckpointDirectory(dir)).checkpoints;
  assert.equal(summary?.status, "damaged");
  assert.match(summary?.problem ?? "", /lowerBetter is not a boolean/);
  await manager.close();
});
