/**
 * A reader of the concurrency class: `concurrent-reader.ts <dir> <stopFile>` lists the checkpoints
 * and loads each listed one (a fresh manager each round, never taking the lock), until <stopFile>
 * exists. One line per load: `load <json>` with step, outcome ("ok", "raced", "failure") and detail.
 *
 * A load is "ok" when it returns the values saved for that step (all of them equal to the step).
 * It "raced" when a listing taken just after no longer shows the step as it was (pruned, or stripped
 * to its model, since it was listed) and the load failed with a library error, or found no metadata
 * (a step stripped to its model has none: metadata.pt is not a model file). Anything else is a
 * failure: values of another save, a foreign error, or an error for a step still listed as it was.
 */
import { existsSync } from "node:fs";
import { FileCheckpointManager, isCkptError } from "../../src/index.js";
import { loadContent } from "../../test/helpers/crash-scenarios.js";

const [dir, stopFile] = process.argv.slice(2);
if (dir === undefined || stopFile === undefined) throw new Error("usage: concurrent-reader.ts <dir> <stopFile>");
const say = (line: string): void => void process.stdout.write(`${line}\n`);
say("ready");
const form = (infos: { stepNr: number; modelOnly: boolean }[], stepNr: number): string => {
  const info = infos.find((i) => i.stepNr === stepNr);
  return info === undefined ? "absent" : info.modelOnly ? "model only" : "whole";
};
while (!existsSync(stopFile)) {
  const manager = new FileCheckpointManager({ checkpointDir: dir });
  let listed: { stepNr: number; modelOnly: boolean }[] = [];
  try {
    listed = await manager.listCheckpoints();
  } catch (error) {
    say(`load ${JSON.stringify({ step: -1, outcome: "failure", detail: `listing failed: ${(error as Error).message}` })}`);
  }
  for (const { stepNr, modelOnly } of listed) {
    try {
      const content = await loadContent(manager, stepNr, modelOnly);
      const outcome = content === stepNr ? "ok" : "failure";
      say(`load ${JSON.stringify({ step: stepNr, outcome, detail: `content ${content}` })}`);
    } catch (error) {
      const now = form(await manager.listCheckpoints(), stepNr);
      const was = modelOnly ? "model only" : "whole";
      const noMetadata = /metadata/.test((error as Error).message) && /\bnull\b/.test((error as Error).message);
      const raced = (isCkptError(error) || noMetadata) && now !== was;
      say(`load ${JSON.stringify({ step: stepNr, outcome: raced ? "raced" : "failure", detail: `listed ${was}, now ${now}: ${(error as Error).name}: ${(error as Error).message}` })}`);
    }
  }
  await manager.close();
}
say("done");
