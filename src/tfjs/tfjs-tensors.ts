import * as tf from "@tensorflow/tfjs";
import { InvalidArgumentError } from "../errors.js";
import { Tensor } from "../tensor/tensor.js";

/** A snapshot of a tfjs tensor as our Tensor (float32, int32 or bool); later training never changes it. */
export function fromTfjs(value: tf.Tensor): Tensor {
  const data = value.dataSync();
  const shape = [...value.shape];
  switch (value.dtype) {
    case "float32":
      return Tensor.from(Float32Array.from(data as Float32Array), { shape });
    case "int32":
      return Tensor.from(Int32Array.from(data as Int32Array), { shape });
    case "bool":
      return Tensor.from(Uint8Array.from(data as Uint8Array), { shape, dtype: "bool" });
    default:
      throw new InvalidArgumentError(`tfjs tensors of dtype ${value.dtype} cannot be saved`);
  }
}

/**
 * A new tfjs tensor with a copy of our tensor's values; the caller disposes it. A copy, because
 * tfjs keeps the array it is given: a model restored from a state would otherwise change whenever
 * the state's tensors do (a loader reusing them, a caller editing them).
 */
export function toTfjs(tensor: Tensor, what: string): tf.Tensor {
  const shape = [...tensor.shape];
  const contiguous = tensor.contiguous();
  switch (tensor.dtype) {
    case "float32":
      return tf.tensor(Float32Array.from(contiguous.data as Float32Array), shape, "float32");
    case "float64":
      return tf.tensor(Float32Array.from(contiguous.data as Float64Array), shape, "float32");
    case "int32":
      return tf.tensor(Int32Array.from(contiguous.data as Int32Array), shape, "int32");
    case "bool":
      return tf.tensor(Uint8Array.from(contiguous.data as Uint8Array), shape, "bool");
    default:
      throw new InvalidArgumentError(`${what} is ${tensor.dtype}; tfjs weights need float32, float64, int32 or bool`);
  }
}
