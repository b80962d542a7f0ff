import { checkInPlaceTarget } from "../../tensor/in-place-target.js";
import type { Storage } from "../../tensor/storage.js";
import { Tensor } from "../../tensor/tensor.js";
import { formatKeyPath } from "../../values/key-path.js";
import type { StateValue } from "../../values/py-values.js";

/** What `matchTargets` found: the state to return, storages to read into targets, views to copy. */
export interface MatchedTargets {
  result: StateValue;
  /** Storages read straight into a target's bytes. */
  targets: Map<Storage, Uint8Array>;
  /** File tensors (views) whose elements are copied into their targets once read. */
  copies: [Tensor, Tensor][];
}

/**
 * Pairs each file tensor with the tensor at the same path in `into`, and puts the target in the
 * result in its place. A file tensor that alone covers its storage is read straight into its
 * target; one that is a view (tied weights, an offset, strides) is read as usual and copied into
 * its target afterwards. A target of another dtype or shape, or one that is not contiguous, is an
 * InvalidArgumentError naming its path, thrown before any tensor is written. Walks both trees side
 * by side without recursion, and without an array or closure per tensor (a state of many small
 * tensors made this walk cost more than the load it saved).
 */
export function matchTargets(state: StateValue, into: StateValue): MatchedTargets {
  const users = countStorageUsers(state);
  const targets = new Map<Storage, Uint8Array>();
  const copies: [Tensor, Tensor][] = [];
  const replace = (file: Tensor, target: unknown, pair: Pair | undefined, segment: unknown): Tensor | undefined => {
    if (!(target instanceof Tensor) || target.storage === file.storage) return undefined;
    if (!fitsInPlace(target, file)) checkInPlaceTarget(target, file, () => (pair === undefined ? "into" : pathOf(pair, segment)));
    const wholeStorage = users.get(file.storage) === 1 && file.offset === 0 && file.isContiguous && file.numel === file.storage.numel;
    if (wholeStorage && !targets.has(file.storage)) targets.set(file.storage, bytesOf(target));
    else copies.push([file, target]);
    return target;
  };
  if (state instanceof Tensor) return { result: replace(state, into, undefined, undefined) ?? state, targets, copies };

  const pending: Pair[] = [{ file: state, target: into, parent: undefined, segment: undefined }];
  const seen = new Set<unknown>();
  while (pending.length > 0) {
    const pair = pending.pop()!;
    const { file, target } = pair;
    if (typeof file !== "object" || file === null || seen.has(file) || typeof target !== "object" || target === null) continue;
    seen.add(file);
    const visit = (key: unknown, child: unknown): void => {
      const targetChild = childOf(target, key);
      if (child instanceof Tensor) {
        const replacement = replace(child, targetChild, pair, key);
        if (replacement !== undefined) setChild(file, key, replacement);
      } else {
        pending.push({ file: child, target: targetChild, parent: pair, segment: key });
      }
    };
    forEachChild(file, visit);
  }
  return { result: state, targets, copies };
}

interface Pair {
  file: unknown;
  target: unknown;
  parent: Pair | undefined;
  segment: unknown;
}

function pathOf(pair: Pair, segment: unknown): string {
  const segments = [segment];
  for (let at: Pair | undefined = pair; at?.parent !== undefined; at = at.parent) segments.push(at.segment);
  return formatKeyPath("into", segments.reverse());
}

/** How many tensors (each place one appears) view each storage. */
function countStorageUsers(state: StateValue): Map<Storage, number> {
  const users = new Map<Storage, number>();
  const seen = new Set<unknown>();
  const pending: unknown[] = [state];
  const visit = (_key: unknown, child: unknown): void => {
    pending.push(child);
  };
  while (pending.length > 0) {
    const item = pending.pop();
    if (item instanceof Tensor) users.set(item.storage, (users.get(item.storage) ?? 0) + 1);
    else if (typeof item === "object" && item !== null && !seen.has(item)) {
      seen.add(item);
      forEachChild(item, visit);
    }
  }
  return users;
}

/** What checkInPlaceTarget accepts, checked without building its message's closure. */
function fitsInPlace(target: Tensor, file: Tensor): boolean {
  if (target.dtype !== file.dtype || target.shape.length !== file.shape.length) return false;
  for (let d = 0; d < file.shape.length; d++) if (target.shape[d] !== file.shape[d]) return false;
  return target.isContiguous;
}

/** A contiguous target's bytes: its storage's own when it covers it whole (no new view per tensor). */
function bytesOf(target: Tensor): Uint8Array {
  return target.offset === 0 && target.numel === target.storage.numel ? target.storage.bytes : target.bytes;
}

/** Calls `visit` with each child of a container in order (dict entries, list items, object keys). */
function forEachChild(container: object, visit: (key: unknown, child: unknown) => void): void {
  if (container instanceof Tensor || ArrayBuffer.isView(container)) return;
  if (container instanceof Map) {
    container.forEach((child, key) => visit(key, child));
  } else if (Array.isArray(container)) {
    for (let i = 0; i < container.length; i++) visit(i, container[i]);
  } else {
    const record = container as Record<string, unknown>;
    for (const key of Object.keys(record)) visit(key, record[key]);
  }
}

function childOf(container: object, key: unknown): unknown {
  if (container instanceof Map) return container.get(key);
  if (Array.isArray(container)) return container[key as number];
  if (container instanceof Tensor || ArrayBuffer.isView(container)) return undefined;
  return Object.hasOwn(container, key as string) ? (container as Record<string, unknown>)[key as string] : undefined;
}

function setChild(container: object, key: unknown, value: unknown): void {
  if (container instanceof Map) container.set(key, value);
  else (container as Record<string | number, unknown>)[key as string | number] = value;
}
