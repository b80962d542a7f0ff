import { keepShape } from "../../keep-shapes.js";

/** A memo value built only when read: the rebuild fast path's intermediate tuples (rebuild-fast-path.ts). */
export interface DeferredValue {
  /** Builds (once; later calls give the same object) the value of one `kind` (never 0). */
  materialize(kind: number): unknown;
}

/** What `PickleMemo.get` gives for an index never written. */
export const MISSING: unique symbol = Symbol("missing");

/**
 * The unpickler's memo (PUT/GET). Indices are dense from 0 in what picklers write (an array);
 * others go to a Map. A dense entry may hold a deferred value, built on its first read: a load of
 * PyTorch's files memoizes four tuples and a dict per tensor that nothing reads again, and keeping
 * them all alive to the end made garbage collection the largest cost of a load.
 */
export class PickleMemo {
  private readonly dense: unknown[] = [];
  /** Parallel to `dense`: 0 for a plain value, else the kind of the DeferredValue held there. */
  private readonly kinds: number[] = [];
  private readonly sparse = new Map<number, unknown>();

  get size(): number {
    return this.dense.length + this.sparse.size;
  }

  put(index: number, value: unknown): void {
    this.store(index, value, 0);
  }

  /** As `put`, for a value built on its first read; a sparse index builds it now. */
  putDeferred(index: number, deferred: DeferredValue, kind: number): void {
    this.store(index, deferred, kind);
  }

  get(index: number): unknown {
    if (index < this.dense.length) {
      const kind = this.kinds[index]!;
      if (kind === 0) return this.dense[index];
      const value = (this.dense[index] as DeferredValue).materialize(kind);
      this.dense[index] = value;
      this.kinds[index] = 0;
      return value;
    }
    return this.sparse.has(index) ? this.sparse.get(index) : MISSING;
  }

  private store(index: number, value: unknown, kind: number): void {
    if (index < this.dense.length) {
      this.dense[index] = value;
      this.kinds[index] = kind;
    } else if (index === this.dense.length && !this.sparse.has(index)) {
      this.dense.push(value);
      this.kinds.push(kind);
    } else {
      this.sparse.set(index, kind === 0 ? value : (value as DeferredValue).materialize(kind));
    }
  }

  static {
    keepShape(new PickleMemo());
  }
}
