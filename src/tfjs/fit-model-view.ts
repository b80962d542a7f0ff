import type * as tf from "@tensorflow/tfjs";

/**
 * The model as fit checkpoints key it: its layers without InputLayers. tfjs hands callbacks not a
 * Sequential but the functional model inside it, whose layers start with an InputLayer; without
 * this view a callback's `1.weight` would be the Sequential's `0.weight`. Saving and restoring
 * both use the view, so a Sequential's fit checkpoints have captureModelState's keys.
 */
export function fitModelView(model: tf.LayersModel): tf.LayersModel {
  const layers = model.layers.filter((layer) => layer.getClassName() !== "InputLayer");
  if (layers.length === model.layers.length) return model;
  return { layers, trainableWeights: model.trainableWeights } as unknown as tf.LayersModel;
}
