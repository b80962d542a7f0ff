import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { InvalidArgumentError } from "../src/errors.js";
import type { DType, TypedArray } from "../src/tensor/dtype.js";
import { Storage } from "../src/tensor/storage.js";
import { Tensor } from "../src/tensor/tensor.js";

function refusesArgument(run: () => unknown, message?: RegExp): void {
  assert.throws(run, (error: unknown) => {
    assert.ok(error instanceof InvalidArgumentError, `expected an InvalidArgumentError, got ${String(error)}`);
    assert.equal(error.code, "INVALID_ARGUMENT");
    if (message !== undefined) assert.match(error.message, message);
    return true;
  });
}

describe("Tensor.from", () => {
  test("views the typed array without copying, so writes go through both ways", () => {
    const array = new Float32Array([1, 2, 3, 4, 5, 6]);
    const tensor = Tensor.from(array, { shape: [2, 3] });
    const data = tensor.data as Float32Array;
    assert.equal(data.buffer, array.buffer);
    assert.equal(tensor.storage.bytes.buffer, array.buffer);

    array[4] = 50;
    assert.equal(tensor.data[4], 50);
    data[0] = -1;
    assert.equal(array[0], -1);
  });

  test("views a typed array that is itself a window on a larger buffer, at its offset", () => {
    const backing = new Float64Array([9, 1, 2, 3, 9]);
    const window = backing.subarray(1, 4);
    const tensor = Tensor.from(window);
    assert.deepEqual([...tensor.data], [1, 2, 3]);
    (tensor.data as Float64Array)[2] = 30;
    assert.equal(backing[3], 30);
    assert.equal(backing[4], 9);
  });

  test("infers the dtype of every typed array that has one obvious dtype", () => {
    const cases: [TypedArray, DType][] = [
      [new Float32Array(2), "float32"],
      [new Float64Array(2), "float64"],
      [new Int8Array(2), "int8"],
      [new Uint8Array(2), "uint8"],
      [new Int16Array(2), "int16"],
      [new Int32Array(2), "int32"],
      [new BigInt64Array(2), "int64"],
    ];
    for (const [array, dtype] of cases) {
      const tensor = Tensor.from(array);
      assert.equal(tensor.dtype, dtype, array.constructor.name);
      assert.deepEqual(tensor.shape, [2]);
    }
  });

  test("takes an explicit dtype for 16-bit floats, bool and complex64", () => {
    assert.equal(Tensor.from(new Uint16Array(3), { dtype: "float16" }).dtype, "float16");
    assert.equal(Tensor.from(new Uint16Array(3), { dtype: "bfloat16" }).dtype, "bfloat16");
    assert.equal(Tensor.from(new Uint8Array([0, 1]), { dtype: "bool" }).dtype, "bool");
    // complex64 is interleaved float32: six floats are three complex elements.
    const complex = Tensor.from(new Float32Array([1, 2, 3, 4, 5, 6]), { dtype: "complex64" });
    assert.deepEqual(complex.shape, [3]);
    assert.equal(complex.byteLength, 24);
    assert.deepEqual([...complex.data], [1, 2, 3, 4, 5, 6]);
  });

  test("refuses unsigned arrays with no dtype of their own, saying what to convert them to", () => {
    refusesArgument(() => Tensor.from(new Uint32Array(2) as never), /^uint32 is not a supported dtype \(the supported dtypes are float32, .*\): convert the Uint32Array to an Int32Array .* below 2\^31, else to a BigInt64Array \(int64\)$/);
    refusesArgument(() => Tensor.from(new BigUint64Array(2) as never), /^uint64 is not a supported dtype .*BigInt64Array \(int64\) if every value is below 2\^63$/);
    refusesArgument(() => Tensor.from(new Uint8ClampedArray(2) as never), /Uint8ClampedArray has no dtype: view its bytes as a Uint8Array/);
    for (const array of [new Uint32Array(2), new BigUint64Array(2), new Uint8ClampedArray(2)]) {
      assert.throws(() => Tensor.from(array as never), (error: unknown) => !/"float16" or "bfloat16"/.test((error as Error).message), array.constructor.name);
    }
  });

  test("refuses a Uint16Array without a dtype, since float16 and bfloat16 look alike", () => {
    refusesArgument(() => Tensor.from(new Uint16Array(4)), /Uint16Array needs an explicit dtype/);
  });

  test("refuses a dtype that the typed array cannot hold", () => {
    refusesArgument(() => Tensor.from(new Float32Array(4), { dtype: "int32" }), /int32 is held in a Int32Array, got a Float32Array/);
    refusesArgument(() => Tensor.from(new Int32Array(4), { dtype: "float32" }), /float32/);
    refusesArgument(() => Tensor.from(new Uint8Array(4), { dtype: "float16" }), /Uint16Array/);
  });

  test("refuses a dtype that does not exist", () => {
    refusesArgument(() => Tensor.from(new Float32Array(4), { dtype: "float8" as DType }), /unknown dtype "float8"/);
    refusesArgument(() => Tensor.from(new Float32Array(4), { dtype: "toString" as DType }), /unknown dtype/);
  });

  test("refuses a shape whose element count differs from the array's", () => {
    const array = new Float32Array(6);
    refusesArgument(() => Tensor.from(array, { shape: [4] }), /shape \[4\] has 4 elements but the array has 6/);
    refusesArgument(() => Tensor.from(array, { shape: [2, 4] }), /8 elements/);
    refusesArgument(() => Tensor.from(array, { shape: [Number.NaN] }));
    refusesArgument(() => Tensor.from(array, { shape: [Number.POSITIVE_INFINITY] }));
  });

  test("refuses negative and fractional sizes even when their product matches", () => {
    const array = new Float32Array(6);
    refusesArgument(() => Tensor.from(array, { shape: [-2, -3] }), /bad size in dimension 0/);
    refusesArgument(() => Tensor.from(array, { shape: [1.5, 4] }), /bad size in dimension 0/);
    refusesArgument(() => Tensor.from(array, { shape: [3, -1, -2] }), /bad size in dimension 1/);
  });

  test("two tensors over one typed array share one Storage, so a file holds it once", () => {
    const array = new Int32Array([1, 2, 3, 4, 5, 6]);
    const flat = Tensor.from(array);
    const matrix = Tensor.from(array, { shape: [3, 2] });
    assert.equal(flat.storage, matrix.storage);
    assert.equal(matrix.reshape([6]).storage, flat.storage);
    assert.equal(matrix.transpose().storage, flat.storage);
  });
});

describe("shapes and strides", () => {
  test("a new tensor has row-major strides in elements", () => {
    assert.deepEqual(Tensor.from(new Float32Array(24), { shape: [2, 3, 4] }).strides, [12, 4, 1]);
    assert.deepEqual(Tensor.from(new Float32Array(6), { shape: [6] }).strides, [1]);
    assert.deepEqual(Tensor.from(new Float32Array(6), { shape: [1, 6, 1] }).strides, [6, 1, 1]);
  });

  test("numel and byteLength follow the shape and the dtype's item size", () => {
    const tensor = Tensor.from(new Float64Array(12), { shape: [3, 4] });
    assert.equal(tensor.numel, 12);
    assert.equal(tensor.byteLength, 96);
    assert.equal(Tensor.from(new Uint16Array(10), { dtype: "bfloat16", shape: [2, 5] }).byteLength, 20);
  });

  test("shape and strides are frozen copies that the caller's array cannot change", () => {
    const shape = [2, 3];
    const tensor = Tensor.from(new Float32Array(6), { shape });
    shape[0] = 6;
    assert.deepEqual(tensor.shape, [2, 3]);
    assert.ok(Object.isFrozen(tensor.shape));
    assert.ok(Object.isFrozen(tensor.strides));
  });

  test("contiguous() of a transpose gives the transposed values in row-major order", () => {
    const matrix = Tensor.from(new Float32Array([1, 2, 3, 4, 5, 6]), { shape: [2, 3] });
    const transposed = matrix.transpose();
    assert.deepEqual(transposed.shape, [3, 2]);
    assert.deepEqual(transposed.strides, [1, 3]);
    assert.equal(transposed.isContiguous, false);
    assert.deepEqual([...transposed.data], [1, 4, 2, 5, 3, 6]);

    const copy = transposed.contiguous();
    assert.notEqual(copy.storage, matrix.storage);
    assert.equal(copy.isContiguous, true);
    assert.deepEqual(copy.strides, [2, 1]);
    assert.deepEqual([...copy.data], [1, 4, 2, 5, 3, 6]);
    assert.deepEqual([...matrix.data], [1, 2, 3, 4, 5, 6], "the original is untouched");
  });

  test("contiguous() of a 3-D permutation visits every element once", () => {
    const values = Int32Array.from({ length: 24 }, (_, i) => i);
    const tensor = Tensor.from(values, { shape: [2, 3, 4] }).transpose(0, 2); // shape [4, 3, 2]
    const out = tensor.contiguous().data as Int32Array;
    const expected: number[] = [];
    for (let k = 0; k < 4; k++) for (let j = 0; j < 3; j++) for (let i = 0; i < 2; i++) expected.push(i * 12 + j * 4 + k);
    assert.deepEqual([...out], expected);
  });

  test("contiguous() of a view with an offset copies only the viewed elements", () => {
    const storage = new Storage("int16", new Uint8Array(new Int16Array([0, 1, 2, 3, 4, 5, 6, 7]).buffer));
    const view = new Tensor({ storage, shape: [2, 2], strides: [3, 1], offset: 2 });
    assert.equal(view.isContiguous, false);
    assert.deepEqual([...view.contiguous().data], [2, 3, 5, 6]);
    assert.equal(view.contiguous().storage.numel, 4);
  });

  test("a tensor that is already contiguous and whole is its own contiguous()", () => {
    const tensor = Tensor.from(new Float32Array(6), { shape: [2, 3] });
    assert.equal(tensor.contiguous(), tensor);
  });

  test("isContiguous ignores size-1 dimensions and accepts an offset", () => {
    const storage = new Storage("float32", new Uint8Array(4 * 10));
    assert.equal(new Tensor({ storage, shape: [1, 3], strides: [99, 1] }).isContiguous, true);
    assert.equal(new Tensor({ storage, shape: [3, 1], strides: [1, 7] }).isContiguous, true);
    assert.equal(new Tensor({ storage, shape: [2, 3], strides: [3, 1], offset: 4 }).isContiguous, true);
    assert.equal(new Tensor({ storage, shape: [2, 3], strides: [4, 1] }).isContiguous, false);
    assert.equal(new Tensor({ storage, shape: [5], strides: [2] }).isContiguous, false);
    assert.equal(new Tensor({ storage, shape: [4], strides: [0] }).isContiguous, false);
  });

  test("a contiguous view with an offset reads its data straight from the storage", () => {
    const array = new Float32Array([0, 1, 2, 3, 4, 5, 6, 7]);
    const storage = Tensor.from(array).storage;
    const view = new Tensor({ storage, shape: [2, 2], offset: 3 });
    const data = view.data as Float32Array;
    assert.deepEqual([...data], [3, 4, 5, 6]);
    assert.equal(data.buffer, array.buffer);
  });

  test("a stride-0 (broadcast) view repeats one element", () => {
    const storage = Tensor.from(new Float32Array([7, 8])).storage;
    const view = new Tensor({ storage, shape: [3, 2], strides: [0, 1] });
    assert.deepEqual([...view.data], [7, 8, 7, 8, 7, 8]);
  });

  test("storage bytes at an address the typed array cannot view are copied into an aligned array", () => {
    const buffer = new ArrayBuffer(13);
    new Float32Array(buffer, 4, 2).set([1.5, 2.5]);
    const unaligned = new Uint8Array(12);
    unaligned.set(new Uint8Array(buffer, 4, 8), 1);
    const storage = new Storage("float32", unaligned.subarray(1, 9));
    const tensor = new Tensor({ storage, shape: [2] });
    assert.deepEqual([...tensor.data], [1.5, 2.5]);
  });

  test("reshape and transpose are views over the same storage", () => {
    const array = new Float32Array([1, 2, 3, 4, 5, 6]);
    const tensor = Tensor.from(array, { shape: [2, 3] });
    const reshaped = tensor.reshape([3, 2]);
    assert.deepEqual(reshaped.strides, [2, 1]);
    array[5] = 60;
    assert.equal(reshaped.data[5], 60);
    assert.equal(tensor.transpose().data[5], 60);
  });
});

describe("zero-dimensional and empty tensors", () => {
  test("a zero-dimensional tensor holds one element and has no strides", () => {
    const scalar = Tensor.from(new Float32Array([7]), { shape: [] });
    assert.deepEqual(scalar.shape, []);
    assert.deepEqual(scalar.strides, []);
    assert.equal(scalar.numel, 1);
    assert.equal(scalar.isContiguous, true);
    assert.deepEqual([...scalar.data], [7]);
    assert.equal(Tensor.zeros([]).numel, 1);
  });

  test("empty tensors have no elements, any shape with a zero, and contiguous data", () => {
    for (const shape of [[0], [0, 3], [3, 0], [2, 0, 5]]) {
      const tensor = Tensor.zeros(shape, "int64");
      assert.equal(tensor.numel, 0);
      assert.equal(tensor.byteLength, 0);
      assert.equal(tensor.isContiguous, true);
      assert.equal(tensor.data.length, 0);
      assert.ok(tensor.data instanceof BigInt64Array);
      assert.equal(tensor.contiguous().numel, 0);
    }
    assert.deepEqual(Tensor.from(new Float32Array(0)).shape, [0]);
    assert.deepEqual(Tensor.from(new Float32Array(0), { shape: [4, 0] }).strides, [0, 1]);
  });

  test("an empty tensor may sit past the end of its storage, as PyTorch allows, and reads as empty", () => {
    // torch: t = torch.empty(0); t.set_(torch.arange(4.).storage(), 100, (0,), (1,)) saves and loads.
    const storage = new Storage("float32", new Uint8Array(16));
    const tensor = new Tensor({ storage, shape: [0], strides: [1], offset: 100 });
    assert.equal(tensor.bytes.byteLength, 0);
    assert.ok(tensor.data instanceof Float32Array);
    assert.equal(tensor.data.length, 0);
    assert.equal(tensor.contiguous().numel, 0);
  });

  test("a zero-filled tensor is all zeros in the asked dtype", () => {
    const tensor = Tensor.zeros([2, 3], "float64");
    assert.equal(tensor.dtype, "float64");
    assert.deepEqual([...tensor.data], [0, 0, 0, 0, 0, 0]);
    assert.equal(Tensor.zeros([4]).dtype, "float32");
  });
});

describe("refusing bad shapes and views", () => {
  test("Tensor.zeros refuses negative, fractional, non-finite and absurd sizes before allocating", () => {
    refusesArgument(() => Tensor.zeros([-1]), /bad size in dimension 0/);
    refusesArgument(() => Tensor.zeros([2, 2.5]), /bad size in dimension 1/);
    refusesArgument(() => Tensor.zeros([Number.NaN]), /bad size/);
    refusesArgument(() => Tensor.zeros([Number.POSITIVE_INFINITY]), /bad size/);
    refusesArgument(() => Tensor.zeros([2 ** 40, 2 ** 40]), /too many elements/);
  });

  test("Tensor.zeros refuses a dtype that does not exist", () => {
    refusesArgument(() => Tensor.zeros([2], "float8" as DType), /unknown dtype "float8"/);
  });

  test("a view that reaches past its storage is refused", () => {
    const storage = new Storage("float32", new Uint8Array(16)); // 4 elements
    refusesArgument(() => new Tensor({ storage, shape: [5] }), /reaches element 4 of a storage of 4 elements/);
    refusesArgument(() => new Tensor({ storage, shape: [2], offset: 3 }), /reaches element 4/);
    refusesArgument(() => new Tensor({ storage, shape: [3], strides: [2] }), /reaches element 4/);
    refusesArgument(() => new Tensor({ storage, shape: [2 ** 40, 2 ** 40], strides: [2 ** 40, 1] }), /too many elements/);
  });

  test("negative or fractional strides and offsets are refused", () => {
    const storage = new Storage("float32", new Uint8Array(16));
    refusesArgument(() => new Tensor({ storage, shape: [2], strides: [-1], offset: 3 }), /bad stride in dimension 0/);
    refusesArgument(() => new Tensor({ storage, shape: [2], strides: [0.5] }), /bad stride/);
    refusesArgument(() => new Tensor({ storage, shape: [2], offset: -1 }), /bad offset/);
    refusesArgument(() => new Tensor({ storage, shape: [2], offset: 0.5 }), /bad offset/);
  });

  test("shape and strides of different lengths are refused", () => {
    const storage = new Storage("float32", new Uint8Array(16));
    refusesArgument(() => new Tensor({ storage, shape: [2, 2], strides: [1] }), /differ in length/);
  });

  test("reshape refuses a different element count and a non-contiguous tensor", () => {
    const tensor = Tensor.from(new Float32Array(6), { shape: [2, 3] });
    refusesArgument(() => tensor.reshape([4]), /cannot reshape \[2, 3\] to \[4\]/);
    refusesArgument(() => tensor.reshape([-2, -3]), /bad size/);
    refusesArgument(() => tensor.transpose().reshape([6]), /contiguous/);
  });

  test("transpose refuses dimensions the tensor does not have", () => {
    refusesArgument(() => Tensor.from(new Float32Array(6)).transpose(0, 1), /no dimensions 0 and 1 in a 1-D tensor/);
  });

  test("a storage refuses bytes that are not a whole number of elements", () => {
    assert.throws(() => new Storage("float64", new Uint8Array(12)), RangeError);
  });
});

test("statistics and differences of a tensor over an unaligned Buffer (a view of a file read whole) copy it instead of failing", async () => {
  const { tensorDifference, tensorStats } = await import("../src/tensor/tensor-stats.js");
  // A Buffer's slice() is a view, not a copy: an int64 storage at an odd offset of one.
  const file = Buffer.alloc(17);
  file.writeBigInt64LE(-3n, 1);
  file.writeBigInt64LE(5n, 9);
  const tensor = new Tensor({ storage: new Storage("int64", file.subarray(1)), shape: [2] });
  assert.deepEqual([tensorStats(tensor).min, tensorStats(tensor).max], [-3, 5]);
  assert.equal(tensorDifference(tensor, Tensor.from(new BigInt64Array([-3n, 6n]))).maxAbsDiff, 1);
});
