/**
 * A checkpoint writer that is killed. Run as
 * `node --import tsx crash-child.ts <checkpointDir> <scenario>` with CRASH_AT=<k> in the
 * environment: it does the scenario's work (crash-scenarios.ts) on the directory and SIGKILLs
 * itself just before the k-th call that changes the disk under it. Without CRASH_AT it finishes.
 *
 * The kill points are the file-system calls themselves, below LocalFileSystem: node:fs is patched
 * so each file creation, write, fsync (of a file or a directory), rename, link, mkdir and removal
 * under the directory is a point. That reaches the windows inside one LocalFileSystem call too
 * (a file written and fsynced but not yet renamed into place, a lock file created but still empty).
 * Calls that would change nothing (removing what is not there) are not points.
 *
 * Protocol on stdout, one line each: `ready` before the work starts, `point <label>` before each
 * point's call, `kill <label>` just before the kill, `done` when the work is over.
 */
import { resolve } from "node:path";
import { FileCheckpointManager } from "../../src/index.js";
import { CRASH_SCENARIOS, type CrashScenarioName } from "./crash-scenarios.js";
import { installKillSwitch, say } from "./kill-switch.js";

const [dir, scenarioName] = process.argv.slice(2);
if (dir === undefined || scenarioName === undefined || !(scenarioName in CRASH_SCENARIOS)) {
  throw new Error(`usage: crash-child.ts <checkpointDir> <${Object.keys(CRASH_SCENARIOS).join(" | ")}>`);
}
const killAt = process.env.CRASH_AT === undefined ? undefined : Number(process.env.CRASH_AT);
await installKillSwitch(resolve(dir), killAt);
const manager = new FileCheckpointManager({ checkpointDir: dir });
say("ready");
await CRASH_SCENARIOS[scenarioName as CrashScenarioName].run(manager);
await manager.close();
say("done");
