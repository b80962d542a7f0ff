import { GangError, InvalidArgumentError } from "../errors.js";
import type { JsonValue } from "./gang.js";
import { isCkptMessage, parseLauncherMessage, type LauncherMessage, type WorkerMessage } from "./ipc-messages.js";
import { GANG_ABORTED, GANG_MEMBER_LEFT, GANG_TIMEOUT, type Transport } from "./transport.js";

interface Pending {
  resolve(values: JsonValue[]): void;
  reject(error: GangError): void;
  timer: NodeJS.Timeout;
}

/**
 * The worker's side of the embedded transport: rounds go to the `ckpt launch` process over Node's
 * IPC channel, which relays them (src/launch/ipc-relay.ts) and tells every worker at once when a
 * rank dies. Only a Node process started by the launcher itself has that channel.
 *
 * The channel never keeps the process alive on its own: it is referenced only while a round is
 * pending, so a script that ends (or calls `process.exit`) ends as it would without gangs.
 */
export class IpcTransport implements Transport {
  private readonly pending = new Map<string, Pending>();
  /** Once set, every pending and later exchange rejects with it. */
  private failure: GangError | undefined;
  private readonly onMessage = (message: unknown): void => this.receive(message);
  private readonly onDisconnect = (): void =>
    this.fail(new GangError(`rank ${this.rank} lost its IPC channel to ckpt launch (did the launcher exit?)`, { code: GANG_ABORTED }));

  /** One per process: two would both answer the launcher's messages, and closing one closes the channel. */
  private static opened = false;

  constructor(
    readonly rank: number,
    readonly worldSize: number,
  ) {
    if (IpcTransport.opened) throw new InvalidArgumentError("initGangs was already called in this process: under ckpt launch it connects once per process");
    IpcTransport.opened = true;
    process.on("message", this.onMessage);
    process.on("disconnect", this.onDisconnect);
    process.channel?.unref();
  }

  /** True when this process was started with an IPC channel (by `ckpt launch`, or any `fork`). */
  static available(): boolean {
    return typeof process.send === "function" && process.connected === true;
  }

  exchange(group: string, members: readonly number[], seq: number, value: JsonValue, timeoutMs: number): Promise<JsonValue[]> {
    if (this.failure !== undefined) return Promise.reject(this.failure);
    const key = roundKey(group, seq);
    if (this.pending.has(key)) return Promise.reject(new GangError(`round ${seq} of group ${group} is already in progress on rank ${this.rank}`));
    return new Promise<JsonValue[]>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.settle(key);
        reject(
          new GangError(`timed out after ${timeoutMs} ms on rank ${this.rank} waiting for the other members`, { code: GANG_TIMEOUT }),
        );
      }, timeoutMs);
      if (this.pending.size === 0) process.channel?.ref();
      this.pending.set(key, { resolve, reject, timer });
      this.send({ ckpt: "exchange", group, members: [...members], seq, value });
    });
  }

  async abort(reason: string): Promise<void> {
    if (this.failure !== undefined) return;
    this.fail(new GangError(`rank ${this.rank} aborted: ${reason}`, { rank: this.rank, code: GANG_ABORTED }));
    if (!process.connected) return;
    // Resolved once the message is written, so the caller may exit right after.
    await new Promise<void>((resolve) => process.send!({ ckpt: "abort", rank: this.rank, reason } satisfies WorkerMessage, undefined, {}, () => resolve()));
  }

  async close(): Promise<void> {
    this.fail(new GangError(`the gangs of rank ${this.rank} are closed`));
    process.off("message", this.onMessage);
    process.off("disconnect", this.onDisconnect);
    // The launcher sees the channel close and fails any round that still waits for this rank.
    if (process.connected) process.disconnect();
  }

  private receive(raw: unknown): void {
    if (!isCkptMessage(raw)) return;
    const message: LauncherMessage | undefined = parseLauncherMessage(raw);
    if (message === undefined) return;
    switch (message.ckpt) {
      case "result": {
        const key = roundKey(message.group, message.seq);
        const pending = this.pending.get(key);
        this.settle(key);
        pending?.resolve(message.values);
        return;
      }
      case "round-failed": {
        const key = roundKey(message.group, message.seq);
        const pending = this.pending.get(key);
        this.settle(key);
        // With a rank, a member left; without one, the members disagree on the group (a bug in the script).
        pending?.reject(new GangError(message.reason, message.rank !== null ? { code: GANG_MEMBER_LEFT, rank: message.rank } : {}));
        return;
      }
      case "abort":
        this.fail(new GangError(`the job is aborted: ${message.reason}`, { rank: message.rank, code: GANG_ABORTED }));
        return;
    }
  }

  private send(message: WorkerMessage): void {
    if (!process.connected) {
      this.onDisconnect();
      return;
    }
    process.send!(message, undefined, {}, (error: Error | null) => {
      if (error !== null) this.fail(new GangError(`rank ${this.rank} could not reach ckpt launch: ${error.message}`, { code: GANG_ABORTED, cause: error }));
    });
  }

  /** Records the first failure and rejects every pending round with it. */
  private fail(error: GangError): void {
    this.failure ??= error;
    for (const [key, pending] of [...this.pending]) {
      this.settle(key);
      pending.reject(this.failure);
    }
  }

  private settle(key: string): void {
    const pending = this.pending.get(key);
    if (pending === undefined) return;
    clearTimeout(pending.timer);
    this.pending.delete(key);
    if (this.pending.size === 0) process.channel?.unref();
  }
}

function roundKey(group: string, seq: number): string {
  return `${group}#${seq}`;
}
