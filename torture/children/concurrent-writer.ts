/**
 * The writer of the concurrency class: `concurrent-writer.ts <dir> <steps> <seed>` saves steps
 * 1..steps (every value of step s is s), foreground or background, and after each save prunes
 * (keep the last 2, sometimes preserving models, sometimes deleting in the background).
 * Lines: `ready`, `saved <s>`, `done`.
 */
import { FileCheckpointManager } from "../../src/index.js";
import { trainingState } from "../../test/helpers/crash-scenarios.js";
import { Random } from "../lib/random.js";

const [dir, stepsText, seedText] = process.argv.slice(2);
if (dir === undefined || stepsText === undefined || seedText === undefined) throw new Error("usage: concurrent-writer.ts <dir> <steps> <seed>");
const random = new Random(Number(seedText));
const manager = new FileCheckpointManager({ checkpointDir: dir });
process.stdout.write("ready\n");
for (let stepNr = 1; stepNr <= Number(stepsText); stepNr++) {
  await manager.beginCheckpoint(stepNr, { background: random.chance(0.5) });
  await manager.saveState(trainingState(stepNr, stepNr, "small"), { replicatedKeys: ["epoch"] });
  await manager.saveMetadata({ content: stepNr });
  await manager.saveScore(stepNr);
  await manager.commitCheckpoint();
  await manager.waitForPendingSave();
  process.stdout.write(`saved ${stepNr}\n`);
  if (random.chance(0.7)) await manager.retain({ keepLast: 2, preserveModel: random.chance(0.4), background: random.chance(0.5) });
}
await manager.close();
process.stdout.write("done\n");
