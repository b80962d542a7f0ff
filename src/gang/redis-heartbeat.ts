import { Worker } from "node:worker_threads";

/**
 * A rank's heartbeat: a worker thread with its own connection refreshes the rank's expiring
 * `alive` key every `heartbeatMs`. A thread, not a timer, so that training code blocking the main
 * thread (a long synchronous step or write) does not make a live rank look dead; a rank that is
 * alive but stuck meets the collective timeout instead. A killed process takes its thread with it,
 * and the key expires `deadAfterMs` after the last beat.
 *
 * The thread starts before the rendezvous and is told which key to keep alive when the rank joins
 * a run, so that the key is already beating when the run starts.
 */

export interface HeartbeatOptions {
  /** Resolved path of the `ioredis` package, loaded by the thread with `require`. */
  ioredisPath: string;
  url: string;
  heartbeatMs: number;
  deadAfterMs: number;
  connectionName: string;
  /** Called once when the thread cannot reach the server (with why) or stops unexpectedly. */
  onFailure: (reason: string) => void;
}

/** Starts the value of the alive key of a rank that closed its transport (instead of dying). */
export const CLOSED_MARK = "closed ";

/** How long `stop` waits for the thread to mark its key closed before terminating it. */
const STOP_GRACE_MS = 2000;

// Plain CommonJS run with `eval`, so it works the same from src/ (tsx) and from dist/.
const WORKER_SOURCE = `
const { workerData, parentPort } = require("node:worker_threads");
const Redis = require(workerData.ioredisPath);
const { url, heartbeatMs, deadAfterMs, connectionName, closedMark } = workerData;
const client = new Redis(url, {
  lazyConnect: true, protocol: 2, connectTimeout: deadAfterMs, commandTimeout: deadAfterMs,
  retryStrategy: () => null, maxRetriesPerRequest: 0, enableOfflineQueue: false, connectionName,
});
let key = null, value = null;
let stopping = false, failed = false, beating = false, lastError = null, timer = null;
function fail(reason) {
  if (stopping || failed) return;
  failed = true;
  clearInterval(timer);
  parentPort.postMessage({ type: "failure", reason });
}
client.on("error", (error) => { lastError = error; });
client.on("close", () => fail("connection lost" + (lastError ? ": " + lastError.message : "")));
async function beat() {
  if (beating || key === null) return; // a slow server: do not pile up beats
  beating = true;
  try { await client.set(key, value, "PX", deadAfterMs); } catch (error) { fail(error.message); }
  beating = false;
}
client.connect().then(() => {
  parentPort.postMessage({ type: "ready" });
  timer = setInterval(beat, heartbeatMs);
}, (error) => fail(error.message));
parentPort.on("message", async (message) => {
  if (message.type === "beat") {
    key = message.key;
    value = message.value;
    beating = false;
    await beat();
    return;
  }
  if (message.type !== "stop") return;
  stopping = true;
  clearInterval(timer);
  // Peers waiting for this rank see at their next check that it closed, instead of after expiry.
  if (client.status === "ready" && key !== null) {
    try { await client.set(key, closedMark + value, "PX", deadAfterMs); } catch {}
  }
  if (client.status === "ready") { try { await client.quit(); } catch {} }
  // Not on an ended connection: ioredis would arm a timer for a close that already happened.
  if (client.status !== "end" && client.status !== "close") client.disconnect();
  parentPort.close();
});
`;

export class Heartbeat {
  private stopped = false;
  private readonly exited: Promise<void>;

  private constructor(private readonly worker: Worker) {
    this.exited = new Promise<void>((resolve) => worker.once("exit", () => resolve()));
  }

  /** Starts the thread; resolves once it is connected, rejects with why it could not connect. */
  static start(options: HeartbeatOptions): Promise<Heartbeat> {
    const { onFailure, ...data } = options;
    const worker = new Worker(WORKER_SOURCE, { eval: true, workerData: { ...data, closedMark: CLOSED_MARK } });
    const heartbeat = new Heartbeat(worker);
    return new Promise((resolve, reject) => {
      let ready = false;
      const failed = (reason: string): void => {
        if (heartbeat.stopped) return;
        if (!ready) {
          reject(new Error(reason));
          void worker.terminate();
        } else {
          onFailure(reason);
        }
      };
      worker.on("message", (message: { type: string; reason?: string }) => {
        if (message.type === "ready") {
          ready = true;
          resolve(heartbeat);
        } else if (message.type === "failure") {
          failed(`heartbeat failed: ${message.reason ?? "unknown"}`);
        }
      });
      worker.on("error", (error) => failed(`heartbeat thread crashed: ${error.message}`));
      worker.on("exit", (code) => failed(`heartbeat thread exited (${code})`));
    });
  }

  /** From now on keeps `key` alive, holding `value` (who this rank is, for peers' messages). */
  beat(key: string, value: string): void {
    if (!this.stopped) this.worker.postMessage({ type: "beat", key, value });
  }

  /** Stops beating and marks the key closed (when the server is reachable); never throws. */
  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    this.worker.postMessage({ type: "stop" });
    const grace = setTimeout(() => void this.worker.terminate(), STOP_GRACE_MS);
    await this.exited;
    clearTimeout(grace);
  }
}
