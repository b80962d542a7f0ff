import { isFloatSlot, markFloatSlot, setOwn, type StateDict, type StateValue } from "../values/py-values.js";

/** The parts of a state that one rank writes (SPEC §5, fairseq2's split). */
export interface StateParts {
  /** The model's state, for `model.pt`: set only when the model is replicated and this is dp rank 0. */
  model: StateValue | undefined;
  /** Keys equal on every dp rank, for `replicated.pt`: set only on dp rank 0, when non-empty. */
  replicated: StateDict | undefined;
  /** Everything else, for `rank_<dp>.pt`. */
  rank: StateDict;
}

/**
 * Splits a state: the model goes to `model.pt` when it is replicated (a single dp rank, or its
 * key or "*" among the replicated keys), replicated keys to `replicated.pt`, the rest to the
 * rank's own file. Only dp rank 0 writes the shared parts; other ranks just leave them out.
 */
export function splitState(state: StateDict, modelKey: string, replicatedKeys: ReadonlySet<string>, dpSize: number, dpRank: number): StateParts {
  const everything = replicatedKeys.has("*");
  const modelReplicated = dpSize === 1 || everything || replicatedKeys.has(modelKey);
  const leader = dpRank === 0;
  const replicated: StateDict = Object.create(Object.prototype) as StateDict;
  const rank: StateDict = Object.create(Object.prototype) as StateDict;
  let model: StateValue | undefined;
  for (const key of Object.keys(state)) {
    const value = state[key]!;
    if (key === modelKey && modelReplicated) {
      if (leader) model = value;
    } else if (everything || replicatedKeys.has(key)) {
      if (leader) copySlot(state, key, value, replicated);
    } else {
      copySlot(state, key, value, rank);
    }
  }
  return { model, replicated: leader && Object.keys(replicated).length > 0 ? replicated : undefined, rank };
}

/** Copies one entry, keeping its whole-float mark (the mark belongs to the container). */
function copySlot(from: StateDict, key: string, value: StateValue, to: StateDict): void {
  setOwn(to, key, value);
  if (isFloatSlot(from, key)) markFloatSlot(to, key);
}

/** Merges loaded parts back into one state, later parts winning (model, replicated, rank). */
export function mergeInto(target: StateDict, part: StateDict): void {
  for (const key of Object.keys(part)) copySlot(part, key, part[key]!, target);
}
