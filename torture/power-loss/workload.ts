/**
 * The writer whose system calls the power-loss class records (run under strace): saves, a re-save,
 * a delete, retention and a model card, with a marker before and after each call so the checker
 * knows what had been promised at every point of the trace. Usage: workload.ts <root> [quick] [direct]
 * ("direct": files past 4 KiB are written around the page cache in 4 KiB blocks, so the small
 * files here take that path too).
 */
import { openSync } from "node:fs";
import { join } from "node:path";
import { FileCheckpointManager, LocalFileSystem } from "../../src/index.js";
import { expectedState } from "./expected-state.js";

const root = process.argv[2];
if (root === undefined) throw new Error("usage: workload.ts <root> [quick] [direct]");
const quick = process.argv.includes("quick");
const directWrites = process.argv.includes("direct") ? { blockBytes: 4096 } : false;

/** A marker: an open of a path that does not exist, so it shows in the trace in its place. */
function mark(text: string): void {
  try {
    openSync(join(root!, `.mark ${text}`), "r");
  } catch {
    // ENOENT is the point: only the attempt is recorded.
  }
}

/** A disk that skips the manager's directory fsyncs: the test shows the class catches that. */
class SkippingDirectorySync extends LocalFileSystem {
  override async syncDirectory(): Promise<void> {}
}

const fileSystem = process.env.CKPT_TORTURE_SKIP_DIRECTORY_SYNC === "1" ? new SkippingDirectorySync({ directWrites }) : new LocalFileSystem({ directWrites });
const manager = new FileCheckpointManager({ checkpointDir: join(root, "checkpoints"), fileSystem });

async function save(stepNr: number, version: number): Promise<void> {
  mark(`begin ${stepNr} ${version}`);
  await manager.beginCheckpoint(stepNr);
  await manager.saveState(expectedState(stepNr, version));
  await manager.saveScore(stepNr * 10 + version);
  await manager.commitCheckpoint();
  mark(`committed ${stepNr} ${version}`);
}

await manager.saveModelMetadata({ family: "toy", config: { width: 4 } });
mark("model-card");
await save(1, 1);
await save(2, 1);
await save(2, 2); // a re-save of a committed step
if (!quick) await save(3, 1);
mark("may-delete 1");
await manager.deleteCheckpoint(1);
await save(4, 1);
mark(quick ? "may-delete 2" : "may-delete 2 3");
await manager.keepLastNCheckpoints(1); // retention deletes all but step 4
await save(5, 1);
mark("may-strip 4");
await manager.keepBestNCheckpoints(1, { preserveModel: true }); // step 5 is best and last; step 4 keeps its model only
await manager.close();
mark("end");
