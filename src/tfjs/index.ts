// The TensorFlow.js integration (`import … from "ckpt/tfjs"`): needs @tensorflow/tfjs installed.
export { captureModelState, restoreModelState, modelWeights, type ModelWeight } from "./model-state.js";
export { captureOptimizerState, restoreOptimizerState } from "./optimizer-state.js";
export { weightLayout, type WeightLayout } from "./weight-layout.js";
