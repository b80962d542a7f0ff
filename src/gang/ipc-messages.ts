import type { JsonValue } from "./gang.js";

/**
 * What workers and the launcher say to each other over Node's IPC channel (JSON). Every message
 * carries `ckpt`, so a worker's own IPC messages, if it has any, are told apart and left alone.
 */

/** Worker → launcher: this rank's contribution to round `seq` of `group`. */
export interface ExchangeMessage {
  ckpt: "exchange";
  group: string;
  members: number[];
  seq: number;
  value: JsonValue;
}

/** Worker → launcher: this rank failed (`reason`); launcher → worker: rank `rank` failed, the job is aborted. */
export interface AbortMessage {
  ckpt: "abort";
  rank: number;
  reason: string;
}

/** Launcher → worker: round `seq` of `group` completed with every member's value, in member order. */
export interface ResultMessage {
  ckpt: "result";
  group: string;
  seq: number;
  values: JsonValue[];
}

/** Launcher → worker: round `seq` of `group` cannot complete (member `rank` left, or members disagree). */
export interface RoundFailedMessage {
  ckpt: "round-failed";
  group: string;
  seq: number;
  rank: number | null;
  reason: string;
}

export type WorkerMessage = ExchangeMessage | AbortMessage;
export type LauncherMessage = AbortMessage | ResultMessage | RoundFailedMessage;

/** True for any message of this protocol (valid or not); anything else belongs to the worker. */
export function isCkptMessage(message: unknown): message is { ckpt: unknown } {
  return typeof message === "object" && message !== null && "ckpt" in message;
}

/** A worker's message checked field by field (the launcher trusts nothing a worker sends), or a reason it is not one. */
export function parseWorkerMessage(message: { ckpt: unknown }): WorkerMessage | string {
  const m = message as Record<string, unknown>;
  if (m.ckpt === "exchange") {
    if (typeof m.group !== "string" || m.group === "") return "exchange without a group name";
    if (!isSeq(m.seq)) return `exchange in group ${m.group} without a valid round number`;
    if (!Array.isArray(m.members) || m.members.length === 0 || !m.members.every(isSeq)) return `exchange in group ${m.group} without a valid member list`;
    if (!("value" in m)) return `exchange in group ${m.group} without a value`;
    return { ckpt: "exchange", group: m.group, members: m.members as number[], seq: m.seq, value: m.value as JsonValue };
  }
  if (m.ckpt === "abort") {
    if (typeof m.reason !== "string" || !isSeq(m.rank)) return "abort without a rank and reason";
    return { ckpt: "abort", rank: m.rank, reason: m.reason };
  }
  return `unknown message type ${JSON.stringify(m.ckpt)}`;
}

/** A launcher's message checked enough to dispatch, or undefined. */
export function parseLauncherMessage(message: { ckpt: unknown }): LauncherMessage | undefined {
  const m = message as Record<string, unknown>;
  switch (m.ckpt) {
    case "result":
      return typeof m.group === "string" && isSeq(m.seq) && Array.isArray(m.values) ? (m as unknown as ResultMessage) : undefined;
    case "round-failed":
      return typeof m.group === "string" && isSeq(m.seq) && typeof m.reason === "string" ? (m as unknown as RoundFailedMessage) : undefined;
    case "abort":
      return isSeq(m.rank) && typeof m.reason === "string" ? (m as unknown as AbortMessage) : undefined;
    default:
      return undefined;
  }
}

function isSeq(value: unknown): value is number {
  return typeof value === "number" && Number.isSafeInteger(value) && value >= 0;
}
