/**
 * Lists a checkpoint directory through the manager and prints what it sees as one JSON line.
 * Run as `node --import tsx list-directory.ts <checkpointDir>`, possibly as another user, to see
 * how a directory with unreadable parts looks to a process that cannot read them.
 */
import { FileCheckpointManager, listCheckpointDirectory } from "../../src/index.js";

const checkpointDir = process.argv[2]!;
const manager = new FileCheckpointManager({ checkpointDir, onWarning: () => undefined });
const listing = await listCheckpointDirectory(checkpointDir);
const { stepNr } = await manager.loadLastCheckpoint();
process.stdout.write(
  `${JSON.stringify({
    steps: await manager.getStepNumbers(),
    damaged: (await manager.listCheckpoints()).filter((c) => c.damaged !== undefined).map((c) => [c.stepNr, c.damaged]),
    lastLoaded: stepNr,
    listed: listing.checkpoints.map((c) => [c.name, c.status]),
  })}\n`,
);
