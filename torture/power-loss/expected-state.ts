import { Tensor, type StateDict } from "../../src/index.js";

/** The state saved as version `version` of step `stepNr`: every value tells which save wrote it. */
export function expectedState(stepNr: number, version: number): StateDict {
  const base = stepNr * 1000 + version * 100;
  return {
    model: {
      // 9 KiB: past a few 4 KiB blocks, so a run with direct writes of that block size has some.
      weight: Tensor.from(Float32Array.from({ length: 48 * 48 }, (_, i) => base + i), { shape: [48, 48] }),
      bias: Tensor.from(new Float64Array([base + 0.5, -base])),
    },
    optimizer: { lr: 0.001 * version, moments: Tensor.from(Float32Array.from({ length: 16 }, (_, i) => base - i)) },
    step: stepNr,
    version,
  };
}
