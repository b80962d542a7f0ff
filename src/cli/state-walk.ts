import { PyDType, PyFloat, ShardedTensor, Tensor, isTuple, type StateValue } from "../index.js";
import { pathText, type PathKey } from "./key-path.js";
import { CliError } from "./output.js";

/**
 * Walking a loaded state for `inspect`, `diff` and `convert`, safely against hostile files. A
 * small pickle can describe a huge tree (each level's list holding the level below ten times:
 * 10^10 paths from 500 bytes) or a very deep one (lists 200,000 levels deep), though the loader
 * builds both in little memory. So the walk uses its own stack (never the call stack), visits a
 * container seen before only once (later places are reported as shared), stops descending at
 * MAX_SHOWN_DEPTH, and stops with an error after a number of entries bounded by the file's size.
 */

/** Levels shown below the root; deeper ones are summarized (honest states nest a few levels). */
export const MAX_SHOWN_DEPTH = 100;
/**
 * Entries (keys, items, values) a walk may visit per byte of the file. Each entry of an honest
 * state costs at least one byte of pickle (or of safetensors header), and a container referenced
 * again costs one entry, so only a file built to exhaust time and memory goes past this.
 */
export const WALK_ENTRIES_PER_FILE_BYTE = 2;
/** Entries every walk may visit, however small the file. */
export const MIN_WALK_ENTRIES = 100_000;

export type ContainerType = "dict" | "list" | "tuple";

/** A place in the state: its key in its parent, and an id equal for equal paths (see PathIds). */
export interface WalkNode {
  parent: WalkNode | undefined;
  key: PathKey;
  id: number;
  depth: number;
}

export type WalkEvent =
  /** A tensor, a scalar, bytes, or a list of scalars (shown whole on one line). */
  | { kind: "leaf"; node: WalkNode; value: StateValue; container: object | undefined; slot: unknown }
  /** A dict or a list of containers, about to be walked into. */
  | { kind: "container"; node: WalkNode; value: StateValue; type: ContainerType; size: number }
  /** A container already walked at `first`: the same object, not walked again. */
  | { kind: "shared"; node: WalkNode; value: StateValue; type: ContainerType; first: WalkNode }
  /** A non-empty container at MAX_SHOWN_DEPTH: not walked into. */
  | { kind: "deep"; node: WalkNode; value: StateValue; type: ContainerType };

/**
 * Gives each path an id, the same for the same keys from the root (a str key "0" and an int key 0
 * differ). Two states walked with one PathIds get equal ids for equal paths, which `diff` pairs up.
 */
export class PathIds {
  private readonly keyIds = new Map<PathKey, number>();
  private readonly ids = new Map<string, number>();

  id(parent: number, key: PathKey): number {
    let keyId = this.keyIds.get(key);
    if (keyId === undefined) this.keyIds.set(key, (keyId = this.keyIds.size));
    const pair = `${parent},${keyId}`;
    let id = this.ids.get(pair);
    if (id === undefined) this.ids.set(pair, (id = this.ids.size + 1));
    return id;
  }
}

/** The keys from the root to `node`. */
export function keysOf(node: WalkNode): PathKey[] {
  const keys: PathKey[] = [];
  for (let at: WalkNode | undefined = node; at?.parent !== undefined; at = at.parent) keys.push(at.key);
  return keys.reverse();
}

export function nodePath(node: WalkNode): string {
  return pathText(keysOf(node));
}

/** The children of a container with their keys; undefined for anything else. */
export function childrenOf(value: StateValue): [PathKey, StateValue][] | undefined {
  if (value instanceof Tensor || value instanceof ShardedTensor || value instanceof Uint8Array || value instanceof PyFloat || value instanceof PyDType) return undefined;
  if (value instanceof Map) return [...value];
  if (Array.isArray(value)) return value.map((item, i) => [i, item]);
  if (typeof value === "object" && value !== null) return Object.keys(value).map((key) => [key, value[key]!]);
  return undefined;
}

export function containerType(value: StateValue): ContainerType {
  return Array.isArray(value) ? (isTuple(value) ? "tuple" : "list") : "dict";
}

/** A list or tuple of plain values, shown on one line. */
export function isScalarList(value: StateValue): boolean {
  return Array.isArray(value) && value.every((item) => !(item instanceof Tensor || item instanceof ShardedTensor) && childrenOf(item) === undefined);
}

/** The entries a walk of a state read from a file of `fileSize` bytes may visit. */
export function walkBudget(fileSize: number): number {
  return Math.max(MIN_WALK_ENTRIES, WALK_ENTRIES_PER_FILE_BYTE * fileSize);
}

export interface WalkOptions {
  /** Names the file in errors. */
  what: string;
  /** See walkBudget. */
  budget: number;
  ids?: PathIds;
}

/**
 * Visits every place of a state in order (a container before its children, children in their
 * order), without recursion. The root itself is reported only when it is not a container.
 */
export function walkState(state: StateValue, options: WalkOptions, visit: (event: WalkEvent) => void): void {
  const ids = options.ids ?? new PathIds();
  const root: WalkNode = { parent: undefined, key: null, id: 0, depth: 0 };
  const seen = new Map<object, WalkNode>();
  let visited = 0;
  const pending: { value: StateValue; node: WalkNode; container: object | undefined }[] = [{ value: state, node: root, container: undefined }];
  const charge = (entries: number): void => {
    visited += entries;
    if (visited > options.budget) {
      throw new CliError(
        `${options.what}: its state has more than ${options.budget} entries, more than a file of its size can hold (${WALK_ENTRIES_PER_FILE_BYTE} per byte): ` +
          "it looks built to exhaust time and memory; ckpt stops here",
      );
    }
  };
  while (pending.length > 0) {
    const { value, node, container } = pending.pop()!;
    charge(1);
    // A container seen before is found before its children are listed: a shared one costs one entry.
    const first = typeof value === "object" && value !== null ? seen.get(value) : undefined;
    if (first !== undefined) {
      visit({ kind: "shared", node, value, type: containerType(value), first });
      continue;
    }
    if (isScalarList(value)) {
      // Not tracked as shared (a tuple of betas is shared by every param group); its items are paid for.
      charge((value as StateValue[]).length);
      visit({ kind: "leaf", node, value, container, slot: node.key });
      continue;
    }
    const children = childrenOf(value);
    if (children === undefined) {
      visit({ kind: "leaf", node, value, container, slot: node.key });
      continue;
    }
    const type = containerType(value);
    seen.set(value as object, node);
    if (node.depth >= MAX_SHOWN_DEPTH && children.length > 0) {
      visit({ kind: "deep", node, value, type });
      continue;
    }
    if (node !== root) visit({ kind: "container", node, value, type, size: children.length });
    for (let i = children.length - 1; i >= 0; i--) {
      const [key, child] = children[i]!;
      pending.push({ value: child, node: { parent: node, key, id: ids.id(node.id, key), depth: node.depth + 1 }, container: value as object });
    }
  }
}
