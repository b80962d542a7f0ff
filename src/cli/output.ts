import { PyDType, PyFloat, ShardedTensor, Tensor, isFloatSlot, isTuple, type StateValue } from "../index.js";

/** Exit codes: 0 all well; 1 the answer is "no" (verify found damage, diff found differences); 2 an error. */
export const EXIT_OK = 0;
export const EXIT_NEGATIVE = 1;
export const EXIT_ERROR = 2;

/** An error the user can fix: printed as one line, exit code 2. */
export class CliError extends Error {}

/** Writes a line of results to stdout (progress bars are stopped before results are printed). */
export function print(line = ""): void {
  process.stdout.write(`${line}\n`);
}

export function printJson(value: unknown): void {
  process.stdout.write(`${JSON.stringify(value, jsonReplacer, 2)}\n`);
}

function jsonReplacer(_key: string, value: unknown): unknown {
  if (typeof value === "bigint") return value.toString();
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

/** A number short enough for a table: up to 6 significant digits, no trailing zeros. */
export function formatNumber(value: number | undefined): string {
  if (value === undefined) return "-";
  if (Number.isInteger(value) && Math.abs(value) < 1e15) return String(value);
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

/** A Python-like rendering of a non-tensor value, cut to `limit` characters. */
export function valueText(value: StateValue, container?: object, key?: unknown, limit = 80): string {
  const text = render(value, container, key);
  return text.length > limit ? `${text.slice(0, limit - 1)}…` : text;
}

function render(value: StateValue, container?: object, key?: unknown): string {
  if (value === null) return "None";
  if (value === true) return "True";
  if (value === false) return "False";
  if (typeof value === "string") return JSON.stringify(value);
  if (typeof value === "bigint") return value.toString();
  if (typeof value === "number") {
    const whole = Number.isInteger(value) && container !== undefined && isFloatSlot(container, key);
    return whole ? `${value}.0` : String(value);
  }
  if (value instanceof PyFloat) return Number.isInteger(value.value) ? `${value.value}.0` : String(value.value);
  if (value instanceof PyDType) return `torch.${value.name}`;
  if (value instanceof Tensor) return `tensor(${value.dtype}, ${shapeText(value.shape)})`;
  if (value instanceof ShardedTensor) return `shard(${value.shard.dtype}, ${shapeText(value.shard.shape)} of ${shapeText(value.globalShape)} at ${shapeText(value.offsets)})`;
  if (value instanceof Uint8Array) return `bytes(${value.byteLength})`;
  if (Array.isArray(value)) {
    const items = value.map((item, i) => render(item, value, i));
    return isTuple(value) ? `(${items.join(", ")}${items.length === 1 ? "," : ""})` : `[${items.join(", ")}]`;
  }
  if (value instanceof Map) return `{${[...value].map(([k, v]) => `${typeof k === "string" ? JSON.stringify(k) : String(k)}: ${render(v, value, k)}`).join(", ")}}`;
  return `{${Object.entries(value).map(([k, v]) => `${JSON.stringify(k)}: ${render(v, value, k)}`).join(", ")}}`;
}

/** The children of a container value, with display keys; undefined for leaves. */
export function childrenOf(value: StateValue): [string, StateValue, unknown][] | undefined {
  if (value instanceof Tensor || value instanceof ShardedTensor || value instanceof Uint8Array || value instanceof PyFloat || value instanceof PyDType) return undefined;
  if (value instanceof Map) return [...value].map(([k, v]) => [String(k), v, k]);
  if (Array.isArray(value)) return value.map((v, i) => [String(i), v, i]);
  if (typeof value === "object" && value !== null) return Object.keys(value).map((k) => [k, value[k]!, k]);
  return undefined;
}

/** A leaf of a state: a tensor or a value that is not a container (or an empty or all-scalar list shown whole). */
export interface Leaf {
  key: string;
  value: StateValue;
  container: object | undefined;
  slot: unknown;
}

/** Every leaf with its key path joined by "." (lists of plain values count as one leaf). */
export function leaves(state: StateValue, prefix = ""): Leaf[] {
  const out: Leaf[] = [];
  const walk = (value: StateValue, key: string, container: object | undefined, slot: unknown): void => {
    const children = isScalarList(value) ? undefined : childrenOf(value);
    if (children === undefined) {
      out.push({ key, value, container, slot });
      return;
    }
    for (const [name, child, rawKey] of children) walk(child, key === "" ? name : `${key}.${name}`, value as object, rawKey);
  };
  walk(state, prefix, undefined, undefined);
  return out.filter((leaf) => leaf.key !== "" || leaf.value instanceof Tensor || childrenOf(leaf.value) === undefined);
}

/** A list or tuple of plain values, shown on one line. */
export function isScalarList(value: StateValue): boolean {
  return Array.isArray(value) && value.every((item) => childrenOf(item) === undefined && !(item instanceof Tensor));
}

/**
 * Finds the value at a dotted key, where keys may themselves hold dots ("model.encoder.weight" is
 * "encoder.weight" under "model"): at each level the longest matching key is tried first.
 */
export function findKey(state: StateValue, key: string): StateValue | undefined {
  if (key === "") return state;
  const children = childrenOf(state);
  if (children === undefined) return undefined;
  const candidates = children.filter(([name]) => key === name || key.startsWith(`${name}.`)).sort((a, b) => b[0].length - a[0].length);
  for (const [name, child] of candidates) {
    const found = findKey(child, key === name ? "" : key.slice(name.length + 1));
    if (found !== undefined) return found;
  }
  return undefined;
}

/** Wraps a command's action: the exit code it returns becomes the process's. */
export function exitCodeOf<A extends unknown[]>(action: (...args: A) => Promise<number>): (...args: A) => Promise<void> {
  return async (...args: A) => {
    process.exitCode = await action(...args);
  };
}
