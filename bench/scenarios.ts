// The states the benchmark saves and loads. The same description (as JSON) drives the Node worker
// and the Python peer, so both handle tensors of the same sizes in the same structure.
import { PyFloat, Tensor, tuple, type StateDict, type StateValue } from "./library.js";

export interface ParameterSpec {
  name: string;
  shape: number[];
}

/** One state: model parameters, optionally with torch.optim.Adam's two moments for each. */
export interface ScenarioSpec {
  id: string;
  title: string;
  parameters: ParameterSpec[];
  /** Add `optimizer` as Adam's state_dict: exp_avg and exp_avg_sq per parameter. */
  adam: boolean;
}

const FLOAT32_BYTES = 4;

function numel(shape: readonly number[]): number {
  return shape.reduce((a, b) => a * b, 1);
}

/** A transformer-like model: an embedding and 16 layers of a weight matrix and a bias (33 parameters). */
function trainingParameters(width: number, embeddingRows: number, layerRows: number): ParameterSpec[] {
  const parameters: ParameterSpec[] = [{ name: "embed.weight", shape: [embeddingRows, width] }];
  for (let i = 0; i < 16; i++) {
    parameters.push({ name: `layers.${i}.weight`, shape: [layerRows, width] }, { name: `layers.${i}.bias`, shape: [width] });
  }
  return parameters;
}

function smallParameters(count: number, elements: number): ParameterSpec[] {
  return Array.from({ length: count }, (_, i) => ({ name: `params.${i}`, shape: [elements] }));
}

/** Scenario (a) and (b); `quick` shrinks them for a smoke run. */
export function scenarios(quick: boolean): ScenarioSpec[] {
  // Full: 33 × 3 tensors of 1,073,725,440 bytes, 16 KiB short of 1 GiB (it does not divide by 12).
  // Quick: exactly 48 MiB.
  const training = quick ? trainingParameters(512, 496, 480) : trainingParameters(2048, 2714, 2560);
  const small = quick ? smallParameters(2000, 1024) : smallParameters(20_000, 1024);
  const specs: ScenarioSpec[] = [
    { id: "a", title: "", parameters: training, adam: true },
    { id: "b", title: "", parameters: small, adam: false },
  ];
  const a = specs[0]!;
  const b = specs[1]!;
  a.title = `fp32 training state: ${a.parameters.length} parameters + 2 Adam moments = ${tensorCount(a)} tensors, ${formatBytes(stateBytes(a))}`;
  b.title = `${tensorCount(b).toLocaleString("en-US")} small tensors of ${formatBytes(numel(b.parameters[0]!.shape) * FLOAT32_BYTES)}, ${formatBytes(stateBytes(b))}`;
  return specs;
}

/** A few small tensors in the same structure, to warm up code paths before measuring. */
export function warmUpSpec(): ScenarioSpec {
  return { id: "warm-up", title: "warm-up", parameters: trainingParameters(64, 8, 8), adam: true };
}

export function tensorCount(spec: ScenarioSpec): number {
  return spec.parameters.length * (spec.adam ? 3 : 1);
}

/** Bytes of tensor data in the state (the file adds a little metadata). */
export function stateBytes(spec: ScenarioSpec): number {
  const parameterBytes = spec.parameters.reduce((sum, p) => sum + numel(p.shape) * FLOAT32_BYTES, 0);
  return parameterBytes * (spec.adam ? 3 : 1);
}

export interface BuiltState {
  state: StateDict;
  /** Every tensor's bytes, in the order a plain write puts them. */
  buffers: Uint8Array[];
}

/**
 * Builds the state with every buffer written once, so the first touch of fresh memory is not
 * counted in what is measured afterwards. Laid out as PyTorch's state dicts are:
 * `{ model: {name: tensor}, optimizer: {state: {0: {step, exp_avg, exp_avg_sq}}, param_groups}, step_nr }`.
 */
export function buildState(spec: ScenarioSpec): BuiltState {
  const buffers: Uint8Array[] = [];
  let seed = 0;
  const tensor = (shape: number[]): Tensor => {
    const data = new Float32Array(numel(shape)).fill(++seed * 1e-3);
    buffers.push(new Uint8Array(data.buffer, data.byteOffset, data.byteLength));
    return Tensor.from(data, { shape });
  };
  const model: StateDict = {};
  for (const p of spec.parameters) model[p.name] = tensor(p.shape);
  const state: StateDict = { model };
  if (spec.adam) {
    const perParameter = new Map<number, StateValue>();
    spec.parameters.forEach((p, i) => {
      perParameter.set(i, { step: new PyFloat(1000), exp_avg: tensor(p.shape), exp_avg_sq: tensor(p.shape) });
    });
    const group: StateDict = {
      lr: 0.001,
      betas: tuple(0.9, 0.999),
      eps: 1e-8,
      weight_decay: new PyFloat(0),
      amsgrad: false,
      params: spec.parameters.map((_, i) => i),
    };
    state.optimizer = { state: perParameter, param_groups: [group] };
  }
  state.step_nr = 1000;
  return { state, buffers };
}

/** Every tensor in a state, each once, in no particular order. */
export function collectTensors(value: StateValue): Set<Tensor> {
  const tensors = new Set<Tensor>();
  const seen = new Set<unknown>();
  const pending: unknown[] = [value];
  while (pending.length > 0) {
    const item = pending.pop();
    if (item instanceof Tensor) tensors.add(item);
    else if (typeof item === "object" && item !== null && !ArrayBuffer.isView(item) && !seen.has(item)) {
      seen.add(item);
      pending.push(...(item instanceof Map ? item.values() : Array.isArray(item) ? item : Object.values(item)));
    }
  }
  return tensors;
}

/** Tensor bytes in a loaded state, to check a load really produced all of it. */
export function countTensorBytes(value: StateValue): number {
  if (value instanceof Tensor) return value.byteLength;
  if (Array.isArray(value)) return value.reduce<number>((sum, item) => sum + countTensorBytes(item), 0);
  if (value instanceof Map) {
    let sum = 0;
    for (const item of value.values()) sum += countTensorBytes(item);
    return sum;
  }
  const prototype: unknown = typeof value === "object" && value !== null ? Object.getPrototypeOf(value) : undefined;
  if (prototype === Object.prototype || prototype === null) {
    return Object.values(value as StateDict).reduce<number>((sum, item) => sum + countTensorBytes(item), 0);
  }
  return 0;
}

export function formatBytes(bytes: number): string {
  const units: [number, string][] = [
    [2 ** 30, "GiB"],
    [2 ** 20, "MiB"],
    [2 ** 10, "KiB"],
  ];
  for (const [size, unit] of units) {
    if (bytes >= size) {
      const value = bytes / size;
      return `${Number.isInteger(value) ? value : value.toFixed(2)} ${unit}`;
    }
  }
  return `${bytes} B`;
}
