import * as tf from "@tensorflow/tfjs";
import { InvalidArgumentError } from "../errors.js";
import { Tensor } from "../tensor/tensor.js";
import { PyFloat, tuple, type StateDict, type StateKey, type StateValue } from "../values/py-values.js";
import { modelWeights, type ModelWeight } from "./model-state.js";
import { fromTfjs, toTfjs } from "./tfjs-tensors.js";
import { toTfjsLayout, toTorchLayout, torchShape } from "./weight-layout.js";

/** PyTorch's names for each tfjs optimizer's per-parameter slots, in tfjs's `getWeights` order. */
const SLOT_NAMES: Record<string, string[]> = {
  Adam: ["exp_avg", "exp_avg_sq"],
  Momentum: ["momentum_buffer"],
  RMSProp: ["square_avg", "momentum_buffer", "grad_avg"],
  Adagrad: ["sum"],
  Adadelta: ["square_avg", "acc_delta"],
  SGD: [],
};

/**
 * Scalars some optimizers keep outside `getWeights` and would otherwise recompute on restore with
 * a different rounding (Adam recomputes beta^t with pow instead of the running product), which
 * would make a resumed run drift from an uninterrupted one.
 */
const HIDDEN_SCALARS = ["accBeta1", "accBeta2"] as const;

type OptimizerInternals = tf.Optimizer & Partial<Record<(typeof HIDDEN_SCALARS)[number], tf.Variable>>;

/**
 * A snapshot of a tfjs optimizer's state shaped like a PyTorch optimizer's `state_dict()`:
 * `state` maps parameter indices (ints) to `{ step, exp_avg, ... }` in PyTorch layouts,
 * `param_groups` holds the hyperparameters. A `tfjs` entry keeps what only tfjs needs back.
 */
export async function captureOptimizerState(optimizer: tf.Optimizer, model: tf.LayersModel): Promise<StateDict> {
  const params = trainableWeights(model);
  const [iterations, ...slots] = await optimizerWeights(optimizer);
  if (iterations === undefined) throw new InvalidArgumentError(`${optimizer.getClassName()}.getWeights() returned nothing`);
  const step = Number(iterations.tensor.dataSync()[0]);
  const perParam = slotsPerParam(optimizer, slots.length, params.length);
  const names = slotNames(optimizer, perParam);

  const state = new Map<number, StateValue>();
  if (perParam > 0) {
    params.forEach((param, i) => {
      // PyTorch keeps Adam's per-parameter step as a 0-dim float32 tensor; other optimizers have none.
      const entry: StateDict = optimizer.getClassName() === "Adam" ? { step: Tensor.from(new Float32Array([step]), { shape: [] }) } : { step };
      names.forEach((name, j) => {
        const slot = slots[j * params.length + i]!.tensor;
        checkShape(slot.shape, param, `${optimizer.getClassName()} slot ${name}`);
        entry[name] = toTorchLayout(fromTfjs(slot), param.layout);
      });
      state.set(i, entry);
    });
  }
  const tfjsExtra: StateDict = { class_name: optimizer.getClassName(), iterations: step };
  const internals = optimizer as OptimizerInternals;
  for (const name of HIDDEN_SCALARS) {
    const variable = internals[name];
    if (variable instanceof tf.Variable) tfjsExtra[name] = fromTfjs(variable);
  }
  return { state, param_groups: [paramGroup(optimizer, params.length)], tfjs: tfjsExtra };
}

/**
 * Restores a state made by captureOptimizerState, by parameter position, checking every slot's
 * presence and shape before the optimizer is touched.
 */
export async function restoreOptimizerState(optimizer: tf.Optimizer, model: tf.LayersModel, saved: StateDict): Promise<void> {
  const params = trainableWeights(model);
  const className = optimizer.getClassName();
  const extra = saved.tfjs as StateDict | undefined;
  if (extra?.class_name !== className) {
    throw new InvalidArgumentError(`the state is of a ${String(extra?.class_name)} optimizer, not ${className}`);
  }
  const state = perParameterState(saved.state);
  const step = extra.iterations;
  if (typeof step !== "number") throw new InvalidArgumentError("the optimizer state has no iteration count");
  if (state.size > 0 && state.size !== params.length) throw new InvalidArgumentError(`the optimizer state has ${state.size} parameters, the model ${params.length}`);

  const names = state.size === 0 ? [] : slotNamesOf(optimizer);
  const slots = names.map((name) =>
    params.map((param, i) => {
      const entry = state.get(i);
      const slot = typeof entry === "object" && entry !== null ? (entry as StateDict)[name] : undefined;
      if (!(slot instanceof Tensor)) throw new InvalidArgumentError(`the ${className} state of parameter ${i} (${param.key}) has no ${name}`);
      // Compared in PyTorch's layout, the one the state is in, before any permutation.
      const needed = torchShape(param.variable.shape, param.layout);
      if (slot.shape.length !== needed.length || slot.shape.some((size, d) => size !== needed[d])) {
        throw new InvalidArgumentError(`the ${className} ${name} of parameter ${i} (${param.key}) has shape [${slot.shape.join(", ")}] but the model needs [${needed.join(", ")}]`);
      }
      return slot;
    }),
  );
  // A slot this optimizer does not keep (a centered RMSProp's grad_avg given to one that is not)
  // would shift every slot after it in tfjs's flat list.
  state.forEach((entry, i) => {
    const keys = typeof entry === "object" && entry !== null ? Object.keys(entry) : [];
    const unknown = keys.filter((key) => key !== "step" && !names.includes(key));
    if (unknown.length > 0) throw new InvalidArgumentError(`the ${className} state of parameter ${String(i)} has ${unknown.join(", ")}, which this ${className} optimizer does not keep`);
  });

  const created: tf.Tensor[] = [];
  try {
    const iterations = tf.scalar(step, "int32");
    created.push(iterations);
    const weights: { name: string; tensor: tf.Tensor }[] = [{ name: "iter", tensor: iterations }];
    names.forEach((name, j) => {
      params.forEach((param, i) => {
        const tensor = toTfjs(toTfjsLayout(slots[j]![i]!, param.layout), `${name} of ${param.key}`);
        created.push(tensor);
        weights.push({ name: `${param.variable.name}/${name}`, tensor });
      });
    });
    await optimizer.setWeights(weights);
    const internals = optimizer as OptimizerInternals;
    for (const name of HIDDEN_SCALARS) {
      const value = extra[name];
      const variable = internals[name];
      if (value instanceof Tensor && variable instanceof tf.Variable) {
        const tensor = toTfjs(value, name);
        variable.assign(tensor);
        tensor.dispose();
      }
    }
  } finally {
    for (const tensor of created) tensor.dispose();
  }
}

/**
 * The `state` of an optimizer state dict as a Map by parameter index. An empty dict read back from
 * a file is a plain object (with no keys nothing says they would be ints): that is an empty state.
 */
function perParameterState(state: StateValue | undefined): Map<StateKey, StateValue> {
  if (state instanceof Map) return state;
  if (typeof state === "object" && state !== null && Object.getPrototypeOf(state) === Object.prototype && Object.keys(state).length === 0) return new Map();
  throw new InvalidArgumentError("the optimizer state has no `state` map");
}

/** The slots this optimizer keeps per parameter, in PyTorch's names and tfjs's order. */
function slotNamesOf(optimizer: tf.Optimizer): string[] {
  const names = SLOT_NAMES[optimizer.getClassName()] ?? [];
  // tfjs's RMSProp keeps the mean gradient (PyTorch's grad_avg) only when centered.
  if (optimizer.getClassName() === "RMSProp" && (optimizer.getConfig() as { centered?: unknown }).centered !== true) return names.filter((name) => name !== "grad_avg");
  return names;
}

/** tfjs's getWeights, with its "not implemented" (Adamax) turned into our error type. */
async function optimizerWeights(optimizer: tf.Optimizer): Promise<{ name: string; tensor: tf.Tensor }[]> {
  try {
    return await optimizer.getWeights();
  } catch (error) {
    throw new InvalidArgumentError(`${optimizer.getClassName()} cannot be checkpointed: tfjs does not give out its state (${(error as Error).message})`, { cause: error });
  }
}

function trainableWeights(model: tf.LayersModel): ModelWeight[] {
  return modelWeights(model).filter((weight) => weight.trainable);
}

function slotsPerParam(optimizer: tf.Optimizer, slots: number, params: number): number {
  if (slots === 0) return 0;
  if (params === 0 || slots % params !== 0) {
    throw new InvalidArgumentError(`${optimizer.getClassName()} has ${slots} slot tensors for ${params} trainable weights: is it the model's optimizer?`);
  }
  return slots / params;
}

function slotNames(optimizer: tf.Optimizer, count: number): string[] {
  const known = SLOT_NAMES[optimizer.getClassName()] ?? [];
  return Array.from({ length: count }, (_, j) => known[j] ?? `slot_${j}`);
}

function checkShape(shape: readonly number[], param: ModelWeight, what: string): void {
  const expected = param.variable.shape;
  if (shape.length !== expected.length || shape.some((size, d) => size !== expected[d])) {
    throw new InvalidArgumentError(`${what} has shape [${shape.join(", ")}] but ${param.key} has [${expected.join(", ")}]`);
  }
}

/** The hyperparameters in PyTorch's names where there is one (Adam: lr, betas, eps). */
function paramGroup(optimizer: tf.Optimizer, count: number): StateDict {
  const config = optimizer.getConfig() as Record<string, unknown>;
  const group: StateDict = {};
  const float = (value: unknown): StateValue => (typeof value === "number" ? new PyFloat(value) : null);
  if (config.learningRate !== undefined) group.lr = float(config.learningRate);
  if (config.beta1 !== undefined && config.beta2 !== undefined) group.betas = tuple(float(config.beta1), float(config.beta2));
  if (config.epsilon !== undefined) group.eps = float(config.epsilon);
  for (const [key, value] of Object.entries(config)) {
    if (["learningRate", "beta1", "beta2", "epsilon"].includes(key)) continue;
    const snake = key.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`);
    if (typeof value === "number" || typeof value === "boolean" || typeof value === "string") group[snake] = value;
  }
  // The rest of PyTorch's own keys, so torch.optim.Adam / SGD can keep training from this state.
  const torchDefaults = TORCH_GROUP_DEFAULTS[optimizer.getClassName()];
  if (torchDefaults !== undefined) for (const [key, value] of Object.entries(torchDefaults)) if (!(key in group)) group[key] = value;
  group.params = Array.from({ length: count }, (_, i) => i);
  return group;
}

/** The param_group keys PyTorch's matching optimizer has and tfjs's lacks, at PyTorch's defaults. */
const TORCH_GROUP_DEFAULTS: Record<string, StateDict> = {
  Adam: { weight_decay: 0, amsgrad: false, maximize: false, foreach: null, capturable: false, differentiable: false, fused: false },
  Momentum: { dampening: 0, weight_decay: 0, nesterov: false, maximize: false, foreach: null, differentiable: false },
};
