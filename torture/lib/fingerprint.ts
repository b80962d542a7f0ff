import { createHash, type Hash } from "node:crypto";
import { PyFloat, ShardedTensor, Tensor, isTuple, type StateValue } from "../../src/index.js";

/**
 * A hash of everything a loaded state holds (tensor dtypes, shapes and bytes, key order, tuples,
 * floats vs ints, bigints): two loads with equal fingerprints gave the same values.
 */
export function fingerprint(value: StateValue | null | undefined): string {
  const hash = createHash("sha256");
  feed(hash, value, new Set());
  return hash.digest("hex");
}

function feed(hash: Hash, value: unknown, seen: Set<object>): void {
  if (value === null || value === undefined) return void hash.update(`(${String(value)})`);
  if (typeof value === "bigint") return void hash.update(`big:${value};`);
  if (typeof value !== "object") return void hash.update(`${typeof value}:${String(value)};`);
  if (seen.has(value)) return void hash.update("(cycle)");
  seen.add(value);
  if (value instanceof Tensor) {
    hash.update(`tensor:${value.dtype}:${value.shape.join("x")}:`);
    const data = value.data;
    hash.update(new Uint8Array(data.buffer, data.byteOffset, data.byteLength));
  } else if (value instanceof ShardedTensor) {
    hash.update(`sharded:${value.globalShape.join("x")}@${value.offsets.join(",")}`);
    feed(hash, value.shard, seen);
  } else if (value instanceof PyFloat) hash.update(`float:${value.value};`);
  else if (value instanceof Uint8Array) hash.update("bytes:").update(value);
  else if (value instanceof Map) {
    hash.update("map{");
    for (const [key, item] of value) {
      feed(hash, key, seen);
      feed(hash, item, seen);
    }
    hash.update("}");
  } else if (Array.isArray(value)) {
    hash.update(isTuple(value) ? "tuple[" : "list[");
    for (const item of value) feed(hash, item, seen);
    hash.update("]");
  } else {
    hash.update(`dict:${Object.getPrototypeOf(value) === null ? "" : (value.constructor?.name ?? "")}{`);
    for (const [key, item] of Object.entries(value)) {
      hash.update(`${JSON.stringify(key)}=`);
      feed(hash, item, seen);
    }
    hash.update("}");
  }
  seen.delete(value);
}
