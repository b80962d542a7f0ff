import { randomBytes } from "node:crypto";
import { InvalidArgumentError } from "../errors.js";

/** The flags of `ckpt launch` as given (strings from the command line, or numbers from code). */
export interface LaunchFlags {
  /** Workers on this node (torchrun's --nproc-per-node). Required. */
  nproc?: string | number;
  /** Data-parallel size. Default: world size / tp. */
  dp?: string | number;
  /** Tensor-parallel size. Default 1. */
  tp?: string | number;
  /** Nodes in the job. Default: SLURM_NNODES, else 1. */
  nnodes?: string | number;
  /** This node's index. Default: SLURM_NODEID, else 0 (required when nnodes > 1). */
  nodeRank?: string | number;
  /** "ipc" (one node, the default) or redis://HOST:PORT (required when nnodes > 1). */
  rendezvous?: string;
  /** Names the job on the rendezvous. Default: SLURM_JOB_ID; required with Redis. */
  jobId?: string;
  /** Seconds a worker gets to stop before the next, harder signal. Default 5. */
  gracePeriod?: string | number;
}

/** What the launcher of one node does, checked. */
export interface LaunchPlan {
  nproc: number;
  nnodes: number;
  nodeRank: number;
  worldSize: number;
  dpSize: number;
  tpSize: number;
  /** `"ipc"` or a redis:// address. */
  rendezvous: string;
  jobId: string;
  gracePeriodMs: number;
}

export const DEFAULT_GRACE_PERIOD_MS = 5000;
/** Job ids become parts of Redis keys: short, and no spaces or braces. */
const JOB_ID = /^[A-Za-z0-9._:-]{1,128}$/;

/**
 * Checks the flags of `ckpt launch` and fills in the defaults (SLURM's variables for
 * --nnodes/--node-rank/--job-id). Every problem is an `InvalidArgumentError` naming the flag,
 * or the variable the value came from.
 *
 * @example
 * planLaunch({ nproc: 4, dp: 2, tp: 2 }) // one node, 4 workers, embedded IPC rendezvous
 */
export function planLaunch(flags: LaunchFlags, env: Readonly<Record<string, string | undefined>> = process.env): LaunchPlan {
  if (flags.nproc === undefined) throw new InvalidArgumentError("--nproc is required: the number of workers to start on this node");
  const nproc = integer(flags.nproc, "--nproc", 1);
  const nnodes = flags.nnodes !== undefined ? integer(flags.nnodes, "--nnodes", 1) : fromEnv(env, "SLURM_NNODES", "--nnodes", 1) ?? 1;
  const nnodesText = flags.nnodes === undefined && nnodes > 1 ? `--nnodes ${nnodes} (from SLURM_NNODES)` : `--nnodes ${nnodes}`;
  const nodeRankGiven = flags.nodeRank !== undefined ? integer(flags.nodeRank, "--node-rank", 0) : fromEnv(env, "SLURM_NODEID", "--node-rank", 0);
  if (nodeRankGiven === undefined && nnodes > 1) throw new InvalidArgumentError(`--node-rank is required with ${nnodesText} (or SLURM_NODEID under SLURM)`);
  const nodeRank = nodeRankGiven ?? 0;
  if (nodeRank >= nnodes) throw new InvalidArgumentError(`--node-rank must be below ${nnodesText}, got ${nodeRank}`);

  const worldSize = nnodes * nproc;
  const tpSize = flags.tp !== undefined ? integer(flags.tp, "--tp", 1) : 1;
  const dpSize = flags.dp !== undefined ? integer(flags.dp, "--dp", 1) : worldSize / tpSize;
  if (!Number.isInteger(dpSize) || dpSize * tpSize !== worldSize) {
    throw new InvalidArgumentError(
      flags.dp === undefined
        ? `--tp (${tpSize}) must divide the world size (${worldSize} = ${nnodesText} × --nproc ${nproc})`
        : `--dp × --tp must equal the world size (${worldSize} = ${nnodesText} × --nproc ${nproc}), got ${dpSize} × ${tpSize}`,
    );
  }

  const rendezvous = flags.rendezvous ?? "ipc";
  const redis = /^rediss?:\/\/[^\s/]+/.test(rendezvous);
  if (rendezvous !== "ipc" && !redis) throw new InvalidArgumentError(`--rendezvous must be redis://HOST:PORT (or "ipc" on one node), got ${JSON.stringify(rendezvous)}`);
  if (nnodes > 1 && !redis) throw new InvalidArgumentError(`--rendezvous redis://HOST:PORT is required with ${nnodesText}: the embedded IPC rendezvous works on one node only`);
  const jobIdGiven = flags.jobId ?? (present(env, "SLURM_JOB_ID") ? env.SLURM_JOB_ID : undefined);
  if (jobIdGiven === undefined && redis) throw new InvalidArgumentError("--job-id is required with a Redis rendezvous (or SLURM_JOB_ID under SLURM): every node of the job must give the same one");
  if (jobIdGiven !== undefined && !JOB_ID.test(jobIdGiven)) {
    throw new InvalidArgumentError(`--job-id must be 1 to 128 letters, digits or ._:- characters, got ${JSON.stringify(jobIdGiven)}`);
  }
  // One node needs no agreement on the id: any unique one will do.
  const jobId = jobIdGiven ?? `local-${process.pid}-${randomBytes(4).toString("hex")}`;

  const gracePeriodMs = flags.gracePeriod !== undefined ? seconds(flags.gracePeriod, "--grace-period") : DEFAULT_GRACE_PERIOD_MS;
  return { nproc, nnodes, nodeRank, worldSize, dpSize, tpSize, rendezvous, jobId, gracePeriodMs };
}

/** The variables a worker of local rank `localRank` is started with (SPEC §7), on top of `base`. */
export function workerEnvironment(plan: LaunchPlan, localRank: number, base: Readonly<Record<string, string | undefined>>): Record<string, string> {
  const env: Record<string, string> = {};
  for (const [name, value] of Object.entries(base)) if (value !== undefined) env[name] = value;
  Object.assign(env, {
    CKPT_RANK: String(plan.nodeRank * plan.nproc + localRank),
    CKPT_WORLD_SIZE: String(plan.worldSize),
    CKPT_LOCAL_RANK: String(localRank),
    CKPT_LOCAL_WORLD_SIZE: String(plan.nproc),
    CKPT_NNODES: String(plan.nnodes),
    CKPT_NODE_RANK: String(plan.nodeRank),
    CKPT_DP_SIZE: String(plan.dpSize),
    CKPT_TP_SIZE: String(plan.tpSize),
    CKPT_RENDEZVOUS: plan.rendezvous,
    CKPT_JOB_ID: plan.jobId,
  });
  return env;
}

function integer(value: string | number, flag: string, min: number): number {
  const n = typeof value === "number" ? value : /^\d+$/.test(value.trim()) ? Number(value) : NaN;
  if (!Number.isSafeInteger(n) || n < min) {
    throw new InvalidArgumentError(`${flag} must be ${min === 0 ? "a non-negative" : "a positive"} integer, got ${JSON.stringify(value)}`);
  }
  return n;
}

function fromEnv(env: Readonly<Record<string, string | undefined>>, name: string, flag: string, min: number): number | undefined {
  if (!present(env, name)) return undefined;
  return integer(env[name]!, `${flag} (from ${name})`, min);
}

function seconds(value: string | number, flag: string): number {
  const n = typeof value === "number" ? value : value.trim() === "" ? NaN : Number(value);
  // Beyond a day is surely a mistake (and would overflow a Node timer at about 24.8 days).
  if (!Number.isFinite(n) || n < 0 || n > 86_400) throw new InvalidArgumentError(`${flag} must be a number of seconds in [0, 86400], got ${JSON.stringify(value)}`);
  return Math.round(n * 1000);
}

function present(env: Readonly<Record<string, string | undefined>>, name: string): boolean {
  const value = env[name];
  return value !== undefined && value !== "";
}
