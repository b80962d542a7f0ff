import { PyFloat, Tensor, type StateDict, type StateValue } from "../src/index.js";

/** Values in a form isDeepStrictEqual compares: tensors as dtype, shape and elements; Python floats as numbers. */
export function plainValues(value: StateValue | StateDict): unknown {
  if (value instanceof Tensor) return { dtype: value.dtype, shape: [...value.shape], data: Array.from(value.data as ArrayLike<number>) };
  if (value instanceof PyFloat) return value.value;
  if (value instanceof Map) return new Map([...value].map(([k, v]) => [k, plainValues(v as StateValue)]));
  if (Array.isArray(value)) return value.map((v) => plainValues(v as StateValue));
  if (value !== null && typeof value === "object") return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, plainValues(v as StateValue)]));
  return value;
}

/** A small deterministic generator (mulberry32): every random choice of a class comes from its seed. */
export function seededRandom(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
