import { PyFloat, markFloatSlot, markTuple, objectKeepsOrder, orderedDict, setOwn, tupleKind, type StateDict } from "../../values/py-values.js";

/** The mark of a dict made by collections.OrderedDict while unpickling: its attributes, if any. */
const ORDERED = Symbol("OrderedDict");
type OrderedMark = Map<unknown, unknown> & { [ORDERED]?: Map<unknown, unknown> | undefined };

/** Marks a dict as made by collections.OrderedDict (with its attributes, if any), until finalize(). */
export function markOrdered(dict: Map<unknown, unknown>, attributes: Map<unknown, unknown> | undefined): void {
  (dict as OrderedMark)[ORDERED] = attributes;
}

export function isMarkedOrdered(dict: Map<unknown, unknown>): boolean {
  return ORDERED in dict;
}

/**
 * Turns the unpickler's working form into state values: dicts (Maps) with only string keys in an
 * order an object keeps become plain objects, whole-valued floats become numbers with a mark on
 * their container. Iterative, and each container is visited once, so sharing and cycles survive.
 */
export function finalize(root: unknown, lists: ReadonlySet<unknown[]>): unknown {
  const replacement = new Map<Map<unknown, unknown>, StateDict>();
  const containers: (unknown[] | Map<unknown, unknown>)[] = [];
  const seen = new Set<unknown>();
  const pending: unknown[] = [root];
  while (pending.length > 0) {
    const value = pending.pop();
    if (seen.has(value) || !(Array.isArray(value) || value instanceof Map)) continue;
    seen.add(value);
    containers.push(value);
    if (Array.isArray(value)) {
      for (const item of value) pending.push(item);
    } else {
      // forEach, not for…of: no [key, value] array per entry (a state dict can have thousands).
      value.forEach((item, key) => {
        pending.push(key, item);
      });
      if (ORDERED in value) pending.push((value as OrderedMark)[ORDERED]);
      if (canBeObject(value)) replacement.set(value, Object.create(Object.prototype) as StateDict);
    }
  }
  const fix = (value: unknown): unknown => (value instanceof Map ? (replacement.get(value) ?? value) : value);
  for (const container of containers) {
    if (Array.isArray(container)) {
      if (!lists.has(container) && tupleKind(container) === undefined) markTuple(container);
      for (let i = 0; i < container.length; i++) {
        const item = container[i];
        if (item instanceof PyFloat) markFloatSlot(container, i);
        container[i] = item instanceof PyFloat ? item.value : fix(item);
      }
      continue;
    }
    const object = replacement.get(container);
    const target: object = object ?? container;
    container.forEach((item, key) => {
      if (item instanceof PyFloat) markFloatSlot(target, key);
      const value = item instanceof PyFloat ? item.value : fix(item);
      if (object !== undefined) setOwn(object, key as string, value as never);
      else container.set(key, value);
    });
    if (ORDERED in container) {
      const attributes = (container as OrderedMark)[ORDERED];
      delete (container as OrderedMark)[ORDERED];
      orderedDict(target, attributes === undefined ? undefined : (fix(attributes) as StateDict));
    }
  }
  return root instanceof PyFloat ? root : fix(root);
}

function canBeObject(dict: Map<unknown, unknown>): boolean {
  for (const key of dict.keys()) if (typeof key !== "string") return false;
  return objectKeepsOrder(dict.keys() as Iterable<string>);
}
