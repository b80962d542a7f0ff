// The TensorFlow.js integration (`import … from "ckpt/tfjs"`): needs @tensorflow/tfjs installed.
export { captureModelState, restoreModelState, modelWeights, type ModelWeight } from "./model-state.js";
export { captureOptimizerState, restoreOptimizerState } from "./optimizer-state.js";
export { weightLayout, type WeightLayout } from "./weight-layout.js";
export { checkpointCallback, CheckpointCallback, type CheckpointCallbackOptions } from "./checkpoint-callback.js";
export { resumeFit, resumeFitDataset, restoreFitCheckpoint, type ResumeFitArgs, type ResumeFitDatasetArgs, type ResumeFitResult } from "./resume-fit.js";
export { FIT_POSITION_KEY, type FitPosition } from "./fit-position.js";
