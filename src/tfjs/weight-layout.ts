import type { Tensor } from "../tensor/tensor.js";

/**
 * How a tfjs weight maps to its PyTorch counterpart: the PyTorch name of the weight within its
 * layer, and the permutation from the tfjs layout to PyTorch's (tfjs Dense kernels are [in, out],
 * torch.nn.Linear weights [out, in]; Conv2D kernels [kh, kw, in, out] vs [out, in, kh, kw]).
 */
export interface WeightLayout {
  torchName: string;
  /** `torchTensor = tfjsTensor.permute(toTorch)`; undefined when the layouts agree. */
  toTorch: readonly number[] | undefined;
}

const TORCH_NAMES: Record<string, string> = {
  kernel: "weight",
  bias: "bias",
  gamma: "weight",
  beta: "bias",
  moving_mean: "running_mean",
  moving_variance: "running_var",
  embeddings: "weight",
  depthwise_kernel: "weight",
};

/** The layout of weight `shortName` (the part after the last "/") of a layer of class `layerClass`. */
export function weightLayout(layerClass: string, shortName: string, rank: number): WeightLayout {
  const torchName = TORCH_NAMES[shortName] ?? shortName;
  if (shortName === "kernel" && rank === 2 && layerClass === "Dense") return { torchName, toTorch: [1, 0] };
  if (shortName === "kernel" && rank === 4 && layerClass === "Conv2D") return { torchName, toTorch: [3, 2, 0, 1] };
  if (shortName === "kernel" && rank === 3 && layerClass === "Conv1D") return { torchName, toTorch: [2, 1, 0] };
  return { torchName, toTorch: undefined };
}

/** The shape a tfjs weight of shape `shape` has in PyTorch's layout. */
export function torchShape<T extends number | null>(shape: readonly T[], layout: WeightLayout): T[] {
  const toTorch = layout.toTorch;
  return toTorch === undefined || toTorch.length !== shape.length ? [...shape] : toTorch.map((d) => shape[d]!);
}

export function toTorchLayout(tensor: Tensor, layout: WeightLayout): Tensor {
  return layout.toTorch === undefined ? tensor : tensor.permute(layout.toTorch).contiguous();
}

export function toTfjsLayout(tensor: Tensor, layout: WeightLayout): Tensor {
  if (layout.toTorch === undefined) return tensor;
  const inverse = new Array<number>(layout.toTorch.length);
  layout.toTorch.forEach((d, i) => (inverse[d] = i));
  return tensor.permute(inverse).contiguous();
}
