import { PyDType, PyFloat, ShardedTensor, Tensor, isFloatSlot, isTuple, type StateValue } from "../index.js";
import { floatRepr } from "./key-path.js";

/** Exit codes: 0 all well; 1 the answer is "no" (verify found damage, diff found differences); 2 an error. */
export const EXIT_OK = 0;
export const EXIT_NEGATIVE = 1;
export const EXIT_ERROR = 2;

/** An error the user can fix: printed as one line, exit code 2; `code` tags it in `--json` output. */
export class CliError extends Error {
  constructor(
    message: string,
    readonly code = "INVALID_INPUT",
  ) {
    super(message);
  }
}

let stdoutClosed = false;

/**
 * The reader of stdout went away (`ckpt verify DIR | head -1`): results are no longer written, but
 * the command runs on to its verdict, whose exit code still counts.
 */
export function stopPrinting(): void {
  stdoutClosed = true;
}

/** Writes a line of results to stdout (progress bars are stopped before results are printed). */
export function print(line = ""): void {
  if (!stdoutClosed) process.stdout.write(`${line}\n`);
}

/** Prints JSON; integers beyond 2^53 (bigints) are written exactly, as JSON numbers of any length. */
export function printJson(value: unknown): void {
  const text = JSON.stringify(value, jsonReplacer, 2).replace(/"\\u0000bigint:(-?\d+)"/g, "$1");
  print(text);
}

function jsonReplacer(_key: string, value: unknown): unknown {
  if (typeof value === "bigint") return `\u0000bigint:${value}`;
  if (value instanceof Map) return Object.fromEntries(value);
  return value;
}

/** 1536 → "1.5 KiB". */
export function formatBytes(bytes: number): string {
  if (bytes < 1024) return `${bytes} B`;
  const units = ["KiB", "MiB", "GiB", "TiB"];
  let value = bytes / 1024;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit++;
  }
  return `${value < 10 ? value.toFixed(1) : Math.round(value)} ${units[unit]}`;
}

/** A number short enough for a table: up to 6 significant digits, no trailing zeros; a bigint exactly. */
export function formatNumber(value: number | bigint | undefined): string {
  if (value === undefined) return "-";
  if (typeof value === "bigint") return value.toString();
  if (Number.isInteger(value) && Math.abs(value) < 1e15) return Object.is(value, -0) ? "-0" : String(value);
  return String(Number(value.toPrecision(6)));
}

/** Left-aligned columns separated by two spaces; trailing spaces trimmed. */
export function table(rows: string[][]): string[] {
  const widths: number[] = [];
  for (const row of rows) row.forEach((cell, i) => (widths[i] = Math.max(widths[i] ?? 0, cell.length)));
  return rows.map((row) => row.map((cell, i) => cell.padEnd(widths[i]!)).join("  ").trimEnd());
}

export function shapeText(shape: readonly number[]): string {
  return `[${shape.join(", ")}]`;
}

/**
 * A Python-like rendering of a non-tensor value, cut to `limit` characters. Rendering stops once
 * the limit is reached, so a huge or deeply nested value costs no more than the text shown.
 */
export function valueText(value: StateValue, container?: object, key?: unknown, limit = 80): string {
  const out = new TextBudget(limit);
  render(value, container, key, out);
  return out.text();
}

/** Collects text up to a limit; `full` says when to stop producing more. */
class TextBudget {
  private readonly parts: string[] = [];
  private length = 0;

  constructor(private readonly limit: number) {}

  get full(): boolean {
    return this.length > this.limit;
  }

  add(text: string): void {
    if (this.full) return;
    this.parts.push(text.length > this.limit + 1 ? text.slice(0, this.limit + 1) : text);
    this.length += text.length;
  }

  text(): string {
    const text = this.parts.join("");
    return text.length > this.limit ? `${text.slice(0, this.limit - 1)}…` : text;
  }
}

/** A Python number as Python prints it: an int, or a float (`1.0`, `-0.0`, `1e+300`). */
export function numberText(value: number, isFloat: boolean): string {
  return isFloat || !Number.isInteger(value) ? floatRepr(value) : String(value);
}

function render(value: StateValue, container: object | undefined, key: unknown, out: TextBudget): void {
  if (out.full) return;
  if (value === null) return out.add("None");
  if (value === true) return out.add("True");
  if (value === false) return out.add("False");
  if (typeof value === "string") return out.add(JSON.stringify(value.length > 10_000 ? value.slice(0, 10_000) : value));
  if (typeof value === "bigint") return out.add(value.toString());
  if (typeof value === "number") return out.add(numberText(value, container !== undefined && isFloatSlot(container, key)));
  if (value instanceof PyFloat) return out.add(floatRepr(value.value));
  if (value instanceof PyDType) return out.add(`torch.${value.name}`);
  if (value instanceof Tensor) return out.add(`tensor(${value.dtype}, ${shapeText(value.shape)})`);
  if (value instanceof ShardedTensor) return out.add(`shard(${value.shard.dtype}, ${shapeText(value.shard.shape)} of ${shapeText(value.globalShape)} at ${shapeText(value.offsets)})`);
  if (value instanceof Uint8Array) return out.add(`bytes(${value.byteLength})`);
  if (Array.isArray(value)) {
    const tuple = isTuple(value);
    out.add(tuple ? "(" : "[");
    for (let i = 0; i < value.length && !out.full; i++) {
      if (i > 0) out.add(", ");
      render(value[i]!, value, i, out);
    }
    return out.add(tuple ? (value.length === 1 ? ",)" : ")") : "]");
  }
  out.add("{");
  let first = true;
  const entry = (k: unknown, v: StateValue): void => {
    if (!first) out.add(", ");
    first = false;
    out.add(`${typeof k === "string" ? JSON.stringify(k) : valueText(k as StateValue)}: `);
    render(v, value, k, out);
  };
  if (value instanceof Map) {
    for (const [k, v] of value) {
      if (out.full) break;
      entry(k, v);
    }
  } else {
    for (const k in value) {
      if (out.full) break;
      entry(k, value[k]!);
    }
  }
  out.add("}");
}

/** Wraps a command's action: the exit code it returns becomes the process's. */
export function exitCodeOf<A extends unknown[]>(action: (...args: A) => Promise<number>): (...args: A) => Promise<void> {
  return async (...args: A) => {
    process.exitCode = await action(...args);
  };
}
