import { isFloatSlot, markFloatSlot, setOwn, type StateDict, type StateValue } from "../values/py-values.js";
import type { StorageTotals } from "../values/state-check.js";

/**
 * The entry fairseq2 adds to a checkpoint's files to say under which key the model is: in
 * `model.pt` always, and in the rank (or replicated) part when the model is not in `model.pt`.
 * Loading removes it, so it is reserved and cannot be a key of a saved state.
 */
export const MODEL_KEY_ENTRY = "model_key";

/** fairseq2 0.4.1 and later mark their `model.pt` with `"fs2": True`: a file marker, not state. */
const FAIRSEQ2_MARKER = "fs2";

/** The parts of a state that one rank writes (SPEC §5, fairseq2 0.4's split). */
export interface StateParts {
  /** The content of `model.pt`: set only when the model is replicated and this is dp rank 0. */
  modelFile: StateDict | undefined;
  /** Keys equal on every dp rank, for `replicated.pt`: set only on dp rank 0, when non-empty. */
  replicated: StateDict | undefined;
  /** Everything else, for `rank_<dp>.pt`. */
  rank: StateDict;
}

/**
 * Splits a state as fairseq2 0.4 does: the model goes to `model.pt` as
 * `{<modelKey>: model, "model_key": <modelKey>}` when it is replicated (a single dp rank, or its
 * key or "*" among the replicated keys) and present; otherwise the rank's part carries
 * `"model_key"` so that a loader knows the model is there and never takes `model.pt` (e.g. a
 * consolidated copy) in its place. Replicated keys go to `replicated.pt`, the rest to the rank's
 * own file. Only dp rank 0 writes the shared parts; other ranks just leave them out.
 */
export function splitState(state: StateDict, modelKey: string, replicatedKeys: ReadonlySet<string>, dpSize: number, dpRank: number): StateParts {
  const everything = replicatedKeys.has("*");
  const modelToFile = (dpSize === 1 || everything || replicatedKeys.has(modelKey)) && state[modelKey] !== undefined;
  const leader = dpRank === 0;
  const replicated = emptyDict();
  const rank = emptyDict();
  let modelFile: StateDict | undefined;
  const place = (from: StateDict, key: string): void => {
    if (everything || replicatedKeys.has(key)) {
      if (leader) copySlot(from, key, replicated);
    } else {
      copySlot(from, key, rank);
    }
  };
  for (const key of Object.keys(state)) {
    if (key === modelKey && modelToFile) {
      if (leader) modelFile = modelFileContent(modelKey, state[key]!);
    } else {
      place(state, key);
    }
  }
  if (!modelToFile) place({ [MODEL_KEY_ENTRY]: modelKey }, MODEL_KEY_ENTRY);
  return { modelFile, replicated: leader && Object.keys(replicated).length > 0 ? replicated : undefined, rank };
}

/**
 * The storage totals of a part of the state: the sum of inspectState's totals under each of its
 * keys (a storage viewed under two keys counts under the first; about is enough for a dumper).
 */
export function partTotals(part: StateDict, totalsByKey: ReadonlyMap<string, StorageTotals>): StorageTotals {
  let count = 0;
  let bytes = 0;
  for (const key of Object.keys(part)) {
    const totals = totalsByKey.get(key);
    if (totals === undefined) continue;
    count += totals.count;
    bytes += totals.bytes;
  }
  return { count, bytes };
}

/** What `model.pt` holds: the model under its own key, and that key (fairseq2 0.4). */
export function modelFileContent(modelKey: string, model: StateValue): StateDict {
  const content = emptyDict();
  setOwn(content, modelKey, model);
  setOwn(content, MODEL_KEY_ENTRY, modelKey);
  return content;
}

/** A model file taken apart: the model, the key it belongs under, and any other entries. */
export interface ModelFileParts {
  modelKey: string;
  /** Undefined when the file holds no model under its key. */
  model: StateValue | undefined;
  rest: StateDict;
}

/**
 * Reads a model file's content: `{<key>: model, "model_key": <key>}` (fairseq2 0.4, and ckpt
 * now), and also `{"model": model, "model_key": <key>}`, which earlier versions of ckpt
 * wrote for a custom key. fairseq2's `"fs2"` marker is dropped.
 */
export function unwrapModelFile(content: StateDict): ModelFileParts {
  const saved = content[MODEL_KEY_ENTRY];
  const modelKey = typeof saved === "string" ? saved : "model";
  const legacy = content[modelKey] === undefined && modelKey !== "model" && content.model !== undefined;
  const source = legacy ? "model" : modelKey;
  const rest = emptyDict();
  for (const key of Object.keys(content)) {
    if (key === source || key === MODEL_KEY_ENTRY || (key === FAIRSEQ2_MARKER && content[key] === true)) continue;
    copySlot(content, key, rest);
  }
  return { modelKey, model: content[source], rest };
}

/**
 * The model key a loaded rank/replicated part names (fairseq2 writes it there when the model is
 * not in `model.pt`), or undefined.
 */
export function namedModelKey(state: StateDict): string | undefined {
  const key = state[MODEL_KEY_ENTRY];
  return typeof key === "string" ? key : undefined;
}

/** Removes the `model_key` entry from a merged state: it describes the files, not the state. */
export function dropModelKeyEntry(state: StateDict): void {
  delete state[MODEL_KEY_ENTRY];
}

function emptyDict(): StateDict {
  return Object.create(Object.prototype) as StateDict;
}

/** Copies one entry, keeping its whole-float mark (the mark belongs to the container). */
function copySlot(from: StateDict, key: string, to: StateDict): void {
  setOwn(to, key, from[key]!);
  if (isFloatSlot(from, key)) markFloatSlot(to, key);
}

/** Merges loaded parts into one state, later parts winning (fairseq2: rank, replicated, model). */
export function mergeInto(target: StateDict, part: StateDict): void {
  for (const key of Object.keys(part)) copySlot(part, key, target);
}
