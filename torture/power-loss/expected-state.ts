import { Tensor, type StateDict } from "../../src/index.js";

/** The state saved as version `version` of step `stepNr`: every value tells which save wrote it. */
export function expectedState(stepNr: number, version: number): StateDict {
  const base = stepNr * 1000 + version * 100;
  return {
    model: {
      weight: Tensor.from(Float32Array.from({ length: 64 }, (_, i) => base + i), { shape: [8, 8] }),
      bias: Tensor.from(new Float64Array([base + 0.5, -base])),
    },
    optimizer: { lr: 0.001 * version, moments: Tensor.from(Float32Array.from({ length: 16 }, (_, i) => base - i)) },
    step: stepNr,
    version,
  };
}
