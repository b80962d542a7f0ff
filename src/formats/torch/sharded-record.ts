import { ShardedTensor } from "../../tensor/sharded-tensor.js";
import { Tensor } from "../../tensor/tensor.js";
import { tuple, type StateDict } from "../../values/py-values.js";

/**
 * How a ShardedTensor is pickled: a plain dict that `torch.load` reads without any class of ours,
 * `{"__ckpt__": "ShardedTensor", "shard": <tensor>, "global_shape": (…), "offsets": (…)}`.
 * Loading here turns such a dict back into a ShardedTensor.
 */
export const SHARDED_MARKER_KEY = "__ckpt__";
const SHARDED_MARKER = "ShardedTensor";
const MARKER_BYTES = new TextEncoder().encode(SHARDED_MARKER_KEY);

export function shardedRecord(value: ShardedTensor): StateDict {
  return { [SHARDED_MARKER_KEY]: SHARDED_MARKER, shard: value.shard, global_shape: tuple(...value.globalShape), offsets: tuple(...value.offsets) };
}

/** Whether a pickle may hold sharded records (so the revival walk is skipped for the others). */
export function mayHoldShardedRecords(pickle: Uint8Array): boolean {
  return Buffer.from(pickle.buffer, pickle.byteOffset, pickle.byteLength).indexOf(MARKER_BYTES) >= 0;
}

function asShardedTensor(value: unknown): ShardedTensor | undefined {
  if (typeof value !== "object" || value === null) return undefined;
  const prototype = Object.getPrototypeOf(value);
  if (prototype !== Object.prototype && prototype !== null) return undefined;
  const record = value as Record<string, unknown>;
  if (record[SHARDED_MARKER_KEY] !== SHARDED_MARKER || !(record.shard instanceof Tensor)) return undefined;
  const { global_shape: globalShape, offsets } = record;
  if (!Array.isArray(globalShape) || !Array.isArray(offsets)) return undefined;
  return new ShardedTensor(record.shard, { globalShape: globalShape as number[], offsets: offsets as number[] });
}

/** Replaces sharded records in `root` by ShardedTensors, walking without recursion. */
export function reviveShardedTensors(root: unknown): unknown {
  const top = asShardedTensor(root);
  if (top !== undefined) return top;
  const seen = new Set<object>();
  const pending: unknown[] = [root];
  while (pending.length > 0) {
    const container = pending.pop();
    if (typeof container !== "object" || container === null || container instanceof Tensor || ArrayBuffer.isView(container) || seen.has(container)) continue;
    seen.add(container);
    const visit = (child: unknown, put: (revived: ShardedTensor) => void): void => {
      const revived = asShardedTensor(child);
      if (revived !== undefined) put(revived);
      else pending.push(child);
    };
    if (container instanceof Map) for (const [key, child] of container) visit(child, (revived) => container.set(key, revived));
    else if (Array.isArray(container)) container.forEach((child, i) => visit(child, (revived) => (container[i] = revived)));
    else for (const [key, child] of Object.entries(container)) visit(child, (revived) => ((container as Record<string, unknown>)[key] = revived));
  }
  return root;
}
