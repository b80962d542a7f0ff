import type { StateKey } from "../index.js";

/**
 * How `ckpt` names a place in a state: the keys from the root, typed as Python has them (a str
 * key "0" is not the int key 0), shown so that two places never read alike:
 *
 * - int keys and list indices bare, after a dot: `optimizer.state.0.exp_avg`
 * - str keys bare when plain: `model.proj`
 * - any other key in brackets, as Python writes it: a str holding a dot, a bracket, a quote, a
 *   colon or a space, or reading like a number or True/False/None, in quotes (`model["encoder.weight"]`,
 *   `state["0"]`); a float, bool or None key bare (`[1.5]`, `[True]`, `[None]`)
 *
 * A path is compared by its keys, never by its text.
 */
export type PathKey = StateKey;

/** Keys longer than this are cut in what is shown (never in what is compared): hostile files have megabyte keys. */
export const MAX_KEY_CHARS = 256;

/** A Python float as Python's repr writes it: `1.0`, `-0.0`, `1e+300`, `1e-05`, `inf`, `nan`. */
export function floatRepr(value: number): string {
  if (Number.isNaN(value)) return "nan";
  if (!Number.isFinite(value)) return value > 0 ? "inf" : "-inf";
  if (value === 0) return Object.is(value, -0) ? "-0.0" : "0.0";
  // toExponential() gives the shortest digits that read back as the same double, as repr does.
  const [mantissa, exponentText] = value.toExponential().split("e") as [string, string];
  const exponent = Number(exponentText);
  const negative = mantissa.startsWith("-");
  const digits = mantissa.replace("-", "").replace(".", "");
  const sign = negative ? "-" : "";
  // repr switches to scientific notation below 1e-4 and from 1e16 on.
  if (exponent < -4 || exponent >= 16) {
    const fraction = digits.length > 1 ? `.${digits.slice(1)}` : "";
    return `${sign}${digits[0]}${fraction}e${exponent < 0 ? "-" : "+"}${String(Math.abs(exponent)).padStart(2, "0")}`;
  }
  if (exponent < 0) return `${sign}0.${"0".repeat(-exponent - 1)}${digits}`;
  const whole = digits.slice(0, exponent + 1).padEnd(exponent + 1, "0");
  const fraction = digits.slice(exponent + 1);
  return `${sign}${whole}.${fraction === "" ? "0" : fraction}`;
}

/** True when a str key would read as another Python value (a number, True, False, None) or as nothing. */
function readsAsLiteral(key: string): boolean {
  return key === "" || key === "True" || key === "False" || key === "None" || /^[+-]?(inf|infinity|nan)$/i.test(key) || !Number.isNaN(Number(key));
}

/** Characters that never show bare: spaces, quotes, backslashes and invisible ones. */
const UNCLEAR = /[\s"'\\\p{C}]/u;
/** Characters that separate path segments. */
const SEPARATORS = /[.[\]:]/;

function cut(text: string): string {
  return text.length > MAX_KEY_CHARS ? `${text.slice(0, MAX_KEY_CHARS - 1)}…` : text;
}

/** A key as Python writes it in `d[key]`. */
function keyRepr(key: PathKey): string {
  if (typeof key === "string") return cut(JSON.stringify(key));
  if (key === null) return "None";
  if (key === true) return "True";
  if (key === false) return "False";
  if (typeof key === "bigint") return key.toString();
  return Number.isInteger(key) ? String(key) : floatRepr(key);
}

function isIntKey(key: PathKey): key is number | bigint {
  return typeof key === "bigint" || (typeof key === "number" && Number.isInteger(key));
}

/** A key on its own line of a tree (levels shown by indentation, so dots need no quoting). */
export function treeKeyText(key: PathKey): string {
  if (isIntKey(key)) return key.toString();
  if (typeof key === "string" && !readsAsLiteral(key) && !UNCLEAR.test(key)) return cut(key);
  return keyRepr(key);
}

/** The path from the root, as described above; "" for the root itself. */
export function pathText(keys: readonly PathKey[]): string {
  let text = "";
  for (const key of keys) {
    if (isIntKey(key) || (typeof key === "string" && !readsAsLiteral(key) && !UNCLEAR.test(key) && !SEPARATORS.test(key))) {
      text += `${text === "" ? "" : "."}${isIntKey(key) ? key.toString() : cut(key)}`;
    } else {
      text += `[${keyRepr(key)}]`;
    }
  }
  return text;
}

/** The keys joined with "." as they are, however ambiguous: what a user is likely to type. */
export function looseText(keys: readonly PathKey[]): string {
  return keys.map((key) => (typeof key === "string" ? key : keyRepr(key))).join(".");
}
