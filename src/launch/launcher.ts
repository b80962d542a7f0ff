import { spawn, type ChildProcess } from "node:child_process";
import type { Writable } from "node:stream";
import { InvalidArgumentError } from "../errors.js";
import { IpcRelay } from "./ipc-relay.js";
import { workerEnvironment, type LaunchPlan } from "./launch-plan.js";
import { PrefixedOutput } from "./prefixed-output.js";

/**
 * A worker's channel closes a moment before its exit is seen. Waiting this long before telling the
 * relay it left lets a dying worker's exit status (the more useful message) reach the others first;
 * a worker that closed its gangs and runs on is reported after this delay.
 */
const DEPARTURE_SETTLE_MS = 500;
/**
 * After a worker exits its pipes close at once, unless a process it started still holds them;
 * then the launcher stops waiting for them after this long.
 */
const EXIT_SETTLE_MS = 1000;

export interface LaunchOptions {
  plan: LaunchPlan;
  /** The worker command: program and arguments (`["node", "train.js", "--lr", "3e-4"]`). */
  command: readonly string[];
  /** The environment the workers' own is built on. Default `process.env`. */
  env?: Readonly<Record<string, string | undefined>>;
  /** Where the workers' prefixed output goes. Default `process.stdout` / `process.stderr`. */
  stdout?: Writable;
  stderr?: Writable;
}

/** The worker that made a launch fail. */
export interface WorkerFailure {
  rank: number;
  pid: number | undefined;
  /** How it ended ("exited with code 1", "was killed by SIGKILL", "could not be started: …"); undefined if it reported a failure and never ended. */
  status: string | undefined;
  /** What it reported before ending (its uncaught error, a timed-out round), if anything. */
  reason: string | undefined;
}

export type LaunchResult =
  | { outcome: "succeeded" }
  | { outcome: "failed"; failure: WorkerFailure; message: string }
  | { outcome: "stopped"; signal: NodeJS.Signals; message: string };

interface Worker {
  rank: number;
  child: ChildProcess;
  /** How it ended, once it has. */
  status: string | undefined;
  ok: boolean;
  ended: boolean;
  output: Promise<void>[];
}

/**
 * Starts this node's workers and watches them: `ckpt launch` without the command line.
 *
 * @example
 * const launch = launchWorkers({ plan: planLaunch({ nproc: 2 }), command: ["node", "train.js"] });
 * process.on("SIGINT", () => launch.stop("SIGINT"));
 * const result = await launch.result;
 */
export function launchWorkers(options: LaunchOptions): Launch {
  if (options.command.length === 0 || options.command[0] === "") throw new InvalidArgumentError("the worker command is missing: give it after --, e.g. -- node train.js");
  // spawn throws on these at once; refused before the first worker starts, none is left running.
  const bad = options.command.find((part) => part.includes("\0"));
  if (bad !== undefined) throw new InvalidArgumentError(`the worker command must not contain NUL characters: ${JSON.stringify(bad)}`);
  return new Launch(options);
}

/**
 * One node's workers. When one fails (a non-zero exit, a signal, or an error it reports), every
 * other worker is told at once through the gang transport and gets the grace period to end on its
 * own, then SIGTERM, then after another grace period SIGKILL. A stop request (SIGINT/SIGTERM) is
 * forwarded at once, followed by SIGKILL after the grace period; a second one kills at once.
 */
export class Launch {
  readonly result: Promise<LaunchResult>;
  private resolveResult!: (result: LaunchResult) => void;
  private readonly workers: Worker[] = [];
  private readonly relay: IpcRelay | undefined;
  private readonly graceMs: number;
  private failure: WorkerFailure | undefined;
  private signal: NodeJS.Signals | undefined;
  private readonly timers = new Set<NodeJS.Timeout>();

  constructor(options: LaunchOptions) {
    this.result = new Promise((resolve) => (this.resolveResult = resolve));
    const { plan } = options;
    this.graceMs = plan.gracePeriodMs;
    if (plan.rendezvous === "ipc") {
      this.relay = new IpcRelay(plan.worldSize, {
        send: (rank, message) => {
          const child = this.workers[rank - plan.nodeRank * plan.nproc]?.child;
          if (child?.connected === true) child.send(message, () => undefined);
        },
        // Where the failing rank was waiting names the ranks that were not there (after a timeout: the stuck ones).
        workerAborted: (rank, reason) => this.workerFailed(this.workerOf(rank), [reason, ...this.relay!.waitingFor(rank).map((w) => `it was waiting in ${w}`)].join("; ")),
        protocolError: (rank, problem) => this.workerFailed(this.workerOf(rank), `broke the gang protocol: ${problem}`),
      });
    }
    const stdout = new PrefixedOutput(options.stdout ?? process.stdout);
    const stderr = new PrefixedOutput(options.stderr ?? process.stderr);
    for (let localRank = 0; localRank < plan.nproc; localRank++) {
      this.workers.push(this.start(options, plan.nodeRank * plan.nproc + localRank, localRank, stdout, stderr));
    }
  }

  /** The process ids of the workers that started. */
  get pids(): number[] {
    return this.workers.flatMap((w) => (w.child.pid !== undefined ? [w.child.pid] : []));
  }

  /** Forwards `signal` to every running worker, and SIGKILL after the grace period; called twice, kills at once. */
  stop(signal: NodeJS.Signals): void {
    if (this.signal !== undefined) return this.killAll("SIGKILL");
    this.signal = signal;
    this.killAll(signal);
    this.later(this.graceMs, () => this.killAll("SIGKILL"));
  }

  /** Sends `signal` to every worker still running (synchronous: also usable from an exit handler). */
  killAll(signal: NodeJS.Signals): void {
    for (const worker of this.workers) if (worker.child.exitCode === null && worker.child.signalCode === null) worker.child.kill(signal);
  }

  private start(options: LaunchOptions, rank: number, localRank: number, stdout: PrefixedOutput, stderr: PrefixedOutput): Worker {
    const [program, ...args] = options.command;
    const child = spawn(program!, args, {
      env: workerEnvironment(options.plan, localRank, options.env ?? process.env),
      // stdin is not shared: several workers reading one terminal would steal each other's input.
      stdio: this.relay !== undefined ? ["ignore", "pipe", "pipe", "ipc"] : ["ignore", "pipe", "pipe"],
    });
    const prefix = `[rank ${rank}] `;
    const worker: Worker = { rank, child, status: undefined, ok: false, ended: false, output: [] };
    worker.output = [stdout.add(child.stdout!, prefix), stderr.add(child.stderr!, prefix)];
    child.on("error", (error) => {
      // Only a failed spawn matters here; a failed kill or send shows up as the worker's exit.
      if (child.pid !== undefined || worker.ended) return;
      worker.status = `could not be started: ${error.message}`;
      this.ended(worker);
    });
    child.on("message", (message) => this.relay?.receive(rank, message));
    child.on("disconnect", () => this.later(DEPARTURE_SETTLE_MS, () => this.relay?.memberLeft(rank)));
    child.on("exit", (code, signal) => {
      worker.status = signal !== null ? `was killed by ${signal}` : `exited with code ${code}`;
      worker.ok = code === 0;
      this.later(EXIT_SETTLE_MS, () => this.ended(worker));
    });
    // After the exit, the pipes and the IPC channel are closed: every message the worker sent is in.
    child.on("close", () => this.ended(worker));
    return worker;
  }

  private ended(worker: Worker): void {
    if (worker.ended) return;
    worker.ended = true;
    if (!worker.ok) this.workerFailed(worker);
    else if (this.failure?.rank === worker.rank) this.failure.status ??= worker.status;
    this.relay?.memberLeft(worker.rank);
    // Every worker is in the list before any event: spawn reports even its failures later.
    if (this.workers.every((w) => w.ended)) void this.finish();
  }

  /** A worker failed: its exit status was bad, or it reported an error (`reason`). The first failure decides. */
  private workerFailed(worker: Worker | undefined, reason?: string): void {
    if (worker === undefined) return;
    if (this.failure === undefined && this.signal === undefined) {
      this.failure = { rank: worker.rank, pid: worker.child.pid, status: worker.status, reason };
      this.later(this.graceMs, () => this.killAll("SIGTERM"));
      this.later(2 * this.graceMs, () => this.killAll("SIGKILL"));
    } else if (this.failure?.rank === worker.rank) {
      this.failure.status ??= worker.status;
      this.failure.reason ??= reason;
    }
    // Even when stopping for a signal: a worker that handles it may be waiting in a collective.
    this.relay?.abortAll(worker.rank, describeFailure({ rank: worker.rank, pid: worker.child.pid, status: worker.status, reason }));
  }

  private workerOf(rank: number): Worker | undefined {
    return this.workers.find((w) => w.rank === rank);
  }

  private later(ms: number, action: () => void): void {
    const timer = setTimeout(() => {
      this.timers.delete(timer);
      action();
    }, ms);
    // The workers keep the launcher alive; a pending escalation alone must not.
    timer.unref();
    this.timers.add(timer);
  }

  private async finish(): Promise<void> {
    for (const timer of this.timers) clearTimeout(timer);
    this.timers.clear();
    // Normally every pipe has ended by now. One still open is held by a process a worker started
    // (destroyed: it must not keep the launcher alive), or paused because our own output is slow
    // (waited for: its lines are not lost).
    const outputs = Promise.all(this.workers.flatMap((w) => w.output));
    while (!(await settlesWithin(outputs, EXIT_SETTLE_MS))) {
      for (const pipe of this.workers.flatMap((w) => [w.child.stdout, w.child.stderr])) {
        if (pipe !== null && !pipe.destroyed && pipe.readableFlowing !== false) pipe.destroy();
      }
    }
    if (this.failure !== undefined) this.resolveResult({ outcome: "failed", failure: this.failure, message: describeFailure(this.failure) });
    else if (this.signal !== undefined) this.resolveResult({ outcome: "stopped", signal: this.signal, message: `stopped by ${this.signal}` });
    else this.resolveResult({ outcome: "succeeded" });
  }
}

async function settlesWithin(promise: Promise<unknown>, ms: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<false>((resolve) => (timer = setTimeout(() => resolve(false), ms)));
  const settled = await Promise.race([promise.then(() => true), timeout]);
  clearTimeout(timer);
  return settled;
}

/** "rank 2 (pid 4242) was killed by SIGKILL"; "rank 1 (pid 4241) failed: Error: boom; it exited with code 1". */
export function describeFailure(failure: WorkerFailure): string {
  const who = `rank ${failure.rank}${failure.pid !== undefined ? ` (pid ${failure.pid})` : ""}`;
  const reason = failure.reason?.replace(/\s*\n\s*/g, " ");
  if (reason === undefined) return `${who} ${failure.status ?? "failed"}`;
  return `${who} failed: ${reason}${failure.status !== undefined ? `; it ${failure.status}` : ""}`;
}
