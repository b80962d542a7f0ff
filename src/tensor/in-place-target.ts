import { InvalidArgumentError } from "../errors.js";
import type { DType } from "./dtype.js";
import type { Tensor } from "./tensor.js";

/**
 * Refuses an `into` tensor that cannot take a file tensor's elements in place: another dtype or
 * shape (the user asked for their tensors to be filled, so a silent new tensor would be a
 * surprise), or a non-contiguous view. `where` names the target's key path.
 */
export function checkInPlaceTarget(target: Tensor, file: { dtype: DType; shape: readonly number[] }, where: () => string): void {
  const sameShape = target.shape.length === file.shape.length && target.shape.every((size, d) => size === file.shape[d]);
  if (target.dtype !== file.dtype || !sameShape) {
    throw new InvalidArgumentError(
      `${where()} is ${target.dtype} [${target.shape.join(", ")}] but the file has ${file.dtype} [${file.shape.join(", ")}] there: ` +
        "loading in place needs the same dtype and shape (load without `into` to get the file's tensors)",
    );
  }
  if (!target.isContiguous) {
    throw new InvalidArgumentError(`${where()} is not contiguous (strides [${target.strides.join(", ")}]): loading in place needs contiguous tensors`);
  }
}
