import type { JsonValue } from "./gang.js";

/**
 * How the ranks of a job reach each other (the launcher's IPC relay on one machine, Redis across
 * machines). Gangs are built over it: a gang is a group of global ranks exchanging small JSON
 * messages in numbered rounds. Checkpoint data never travels through a transport.
 *
 * Every method turns a dead, exited or failed rank into a rejection with a `GangError` naming it,
 * within a bounded time; none waits forever.
 */
export interface Transport {
  /** This process's global rank. */
  readonly rank: number;
  readonly worldSize: number;
  /**
   * Contributes `value` to round `seq` of group `group` (whose members are the global ranks
   * `members`, ascending, this rank among them) and resolves with every member's value in member
   * order. Rejects when any rank of the job failed or died, or after `timeoutMs`.
   */
  exchange(group: string, members: readonly number[], seq: number, value: JsonValue, timeoutMs: number): Promise<JsonValue[]>;
  /** Tells every rank that this one failed, with why; their pending and later exchanges reject. */
  abort(reason: string): Promise<void>;
  /** Releases connections so the process can exit. */
  close(): Promise<void>;
}

/** `GangError.code` when a round did not complete within its timeout (a rank alive but not there). */
export const GANG_TIMEOUT = "GANG_TIMEOUT";
/** `GangError.code` when the job was aborted: a rank died, exited with an error or reported one. */
export const GANG_ABORTED = "GANG_ABORTED";
/** `GangError.code` when one round cannot complete: a member left (exited, closed its gangs) before joining it. */
export const GANG_MEMBER_LEFT = "GANG_MEMBER_LEFT";
