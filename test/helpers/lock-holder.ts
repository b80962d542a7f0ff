/**
 * A manager in its own process that holds a checkpoint directory mid-save. Run as
 * `node --import tsx lock-holder.ts <checkpointDir> <stepNr>`: it begins checkpoint <stepNr>,
 * saves its state, prints `open`, waits for a line on stdin, then commits and prints `committed`
 * (or `failed <message>`), and prints `closed` once the manager has let the directory go.
 */
import { once } from "node:events";
import { FileCheckpointManager } from "../../src/index.js";
import { trainingState } from "./checkpoint-helpers.js";

const [checkpointDir, step] = process.argv.slice(2);
const stepNr = Number(step);
const manager = new FileCheckpointManager({ checkpointDir: checkpointDir! });
await manager.beginCheckpoint(stepNr);
await manager.saveState(trainingState(stepNr));
process.stdout.write("open\n");
process.stdin.resume();
await once(process.stdin, "data");
try {
  await manager.commitCheckpoint();
  process.stdout.write("committed\n");
} catch (error) {
  process.stdout.write(`failed ${(error as Error).message}\n`);
}
await manager.close();
process.stdout.write("closed\n");
process.exit(0);
