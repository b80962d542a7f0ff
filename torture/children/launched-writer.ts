/**
 * A worker of a `ckpt launch` job for the crash-anywhere class: the rank named by TORTURE_KILL_RANK
 * installs the kill switch (test/helpers/kill-switch.ts; CRASH_AT as there) on the checkpoint
 * directory, then every rank runs test/helpers/distributed-worker.ts with the same arguments.
 */
import { resolve } from "node:path";
import { installKillSwitch } from "../../test/helpers/kill-switch.js";

const dir = process.argv[2];
if (dir === undefined) throw new Error("usage: launched-writer.ts <checkpointDir> <scenario> [step]");
if (process.env.CKPT_RANK !== undefined && process.env.CKPT_RANK === process.env.TORTURE_KILL_RANK) {
  const killAt = process.env.CRASH_AT === undefined ? undefined : Number(process.env.CRASH_AT);
  await installKillSwitch(resolve(dir), killAt);
}
await import("../../test/helpers/distributed-worker.js");
