// What the benchmark's harness (run.ts, report.ts) and its worker (worker.ts) agree on: the
// operations a worker runs and the measurement it prints for each. Kept apart from the worker so
// that the harness does not load the library it measures.

export const NODE_OPS = [
  "save-ours",
  "load-ours",
  "load-into-ours",
  "save-manager",
  "load-manager",
  "load-into-manager",
  "save-async",
  "write-plain",
  "read-plain",
  "copy-memory",
  "copy-memory-idle",
  // Diagnostics: measurements that explain where the time of the operations above goes.
  "crc-memory",
  "write-plain-crc",
  "read-plain-crc",
  "dump-discard",
  "load-ours-nocrc",
  "load-into-nocrc",
  // Issue 14: loads of the file torch.save wrote (bench/torch_peer.py prepare), and the disk's best.
  "load-torchfile",
  "load-into-torchfile",
  "write-best",
  "read-best",
  "load-floor",
  "save-floor",
  "write-direct",
] as const;
export type NodeOp = (typeof NODE_OPS)[number];

/**
 * `<op>-steady`: the op timed after two untimed runs of the same size in the same
 * process, as a training job's later saves run, instead of after a warm-up on a tiny state (the
 * first operation of a fresh process, as a resume's load runs).
 */
export const STEADY_SUFFIX = "-steady";

/** What a worker prints for one operation, as one line of JSON. */
export interface Measurement {
  op?: string;
  /** For save-async, the time training is blocked; otherwise the whole operation. */
  seconds: number;
  /** Peak resident memory during the operation above the resident memory just before it. */
  peakBytes: number;
  baselineBytes: number;
  /** CPU time of the whole process (every thread: user + system) during the operation. */
  cpuSeconds: number;
  /** Write requests the disk of the work directory completed during the operation (every process's; Linux). */
  writeRequests?: number;
  /** save-async only: from beginCheckpoint until waitForPendingSave resolved. */
  totalSeconds?: number;
  /** save-async only: CPU time until waitForPendingSave resolved. */
  totalCpuSeconds?: number;
  /** save-async only: peak memory until waitForPendingSave resolved (peakBytes is at commit's return). */
  totalPeakBytes?: number;
  /** save-async only: the worst lateness of a 1 ms interval timer while the checkpoint was written. */
  loopDelaySeconds?: number;
  /** save-async only: the 99th percentile of that lateness. */
  loopP99Seconds?: number;
  /** save-async only: how many times that timer fired while the checkpoint was written. */
  loopTicks?: number;
  /** save-async only: the worst lateness of the same timer afterwards, as long, with nothing to do. */
  idleLoopDelaySeconds?: number;
}
