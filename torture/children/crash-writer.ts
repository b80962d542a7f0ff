/**
 * A writer of the crash-anywhere class: `node --import tsx crash-writer.ts <dir> <plan json>`, with
 * CRASH_AT=<k> to SIGKILL itself before its k-th disk-changing call (test/helpers/kill-switch.ts),
 * and TORTURE_RECORD=1 to print, after each operation, what is then listed and what it holds (a
 * run to the end does that; reading makes no kill point, so the points are the same).
 *
 * Lines: `ready`, `point <label>`, `op <i>` when operation i starts, `returned` when a background
 * save's commitCheckpoint has returned, `done-op <i>`, `state <i> <json>`, `kill <label>`, `done`.
 */
import { resolve } from "node:path";
import { FileCheckpointManager } from "../../src/index.js";
import { installKillSwitch, say } from "../../test/helpers/kill-switch.js";
import { runOp, type CrashOp } from "../lib/crash-plan.js";
import { observeCheckpoints } from "../lib/crash-check.js";

const [dir, planText] = process.argv.slice(2);
if (dir === undefined || planText === undefined) throw new Error("usage: crash-writer.ts <dir> <plan json>");
const plan = JSON.parse(planText) as CrashOp[];
const killAt = process.env.CRASH_AT === undefined ? undefined : Number(process.env.CRASH_AT);
const record = process.env.TORTURE_RECORD === "1";
await installKillSwitch(resolve(dir), killAt);
const manager = new FileCheckpointManager({ checkpointDir: dir });
say("ready");
if (record) say(`state -1 ${JSON.stringify([...(await observeCheckpoints(manager))])}`);
for (const [index, op] of plan.entries()) {
  say(`op ${index}`);
  await runOp(manager, op, say);
  say(`done-op ${index}`);
  if (record) say(`state ${index} ${JSON.stringify([...(await observeCheckpoints(manager))])}`);
}
await manager.close();
say("done");
