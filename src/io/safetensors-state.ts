import { FormatError, InvalidArgumentError } from "../errors.js";
import { Tensor } from "../tensor/tensor.js";
import { objectKeepsOrder, setOwn, type StateDict, type StateValue } from "../values/py-values.js";

/**
 * How a state maps onto safetensors, which holds a flat dict of tensors and string metadata.
 *
 * A flat dict of tensors (a model's state dict) is written as it is: the file's tensor names are
 * the dict's keys, and any other safetensors reader sees the same thing. A state with nested dicts
 * or string values (a checkpoint's `{"model": {...}, "model_key": "model"}`) is flattened with "."
 * (`model.encoder.weight`), and its shape is kept in the metadata under `ckpt.state`, so that
 * loading gives back the same tree; other readers just see the flat names. Anything else (numbers,
 * lists, bytes, int-keyed dicts: optimizer state) cannot be saved as safetensors and is refused.
 */
export const STATE_LAYOUT_KEY = "ckpt.state";

/** Nesting deeper than this in a `ckpt.state` layout is refused rather than recursed into. */
const MAX_LAYOUT_DEPTH = 256;

/**
 * A layout node: 0 for a tensor (named by its path joined with "."), a string for a string value,
 * an array of `[key, node]` pairs for a dict (pairs, not a JSON object, keep keys like "10" in order).
 */
type LayoutNode = 0 | string | [string, LayoutNode][];

export interface FlatState {
  tensors: [string, Tensor][];
  /** The `ckpt.state` metadata value, or undefined for a flat dict of tensors. */
  layout: string | undefined;
}

/** A dict of string keys as this library represents one: a plain object, or a Map whose keys are all strings. */
function dictEntries(value: unknown): [string, StateValue][] | undefined {
  if (value instanceof Map) {
    const entries = [...(value as Map<unknown, StateValue>)];
    return entries.every(([key]) => typeof key === "string") ? (entries as [string, StateValue][]) : undefined;
  }
  if (typeof value !== "object" || value === null || Array.isArray(value) || ArrayBuffer.isView(value) || value instanceof Tensor) return undefined;
  const prototype = Object.getPrototypeOf(value);
  if (prototype !== Object.prototype && prototype !== null) return undefined;
  return Object.keys(value).map((key) => [key, (value as StateDict)[key]!]);
}

function describe(value: unknown): string {
  if (value === null) return "None";
  if (value instanceof Map) return "a dict with non-string keys";
  if (Array.isArray(value)) return "a list";
  if (value instanceof Uint8Array) return "bytes";
  if (typeof value === "object") return `a ${value.constructor?.name ?? "value"}`;
  return `a ${typeof value}`;
}

/**
 * Flattens a state for safetensors (see STATE_LAYOUT_KEY); throws InvalidArgumentError naming the
 * first value that safetensors cannot hold.
 */
export function flattenState(state: StateValue): FlatState {
  const root = dictEntries(state);
  if (root === undefined) throw new InvalidArgumentError(`safetensors holds a dict of tensors, not ${describe(state)}`);
  const tensors: [string, Tensor][] = [];
  const names = new Set<string>();
  let nested = false;
  const walk = (entries: [string, StateValue][], prefix: string[], depth: number): LayoutNode => {
    if (depth > MAX_LAYOUT_DEPTH) throw new InvalidArgumentError(`the state nests dicts more than ${MAX_LAYOUT_DEPTH} levels deep`);
    return entries.map(([key, value]): [string, LayoutNode] => {
      const path = [...prefix, key];
      const name = path.join(".");
      if (value instanceof Tensor) {
        if (names.has(name)) throw new InvalidArgumentError(`two tensors would both be named ${JSON.stringify(name)} in the safetensors file`);
        names.add(name);
        tensors.push([name, value]);
        return [key, 0];
      }
      if (typeof value === "string") {
        nested = true;
        return [key, value];
      }
      const inner = dictEntries(value);
      if (inner === undefined) {
        throw new InvalidArgumentError(
          `${JSON.stringify(name)} is ${describe(value)}: safetensors holds only tensors (in dicts with string keys) and strings; save training state such as optimizer state or counters as .pt`,
        );
      }
      nested = true;
      return [key, walk(inner, path, depth + 1)];
    });
  };
  const layout = walk(root, [], 0);
  return { tensors, layout: nested ? JSON.stringify(layout) : undefined };
}

function newDict(entries: [string, StateValue][]): StateDict | Map<string, StateValue> {
  if (!objectKeepsOrder(entries.map(([key]) => key))) return new Map(entries);
  const dict = Object.create(Object.prototype) as StateDict;
  for (const [key, value] of entries) setOwn(dict, key, value);
  return dict;
}

/** The paths of a layout's tensors, by their names in the file: to find where each one goes. */
export function layoutPaths(layout: string | undefined, names: readonly string[]): Map<string, string[]> {
  const paths = new Map<string, string[]>();
  if (layout === undefined) {
    for (const name of names) paths.set(name, [name]);
    return paths;
  }
  visitLayout(parseLayout(layout), [], 0, (path) => paths.set(path.join("."), path));
  return paths;
}

/**
 * Rebuilds a state from a file's tensors and its `ckpt.state` layout (or, without one, a flat
 * dict in the file's order). Every tensor of the file must have its place in the layout, once.
 */
export function unflattenState(tensors: readonly [string, Tensor][], layout: string | undefined): StateValue {
  if (layout === undefined) return newDict([...tensors]);
  const byName = new Map(tensors);
  const used = new Set<string>();
  const build = (node: LayoutNode, path: string[], depth: number): StateValue => {
    if (depth > MAX_LAYOUT_DEPTH) throw badLayout(`it nests more than ${MAX_LAYOUT_DEPTH} levels deep`);
    if (node === 0) {
      const name = path.join(".");
      const tensor = byName.get(name);
      if (tensor === undefined) throw badLayout(`it names a tensor ${JSON.stringify(name)} that the file does not have`);
      if (used.has(name)) throw badLayout(`it places tensor ${JSON.stringify(name)} twice`);
      used.add(name);
      return tensor;
    }
    if (typeof node === "string") return node;
    if (!Array.isArray(node)) throw badLayout("it holds a value that is not 0, a string or a list of pairs");
    const seen = new Set<string>();
    return newDict(
      node.map((pair): [string, StateValue] => {
        if (!Array.isArray(pair) || pair.length !== 2 || typeof pair[0] !== "string") throw badLayout("a dict entry is not a [key, value] pair");
        if (seen.has(pair[0])) throw badLayout(`a dict has the key ${JSON.stringify(pair[0])} twice`);
        seen.add(pair[0]);
        return [pair[0], build(pair[1], [...path, pair[0]], depth + 1)];
      }),
    );
  };
  const state = build(parseLayout(layout), [], 0);
  const unplaced = tensors.find(([name]) => !used.has(name));
  if (unplaced !== undefined) throw badLayout(`it has no place for tensor ${JSON.stringify(unplaced[0])}`);
  return state;
}

function parseLayout(layout: string): LayoutNode {
  let node: unknown;
  try {
    node = JSON.parse(layout);
  } catch (error) {
    throw new FormatError("SAFETENSORS_LAYOUT", `the ${STATE_LAYOUT_KEY} metadata is not valid JSON`, { cause: error });
  }
  if (!Array.isArray(node)) throw badLayout("its root is not a dict");
  return node as LayoutNode;
}

function visitLayout(node: LayoutNode, path: string[], depth: number, onTensor: (path: string[]) => void): void {
  if (depth > MAX_LAYOUT_DEPTH || !Array.isArray(node)) return;
  for (const pair of node) {
    if (!Array.isArray(pair) || typeof pair[0] !== "string") continue;
    const [key, child] = pair;
    if (child === 0) onTensor([...path, key]);
    else if (Array.isArray(child)) visitLayout(child, [...path, key], depth + 1, onTensor);
  }
}

function badLayout(what: string): FormatError {
  return new FormatError("SAFETENSORS_LAYOUT", `the ${STATE_LAYOUT_KEY} metadata does not fit the file: ${what}`);
}
