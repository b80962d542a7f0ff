import type * as tf from "@tensorflow/tfjs";
import { InvalidArgumentError } from "../errors.js";
import { Tensor } from "../tensor/tensor.js";
import { orderedDict, type StateDict } from "../values/py-values.js";
import { fromTfjs, toTfjs } from "./tfjs-tensors.js";
import { toTfjsLayout, toTorchLayout, torchShape, weightLayout, type WeightLayout } from "./weight-layout.js";

/** One weight of a tfjs model with its PyTorch-style key and layout. */
export interface ModelWeight {
  /** `<layer index>.<torch name>`, e.g. `0.weight`, like an nn.Sequential state dict. */
  key: string;
  variable: tf.LayerVariable;
  layout: WeightLayout;
  trainable: boolean;
}

/**
 * The weights of a model in layer order, keyed as PyTorch would key an nn.Sequential of the same
 * layers. tfjs's own names (`dense_Dense3/kernel`) change from run to run; layer positions do not.
 */
export function modelWeights(model: tf.LayersModel): ModelWeight[] {
  const trainable = new Set(model.trainableWeights);
  const weights: ModelWeight[] = [];
  const keys = new Set<string>();
  model.layers.forEach((layer, index) => {
    for (const variable of layer.weights) {
      const shortName = variable.originalName.split("/").pop() ?? variable.originalName;
      const layout = weightLayout(layer.getClassName(), shortName, variable.shape.length);
      const key = `${index}.${layout.torchName}`;
      if (keys.has(key)) throw new InvalidArgumentError(`two weights of layer ${index} (${layer.name}) map to ${key}`);
      keys.add(key);
      weights.push({ key, variable, layout, trainable: trainable.has(variable) });
    }
  });
  return weights;
}

/**
 * A snapshot of a model's weights as a PyTorch-style state dict (an OrderedDict): Dense kernels
 * become [out, in] Linear weights, Conv kernels PyTorch's layout. Loads into the matching PyTorch
 * module with `load_state_dict`.
 *
 * @example
 * const state = { model: captureModelState(model), optimizer: await captureOptimizerState(optimizer, model) };
 */
export function captureModelState(model: tf.LayersModel): StateDict {
  const state: StateDict = {};
  for (const weight of modelWeights(model)) state[weight.key] = toTorchLayout(fromTfjs(weight.variable.read()), weight.layout);
  return orderedDict(state);
}

/**
 * Writes a state dict made by captureModelState back into the model; every key and shape must
 * match. Everything is checked before anything is written, so a rejected state leaves the model
 * as it was.
 */
export function restoreModelState(model: tf.LayersModel, state: StateDict): void {
  const weights = modelWeights(model);
  const expected = new Set(weights.map((w) => w.key));
  const unexpected = Object.keys(state).filter((key) => !expected.has(key));
  if (unexpected.length > 0) throw new InvalidArgumentError(`the state has keys the model lacks: ${unexpected.join(", ")}`);
  const values = weights.map((weight) => {
    const value = state[weight.key];
    if (!(value instanceof Tensor)) throw new InvalidArgumentError(`the state has no tensor for ${weight.key}`);
    // Compared in PyTorch's layout, the one the state is in, before any permutation.
    const needed = torchShape(weight.variable.shape, weight.layout);
    if (value.shape.length !== needed.length || value.shape.some((size, d) => size !== needed[d])) {
      throw new InvalidArgumentError(`${weight.key} has shape [${value.shape.join(", ")}] in the state but the model needs [${needed.join(", ")}]`);
    }
    return value;
  });
  // Converted first too: a dtype tfjs cannot take is also refused before anything is written.
  const tensors: tf.Tensor[] = [];
  try {
    weights.forEach((weight, i) => tensors.push(toTfjs(toTfjsLayout(values[i]!, weight.layout), weight.key)));
    weights.forEach((weight, i) => weight.variable.write(tensors[i]!));
  } finally {
    for (const tensor of tensors) tensor.dispose();
  }
}
