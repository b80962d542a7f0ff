import type { StateValue } from "../values/py-values.js";

/** Reads a state from a tensor file (fairseq2's TensorLoader). */
export interface TensorLoader {
  load(path: string): Promise<StateValue>;
}

/** Writes a state to a tensor file; the file appears whole or not at all (fairseq2's TensorDumper). */
export interface TensorDumper {
  dump(state: StateValue, path: string): Promise<void>;
}
