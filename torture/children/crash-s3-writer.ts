/**
 * A writer of the S3 crash class: `node --import tsx crash-s3-writer.ts <endpoint> <s3 dir> <plan json>`,
 * the crash-anywhere workload (torture/lib/crash-plan.ts) run on `s3://bucket/prefix` through an
 * S3FileSystem. CRASH_AT=<k> SIGKILLs it before its k-th request that changes the bucket
 * (torture/lib/s3-kill-switch.ts); TORTURE_RECORD=1 prints what is listed after each operation.
 * The same lines as torture/children/crash-writer.ts, and in a recording `work-ms <n>`: the time
 * the operations took (without the recording's reads), over which an outside kill is drawn. Credentials come from the environment.
 *
 * A save whose op carries `big: true` writes a rank file larger than a part (5 MiB), so it goes up
 * as a multipart upload: its exp_avg is 1.5 M floats, every one the save's content value.
 */
import { FileCheckpointManager, Tensor, type StateDict, type StateValue } from "../../src/index.js";
import { S3FileSystem } from "../../src/s3/index.js";
import { parseS3Url } from "../../src/s3/s3-url.js";
import { say } from "../../test/helpers/kill-switch.js";
import { trainingState } from "../../test/helpers/crash-scenarios.js";
import { observeCheckpoints } from "../lib/crash-check.js";
import { runOp, type CrashOp } from "../lib/crash-plan.js";
import { installS3KillSwitch } from "../lib/s3-kill-switch.js";

export type S3CrashOp = CrashOp & { big?: boolean };
const PART_SIZE = 5 << 20;
const BIG_ELEMENTS = 1_536 * 1024; // 6 MiB of float32: two parts

/** A save's state as runOp's, with a multipart-sized exp_avg when `big`. */
function bigTrainingState(stepNr: number, content: number): StateDict {
  const state = trainingState(stepNr, content, "small");
  const slot = ((state.optimizer as StateDict).state as Map<number, StateValue>).get(0) as StateDict;
  slot.exp_avg = Tensor.from(new Float32Array(BIG_ELEMENTS).fill(content));
  return state;
}

async function runS3Op(manager: FileCheckpointManager, op: S3CrashOp): Promise<void> {
  return op.type === "save" && op.big === true ? runOp(manager, op, say, bigTrainingState) : runOp(manager, op, say);
}

const [endpoint, dir, planText] = process.argv.slice(2);
if (endpoint === undefined || dir === undefined || planText === undefined) throw new Error("usage: crash-s3-writer.ts <endpoint> <s3 dir> <plan json>");
const plan = JSON.parse(planText) as S3CrashOp[];
const killAt = process.env.CRASH_AT === undefined ? undefined : Number(process.env.CRASH_AT);
const record = process.env.TORTURE_RECORD === "1";
installS3KillSwitch(`${parseS3Url(dir).key.replace(/\/*$/, "")}/`, killAt);
const fileSystem = new S3FileSystem({ endpoint, partSize: PART_SIZE, concurrency: 2, retryBaseDelayMs: 5 });
const manager = new FileCheckpointManager({ checkpointDir: dir, fileSystem });
say("ready");
if (record) say(`state -1 ${JSON.stringify([...(await observeCheckpoints(manager))])}`);
let workMs = 0; // the operations' own time, without the recording's reads: where an outside kill can land
for (const [index, op] of plan.entries()) {
  say(`op ${index}`);
  const started = performance.now();
  await runS3Op(manager, op);
  workMs += performance.now() - started;
  say(`done-op ${index}`);
  if (record) say(`state ${index} ${JSON.stringify([...(await observeCheckpoints(manager))])}`);
}
await manager.close();
if (record) say(`work-ms ${Math.round(workMs)}`);
say("done");
