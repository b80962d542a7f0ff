import { InvalidArgumentError } from "../errors.js";
import { StateWalk, type ObjectKeys, type StorageTotals, type UnsaveableError } from "./state-walk.js";

export { MAX_NESTING, type ObjectKeys, type StorageTotals, type UnsaveableError, type UnsaveableKind } from "./state-walk.js";

/**
 * Checks that `value` can be saved and loaded back (here and by `torch.load`), without writing
 * anything, and throws an InvalidArgumentError (or what `toError` makes) naming the key path of
 * the first value that cannot (see `formatKeyPath`), e.g.
 * `state.optimizer.state[3].exp_avg: undefined cannot be saved in a state (…)`. The rules:
 *
 * - values: tensors and ShardedTensors, numbers, bigints (up to 255 bytes), strings (valid Unicode), booleans, null,
 *   `Uint8Array` bytes, `PyFloat`, `PyDType` of a torch dtype name, and containers of them:
 *   arrays and tuples, plain objects, Maps, nested at most `MAX_NESTING` deep; a tuple may not
 *   contain itself (Python cannot build one). OrderedDict attributes are checked as values too.
 * - Map keys: strings, numbers, bigints, booleans, null, `PyFloat`, and tuples of these. Arrays
 *   (Python lists), objects, tensors and bytes are refused: Python cannot hash the first two, and
 *   the others would load as objects a Map compares by identity, so no key could be found again.
 *   Two keys that are one key in Python (`1`, `1n`, `true`, `new PyFloat(1)`; equal tuples) are
 *   refused, since the loaded dict would keep only one of them.
 *
 * Walks each container once, iteratively, allocating per container, never per tensor.
 *
 * @example
 * checkStateValue({ lr: 0.1, extra: undefined }, "state"); // throws: state.extra: undefined cannot be saved …
 */
export function checkStateValue(value: unknown, root = "state", toError: UnsaveableError = (message) => new InvalidArgumentError(message)): void {
  new StateWalk(root, toError).run(value);
}

/**
 * As checkStateValue, and returns the keys of the state's large objects (see ObjectKeys) and the
 * totals of its storages: what an archive writer needs before its first byte.
 */
export function checkStateForArchive(value: unknown, root: string, toError: UnsaveableError): { objectKeys: ObjectKeys; totals: StorageTotals } {
  const walk = new StateWalk(root, toError, true);
  walk.run(value);
  return { objectKeys: walk.objectKeys, totals: { count: walk.storageCount, bytes: walk.storageBytes } };
}

/** The InvalidArgumentError `checkStateValue` would throw for `value`, or undefined when it can be saved. */
export function findUnsaveable(value: unknown, root = "state"): InvalidArgumentError | undefined {
  try {
    checkStateValue(value, root);
    return undefined;
  } catch (error) {
    if (error instanceof InvalidArgumentError) return error;
    throw error;
  }
}

/** What inspectState finds in a state that can be saved. */
export interface StateInspection {
  unsaveable?: undefined;
  /** The bytes of its tensors' storages, each storage counted once. */
  storageBytes: number;
  /** The keys of its large objects (see ObjectKeys). */
  objectKeys: ObjectKeys;
  /**
   * For a plain object, the storage totals under each of its keys: a storage met under two keys
   * counts under the first. Summed over the keys a file holds, they are that file's totals.
   */
  totalsByKey: ReadonlyMap<string, StorageTotals>;
}

/**
 * As findUnsaveable, and when the state can be saved, the bytes of its tensors' storages, each
 * storage counted once (views share one; as free-space.ts `storageBytes` counts them), and the
 * totals under each top-level key: a save checks and sizes its state, and each of its files, in
 * one walk.
 */
export function inspectState(value: unknown, root = "state"): { unsaveable: InvalidArgumentError; storageBytes?: undefined; objectKeys?: undefined; totalsByKey?: undefined } | StateInspection {
  const walk = new StateWalk(root, (message) => new InvalidArgumentError(message), true, true);
  try {
    walk.run(value);
    return { storageBytes: walk.storageBytes, objectKeys: walk.objectKeys, totalsByKey: walk.totalsByKey };
  } catch (error) {
    if (error instanceof InvalidArgumentError) return { unsaveable: error };
    throw error;
  }
}

