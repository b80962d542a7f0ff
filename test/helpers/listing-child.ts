/**
 * Runs one listing operation on a checkpoint directory and prints its result as JSON, so a test can
 * run it as a process with a timeout: an operation that hangs (a FIFO opened for reading blocks
 * until a writer comes) then fails the test instead of hanging it. Run as
 * `node --import tsx listing-child.ts <operation> <checkpointDir>`.
 */
import { FileCheckpointManager, listCheckpointDirectory, verifyCheckpoints } from "../../src/index.js";

const [operation, checkpointDir] = process.argv.slice(2) as [string, string];

async function run(): Promise<unknown> {
  switch (operation) {
    case "getStepNumbers":
    case "listCheckpoints": {
      const manager = new FileCheckpointManager({ checkpointDir, onWarning: () => undefined });
      try {
        if (operation === "getStepNumbers") return await manager.getStepNumbers();
        return (await manager.listCheckpoints()).map(({ stepNr, damaged, warning, score }) => ({ stepNr, damaged: damaged ?? null, warning: warning ?? null, score: score ?? null }));
      } finally {
        await manager.close();
      }
    }
    case "listCheckpointDirectory":
      return (await listCheckpointDirectory(checkpointDir)).checkpoints.map(({ stepNr, status, problem, warning }) => ({ stepNr, status, problem: problem ?? null, warning: warning ?? null }));
    case "verifyCheckpoints": {
      const report = await verifyCheckpoints(checkpointDir);
      return { sound: report.sound, checkpoints: report.checkpoints.map(({ stepNr, status, problems }) => ({ stepNr, status, problems })) };
    }
    default:
      throw new Error(`unknown operation ${operation}`);
  }
}

process.stdout.write(`${JSON.stringify(await run())}\n`);
