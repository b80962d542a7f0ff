import { PyFloat, isTuple } from "./py-values.js";

/** The path segment of an OrderedDict's instance attributes (PyTorch keeps `_metadata` there). */
export const ATTRIBUTES = Symbol("OrderedDict attributes");

/**
 * One step from a container to a value in it: an object or Map key (a string), an array index or
 * Map key (a number), any other Map key, or `ATTRIBUTES`.
 */
export type KeySegment = unknown;

/** Paths longer than this are shortened in messages (the middle is left out). */
const MAX_SHOWN_SEGMENTS = 24;

const IDENTIFIER = /^[A-Za-z_$][A-Za-z0-9_$]*$/;

/**
 * Writes where a value sits, as a JavaScript expression from `root` with brackets for what a dot
 * cannot say: `state.optimizer.state[3].exp_avg`, `state.model["linear.weight"]`, `state.ids[5n]`
 * (a bigint key), `state.names["3"]` (the string key "3", where `[3]` is the number 3),
 * `state.table[tuple(1, "a")]` (a tuple key), `state.model.<attributes>._metadata` (an
 * OrderedDict's attributes). Very deep paths keep their first and last segments.
 */
export function formatKeyPath(root: string, segments: readonly KeySegment[]): string {
  if (segments.length <= MAX_SHOWN_SEGMENTS) return root + segments.map(formatSegment).join("");
  const head = segments.slice(0, MAX_SHOWN_SEGMENTS / 2).map(formatSegment).join("");
  const tail = segments.slice(segments.length - MAX_SHOWN_SEGMENTS / 4).map(formatSegment).join("");
  return `${root}${head}…(${segments.length - MAX_SHOWN_SEGMENTS / 2 - MAX_SHOWN_SEGMENTS / 4} more levels)…${tail}`;
}

function formatSegment(segment: KeySegment): string {
  if (segment === ATTRIBUTES) return ".<attributes>";
  if (typeof segment === "string" && IDENTIFIER.test(segment)) return `.${segment}`;
  return `[${formatKey(segment)}]`;
}

/** A key as it would be written in JavaScript: `"a"`, `3`, `5n`, `true`, `null`, `tuple(1, "a")`. */
export function formatKey(key: unknown): string {
  switch (typeof key) {
    case "string":
      return JSON.stringify(key);
    case "number":
      return Object.is(key, -0) ? "-0" : String(key);
    case "bigint":
      return `${key}n`;
    case "boolean":
      return String(key);
    case "undefined":
      return "undefined";
    default:
      break;
  }
  if (key === null) return "null";
  if (key instanceof PyFloat) return `new PyFloat(${formatKey(key.value)})`;
  if (isTuple(key)) return `tuple(${key.length > 8 ? `${key.slice(0, 8).map(formatKey).join(", ")}, …` : key.map(formatKey).join(", ")})`;
  return `<${describeValue(key)}>`; // not a valid key: said in words
}

/** What a value is, in a few words, for messages: "a function", "a Float32Array", "a plain object". */
export function describeValue(value: unknown): string {
  if (value === undefined) return "undefined";
  if (value === null) return "null";
  switch (typeof value) {
    case "function":
      return "a function";
    case "symbol":
      return "a symbol";
    case "object":
      break;
    default:
      return `a ${typeof value}`;
  }
  if (Array.isArray(value)) return isTuple(value) ? "a tuple" : "an array (a Python list)";
  if (value instanceof Map) return "a Map";
  const prototype = Object.getPrototypeOf(value) as object | null;
  if (prototype === null || prototype === Object.prototype) return "a plain object";
  const name = (value as { constructor?: { name?: unknown } }).constructor?.name;
  return typeof name === "string" && name !== "" ? `${/^[AEIO]/.test(name) ? "an" : "a"} ${name}` : "an object";
}
