import * as tf from "@tensorflow/tfjs";
import { InvalidArgumentError } from "../errors.js";
import { Tensor } from "../tensor/tensor.js";
import { PyFloat, tuple, type StateDict, type StateValue } from "../values/py-values.js";
import { modelWeights, type ModelWeight } from "./model-state.js";
import { fromTfjs, toTfjs } from "./tfjs-tensors.js";
import { toTfjsLayout, toTorchLayout } from "./weight-layout.js";

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
  const [iterations, ...slots] = await optimizer.getWeights();
  if (iterations === undefined) throw new InvalidArgumentError(`${optimizer.getClassName()}.getWeights() returned nothing`);
  const step = Number(iterations.tensor.dataSync()[0]);
  const perParam = slotsPerParam(optimizer, slots.length, params.length);
  const names = slotNames(optimizer, perParam);

  const state = new Map<number, StateValue>();
  if (perParam > 0) {
    params.forEach((param, i) => {
      const entry: StateDict = { step };
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

/** Restores a state made by captureOptimizerState, by parameter position, checking every shape. */
export async function restoreOptimizerState(optimizer: tf.Optimizer, model: tf.LayersModel, saved: StateDict): Promise<void> {
  const params = trainableWeights(model);
  const extra = saved.tfjs as StateDict | undefined;
  if (extra?.class_name !== optimizer.getClassName()) {
    throw new InvalidArgumentError(`the state is of a ${String(extra?.class_name)} optimizer, not ${optimizer.getClassName()}`);
  }
  const state = saved.state;
  if (!(state instanceof Map)) throw new InvalidArgumentError("the optimizer state has no `state` map");
  const step = extra.iterations;
  if (typeof step !== "number") throw new InvalidArgumentError("the optimizer state has no iteration count");

  const names = state.size === 0 ? [] : slotNames(optimizer, (SLOT_NAMES[optimizer.getClassName()] ?? []).length);
  const created: tf.Tensor[] = [];
  try {
    const iterations = tf.scalar(step, "int32");
    created.push(iterations);
    const weights: { name: string; tensor: tf.Tensor }[] = [{ name: "iter", tensor: iterations }];
    if (state.size > 0) {
      if (state.size !== params.length) throw new InvalidArgumentError(`the optimizer state has ${state.size} parameters, the model ${params.length}`);
      const present = names.filter((name) => (state.get(0) as StateDict | undefined)?.[name] instanceof Tensor);
      for (const name of present) {
        params.forEach((param, i) => {
          const slot = (state.get(i) as StateDict | undefined)?.[name];
          if (!(slot instanceof Tensor)) throw new InvalidArgumentError(`parameter ${i} has no ${name} in the optimizer state`);
          const restored = toTfjsLayout(slot, param.layout);
          checkShape(restored.shape, param, `optimizer slot ${name} of parameter ${i} (${param.key})`);
          const tensor = toTfjs(restored, `${name} of ${param.key}`);
          created.push(tensor);
          weights.push({ name: `${param.variable.name}/${name}`, tensor });
        });
      }
    }
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
  group.params = Array.from({ length: count }, (_, i) => i);
  return group;
}
