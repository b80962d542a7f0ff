// The TensorFlow.js adapter (ckpt/tfjs): PyTorch names and layouts for model weights, snapshots,
// exact restores with checked keys and shapes, optimizer state that resumes bit for bit through a
// real .pt file, and files PyTorch loads into the equivalent modules.
import assert from "node:assert/strict";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import * as tf from "@tensorflow/tfjs";
import {
  InvalidArgumentError,
  Tensor,
  TorchTensorDumper,
  TorchTensorLoader,
  isOrderedDict,
  isTuple,
  type StateDict,
  type StateValue,
} from "../src/index.js";
import { captureModelState, captureOptimizerState, restoreModelState, restoreOptimizerState } from "../src/tfjs/index.js";
import { requireTorch, runPython } from "./helpers/torch-python.js";

const INPUT_SHAPE = [5, 5, 2] as const;
const BATCH = 8;
const OUTPUTS = 2;

let root: string;
let files = 0;
const dumper = new TorchTensorDumper();
const loader = new TorchTensorLoader();

before(async () => {
  await tf.setBackend("cpu");
  // Silence the CPU backend's one-time banner advising tfjs-node.
  (tf.backend() as unknown as { firstUse: boolean }).firstUse = false;
  root = await mkdtemp(join(tmpdir(), "ckpt-tfjs-adapter-"));
});
after(async () => {
  await rm(root, { recursive: true, force: true });
});

/**
 * Conv2D → BatchNormalization → Flatten → Dense: a 4-D kernel, a 2-D kernel, biases, and
 * non-trainable weights (the moving statistics), with no weights in layer 2.
 */
function convNet(options: { filters?: number; extraDense?: boolean } = {}): tf.Sequential {
  const model = tf.sequential();
  model.add(tf.layers.conv2d({ inputShape: [...INPUT_SHAPE], filters: options.filters ?? 3, kernelSize: 3, activation: "relu", kernelInitializer: tf.initializers.glorotUniform({ seed: 1 }) }));
  model.add(tf.layers.batchNormalization());
  model.add(tf.layers.flatten());
  model.add(tf.layers.dense({ units: OUTPUTS, kernelInitializer: tf.initializers.glorotUniform({ seed: 2 }) }));
  if (options.extraDense === true) model.add(tf.layers.dense({ units: OUTPUTS, kernelInitializer: tf.initializers.glorotUniform({ seed: 3 }) }));
  return model;
}

/** mulberry32: the same numbers on every run. */
function randoms(seed: number, count: number): Float32Array {
  let state = seed >>> 0;
  return Float32Array.from({ length: count }, () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = Math.imul(state ^ (state >>> 15), state | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return (((t ^ (t >>> 14)) >>> 0) / 4294967296) * 2 - 1;
  });
}

const features = INPUT_SHAPE[0] * INPUT_SHAPE[1] * INPUT_SHAPE[2];

/** Batch number `i` of a fixed synthetic data set. */
function batch(i: number): [tf.Tensor, tf.Tensor] {
  return [tf.tensor4d(randoms(1000 + i, BATCH * features), [BATCH, ...INPUT_SHAPE]), tf.tensor2d(randoms(5000 + i, BATCH * OUTPUTS), [BATCH, OUTPUTS])];
}

/** Trains on batches first..first+count-1, the same batches for every model given the same numbers. */
async function train(model: tf.LayersModel, first: number, count: number): Promise<void> {
  for (let i = first; i < first + count; i++) {
    const [xs, ys] = batch(i);
    await model.trainOnBatch(xs, ys);
    tf.dispose([xs, ys]);
  }
}

function compiled(model: tf.LayersModel, optimizer: tf.Optimizer): tf.LayersModel {
  model.compile({ optimizer, loss: "meanSquaredError" });
  return model;
}

/** Through a real .pt file: TorchTensorDumper writes it, TorchTensorLoader reads it back. */
async function throughFile(state: StateDict): Promise<StateDict> {
  const path = join(root, `state-${files++}.pt`);
  await dumper.dump(state, path);
  return (await loader.load(path)) as StateDict;
}

function tensorAt(state: StateDict, key: string): Tensor {
  const value = state[key];
  assert.ok(value instanceof Tensor, `${key} is not a tensor`);
  return value;
}

/** The elements' bytes, copied: comparing them is a bitwise comparison (NaN and -0 included). */
function bitsOf(tensor: Tensor): Buffer {
  return Buffer.from(tensor.bytes);
}

function assertBitwiseEqual(actual: StateDict, expected: StateDict, what: string): void {
  assert.deepEqual(Object.keys(actual), Object.keys(expected), `${what}: keys`);
  for (const key of Object.keys(expected)) {
    const [a, e] = [tensorAt(actual, key), tensorAt(expected, key)];
    assert.deepEqual(a.shape, e.shape, `${what}: shape of ${key}`);
    assert.equal(a.dtype, e.dtype, `${what}: dtype of ${key}`);
    assert.ok(bitsOf(a).equals(bitsOf(e)), `${what}: ${key} differs`);
  }
}

function bitwiseEqual(a: StateDict, b: StateDict): boolean {
  return Object.keys(b).every((key) => bitsOf(tensorAt(a, key)).equals(bitsOf(tensorAt(b, key))));
}

/** Element `index` of a contiguous tensor. */
function element(tensor: Tensor, index: readonly number[]): number {
  assert.equal(index.length, tensor.shape.length);
  let offset = 0;
  index.forEach((i, d) => (offset = offset * tensor.shape[d]! + i));
  return tensor.contiguous().data[offset] as number;
}

/** Every multi-index of `shape`, in row-major order. */
function* indices(shape: readonly number[]): Generator<number[]> {
  const total = shape.reduce((a, b) => a * b, 1);
  for (let flat = 0; flat < total; flat++) {
    const index = new Array<number>(shape.length);
    let rest = flat;
    for (let d = shape.length - 1; d >= 0; d--) {
      index[d] = rest % shape[d]!;
      rest = Math.floor(rest / shape[d]!);
    }
    yield index;
  }
}

/** Gives every weight distinct values (layer * 1000 + weight * 100 + position), exact in float32. */
function setDistinctWeights(model: tf.LayersModel): void {
  model.layers.forEach((layer, l) => {
    const values = layer.getWeights().map((w, j) => tf.tensor(Float32Array.from({ length: w.size }, (_, k) => l * 1000 + j * 100 + k + 1), w.shape));
    if (values.length > 0) layer.setWeights(values);
    tf.dispose(values);
  });
}

function expectInvalid(fn: () => unknown, ...fragments: string[]): void {
  assert.throws(fn, (error: unknown) => {
    assert.ok(error instanceof InvalidArgumentError, `not an InvalidArgumentError: ${String(error)}`);
    for (const fragment of fragments) assert.ok(error.message.includes(fragment), `"${error.message}" does not mention ${fragment}`);
    return true;
  });
}

async function expectInvalidAsync(promise: Promise<unknown>, ...fragments: string[]): Promise<void> {
  await assert.rejects(promise, (error: unknown) => {
    assert.ok(error instanceof InvalidArgumentError, `not an InvalidArgumentError: ${String(error)}`);
    for (const fragment of fragments) assert.ok(error.message.includes(fragment), `"${error.message}" does not mention ${fragment}`);
    return true;
  });
}

describe("captureModelState and restoreModelState", () => {
  it("name weights as an nn.Sequential would: <layer index>.weight/.bias, and BatchNormalization's running_mean and running_var", () => {
    const model = convNet();
    const state = captureModelState(model);
    assert.ok(isOrderedDict(state), "a state dict is an OrderedDict, like PyTorch's");
    assert.deepEqual(Object.keys(state), ["0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean", "1.running_var", "3.weight", "3.bias"]);

    setDistinctWeights(model);
    const distinct = captureModelState(model);
    const [gamma, beta, movingMean, movingVariance] = model.layers[1]!.getWeights();
    const bn: [string, tf.Tensor | undefined][] = [["1.weight", gamma], ["1.bias", beta], ["1.running_mean", movingMean], ["1.running_var", movingVariance]];
    for (const [key, variable] of bn) {
      assert.ok(variable !== undefined);
      assert.deepEqual(Array.from(tensorAt(distinct, key).data as Float32Array), Array.from(variable.dataSync()), key);
    }
    assert.deepEqual(Array.from(tensorAt(distinct, "0.bias").data as Float32Array), Array.from(model.layers[0]!.getWeights()[1]!.dataSync()));
    model.dispose();
  });

  it("turn a Dense kernel [in, out] into a Linear weight [out, in] and a Conv2D kernel [kh, kw, in, out] into [out, in, kh, kw]", () => {
    const model = convNet();
    setDistinctWeights(model);
    const state = captureModelState(model);

    const convKernel = model.layers[0]!.getWeights()[0]!;
    assert.deepEqual(convKernel.shape, [3, 3, 2, 3]);
    const convWeight = tensorAt(state, "0.weight");
    assert.deepEqual(convWeight.shape, [3, 2, 3, 3]);
    const conv = convKernel.arraySync() as number[][][][];
    for (const [o, i, y, x] of indices(convWeight.shape)) {
      assert.equal(element(convWeight, [o!, i!, y!, x!]), conv[y!]![x!]![i!]![o!], `0.weight[${o}, ${i}, ${y}, ${x}]`);
    }

    const denseKernel = model.layers[3]!.getWeights()[0]!;
    assert.deepEqual(denseKernel.shape, [27, OUTPUTS]);
    const denseWeight = tensorAt(state, "3.weight");
    assert.deepEqual(denseWeight.shape, [OUTPUTS, 27]);
    const dense = denseKernel.arraySync() as number[][];
    for (const [o, i] of indices(denseWeight.shape)) assert.equal(element(denseWeight, [o!, i!]), dense[i!]![o!], `3.weight[${o}, ${i}]`);
    model.dispose();
  });

  it("take a snapshot: training afterwards does not change a captured state", async () => {
    const model = compiled(convNet(), tf.train.adam(0.01));
    await train(model, 0, 2);
    const state = captureModelState(model);
    const copies = Object.fromEntries(Object.keys(state).map((key) => [key, bitsOf(tensorAt(state, key))]));
    await train(model, 2, 3);
    for (const key of Object.keys(state)) assert.ok(bitsOf(tensorAt(state, key)).equals(copies[key]!), `${key} changed with training`);
    // Not vacuous: the weights did move, the moving statistics included.
    const later = captureModelState(model);
    for (const key of Object.keys(state)) assert.ok(!bitsOf(tensorAt(later, key)).equals(copies[key]!), `${key} did not change with training`);
    model.dispose();
  });

  it("restore bit for bit into a fresh model, through a .pt file, which then predicts exactly as the original", async () => {
    const original = compiled(convNet(), tf.train.adam(0.01));
    await train(original, 0, 3);
    const state = await throughFile(captureModelState(original));

    const fresh = convNet();
    assert.notEqual(fresh.weights[0]!.name, original.weights[0]!.name, "tfjs names differ between the models");
    assert.ok(!bitwiseEqual(captureModelState(fresh), state), "not vacuous: the fresh model starts elsewhere");
    restoreModelState(fresh, state);
    assertBitwiseEqual(captureModelState(fresh), captureModelState(original), "restored model");

    const [xs] = batch(99);
    const [a, b] = [original.predict(xs) as tf.Tensor, fresh.predict(xs) as tf.Tensor];
    assert.ok(Buffer.from((a.dataSync() as Float32Array).buffer).equals(Buffer.from((b.dataSync() as Float32Array).buffer)), "predictions differ");
    tf.dispose([xs, a, b]);
    original.dispose();
    fresh.dispose();
  });

  it("leave the restored model independent of the state's tensors: changing them later does not change the model", () => {
    const source = convNet();
    setDistinctWeights(source);
    const state = captureModelState(source);
    const model = convNet();
    restoreModelState(model, state);
    const before = captureModelState(model);
    for (const key of Object.keys(state)) (tensorAt(state, key).data as Float32Array).fill(-7);
    assertBitwiseEqual(captureModelState(model), before, "model after its state was overwritten");
    source.dispose();
    model.dispose();
  });

  it("reject a state missing a key with InvalidArgumentError naming it", () => {
    const model = convNet();
    const state = captureModelState(model);
    delete state["3.bias"];
    expectInvalid(() => restoreModelState(model, state), "3.bias");
    model.dispose();
  });

  it("reject a state with an unexpected key with InvalidArgumentError naming it", () => {
    const model = convNet();
    const state = captureModelState(model);
    state["4.weight"] = Tensor.from(new Float32Array(4), { shape: [2, 2] });
    expectInvalid(() => restoreModelState(model, state), "4.weight");
    model.dispose();
  });

  it("reject a wrong shape with InvalidArgumentError naming the key, the state's shape and the model's, both in PyTorch layout", () => {
    const model = convNet();
    const wrongSize = captureModelState(model);
    wrongSize["3.weight"] = Tensor.from(new Float32Array(2 * 26), { shape: [2, 26] });
    expectInvalid(() => restoreModelState(model, wrongSize), "3.weight", "[2, 26]", "[2, 27]");

    const transposed = captureModelState(model);
    transposed["3.weight"] = Tensor.from(new Float32Array(27 * 2), { shape: [27, 2] });
    expectInvalid(() => restoreModelState(model, transposed), "3.weight", "[27, 2]", "[2, 27]");

    const wrongRank = captureModelState(model);
    wrongRank["0.weight"] = Tensor.from(new Float32Array(3 * 18), { shape: [3, 18] });
    expectInvalid(() => restoreModelState(model, wrongRank), "0.weight", "[3, 18]", "[3, 2, 3, 3]");

    const scalarBias = captureModelState(model);
    scalarBias["1.running_var"] = Tensor.from(new Float32Array(1), { shape: [] });
    expectInvalid(() => restoreModelState(model, scalarBias), "1.running_var", "[]", "[3]");
    model.dispose();
  });

  it("leave the model untouched when it rejects a state", () => {
    const model = convNet();
    setDistinctWeights(model);
    const before = captureModelState(model);
    const other = captureModelState(convNet());
    other["3.weight"] = Tensor.from(new Float32Array(2 * 26), { shape: [2, 26] }); // the last key but one is wrong
    expectInvalid(() => restoreModelState(model, other), "3.weight");
    assertBitwiseEqual(captureModelState(model), before, "model after a rejected restore");
    model.dispose();
  });
});

interface OptimizerCase {
  name: string;
  className: string;
  make: () => tf.Optimizer;
  /** PyTorch's names of the per-parameter slots captureOptimizerState writes. */
  slots: string[];
  /** False when tfjs's updates do not depend on the slots, so forgetting them changes nothing. */
  stateSteers?: false;
}

const OPTIMIZERS: OptimizerCase[] = [
  { name: "Adam", className: "Adam", make: () => tf.train.adam(0.01), slots: ["exp_avg", "exp_avg_sq"] },
  { name: "SGD", className: "SGD", make: () => tf.train.sgd(0.05), slots: [] },
  { name: "Momentum", className: "Momentum", make: () => tf.train.momentum(0.05, 0.9), slots: ["momentum_buffer"] },
  { name: "Momentum with Nesterov", className: "Momentum", make: () => tf.train.momentum(0.05, 0.9, true), slots: ["momentum_buffer"] },
  { name: "RMSProp", className: "RMSProp", make: () => tf.train.rmsprop(0.01, 0.9, 0.5), slots: ["square_avg", "momentum_buffer"] },
  // tfjs 4.22's centered RMSProp computes sqrt(ms - (mg² + epsilon)) where TensorFlow adds epsilon, so
  // one zero gradient (a ReLU that never fires) makes every weight NaN; a negative epsilon gives
  // TensorFlow's sqrt(ms - mg² + |epsilon|) and keeps the comparison meaningful.
  { name: "centered RMSProp", className: "RMSProp", make: () => tf.train.rmsprop(0.01, 0.9, 0.5, -1e-7, true), slots: ["square_avg", "momentum_buffer", "grad_avg"] },
  { name: "Adagrad", className: "Adagrad", make: () => tf.train.adagrad(0.1), slots: ["sum"] },
  // tfjs 4.22's Adadelta scales each update by sqrt(acc_delta + eps) / sqrt(square_avg + eps) read
  // before square_avg takes the new gradient; both start at zero and then follow the same
  // arithmetic, so the ratio is always exactly 1 and the slots never steer the weights.
  { name: "Adadelta", className: "Adadelta", make: () => tf.train.adadelta(0.1, 0.95), slots: ["square_avg", "acc_delta"], stateSteers: false },
];

// After 5 steps Adam's running beta2^6 (0.999 multiplied in float32 step by step) differs from
// pow(0.999, 6), which tfjs's setWeights computes: the resume is exact only because the running
// products are saved too.
const STEPS_BEFORE = 5;
const STEPS_AFTER = 4;

function optimizerEntries(state: StateDict): Map<number, StateDict> {
  const entries = state.state;
  assert.ok(entries instanceof Map, "`state` is a Map with int keys");
  return entries as Map<number, StateDict>;
}

/** The optimizer's slots and step count are bitwise the same. */
function assertSameOptimizerState(actual: StateDict, expected: StateDict, what: string): void {
  const [a, e] = [optimizerEntries(actual), optimizerEntries(expected)];
  assert.deepEqual([...a.keys()], [...e.keys()], `${what}: parameter indices`);
  for (const [index, entry] of e) {
    const other = a.get(index)!;
    assert.deepEqual(Object.keys(other), Object.keys(entry), `${what}: keys of parameter ${index}`);
    for (const [key, value] of Object.entries(entry)) {
      if (value instanceof Tensor) assert.ok(bitsOf(other[key] as Tensor).equals(bitsOf(value)), `${what}: ${key} of parameter ${index}`);
      else assert.deepEqual(other[key], value, `${what}: ${key} of parameter ${index}`);
    }
  }
  assert.equal((actual.tfjs as StateDict).iterations, (expected.tfjs as StateDict).iterations, `${what}: iterations`);
}

describe("captureOptimizerState and restoreOptimizerState", () => {
  for (const optimizer of OPTIMIZERS) {
    it(`resume ${optimizer.name} through a .pt file in a fresh model and optimizer, bitwise equal to training on`, async () => {
      const original = compiled(convNet(), optimizer.make());
      await train(original, 0, STEPS_BEFORE);
      const saved = await throughFile({ model: captureModelState(original), optimizer: await captureOptimizerState(original.optimizer, original) });
      await train(original, STEPS_BEFORE, STEPS_AFTER);

      const resumed = compiled(convNet(), optimizer.make());
      assert.notEqual(resumed.weights[0]!.name, original.weights[0]!.name, "tfjs names differ in the new run");
      restoreModelState(resumed, saved.model as StateDict);
      await restoreOptimizerState(resumed.optimizer, resumed, saved.optimizer as StateDict);
      await train(resumed, STEPS_BEFORE, STEPS_AFTER);

      assertBitwiseEqual(captureModelState(resumed), captureModelState(original), `${optimizer.name} resumed`);
      assertSameOptimizerState(await captureOptimizerState(resumed.optimizer, resumed), await captureOptimizerState(original.optimizer, original), `${optimizer.name} resumed`);
      const final = captureModelState(original);
      assert.ok(!bitwiseEqual(final, saved.model as StateDict), "not vacuous: the last steps moved the weights");
      for (const key of Object.keys(final)) assert.ok((tensorAt(final, key).data as Float32Array).every(Number.isFinite), `not vacuous: ${key} is finite`);

      if (optimizer.slots.length > 0 && optimizer.stateSteers !== false) {
        // Not vacuous either: without its state the optimizer ends elsewhere.
        const forgetful = compiled(convNet(), optimizer.make());
        restoreModelState(forgetful, saved.model as StateDict);
        await train(forgetful, STEPS_BEFORE, STEPS_AFTER);
        assert.ok(!bitwiseEqual(captureModelState(forgetful), captureModelState(original)), `${optimizer.name} resumed without its state matches anyway`);
        forgetful.dispose();
      }
      original.dispose();
      resumed.dispose();
    });
  }

  it("write each optimizer's slots under PyTorch's names, in PyTorch layouts, with the step count", async () => {
    for (const optimizer of OPTIMIZERS) {
      const model = compiled(convNet(), optimizer.make());
      await train(model, 0, STEPS_BEFORE);
      const state = await captureOptimizerState(model.optimizer, model);
      const entries = optimizerEntries(state);
      const params = model.trainableWeights;
      assert.equal((state.tfjs as StateDict).class_name, optimizer.className);
      assert.equal((state.tfjs as StateDict).iterations, STEPS_BEFORE);
      if (optimizer.slots.length === 0) {
        assert.equal(entries.size, 0, `${optimizer.name} keeps no per-parameter state`);
      } else {
        assert.deepEqual([...entries.keys()], params.map((_, i) => i), `${optimizer.name}: int keys 0..n-1`);
      }
      const tfjsSlots = (await model.optimizer.getWeights()).slice(1);
      for (const [i, entry] of entries) {
        assert.deepEqual(Object.keys(entry), ["step", ...optimizer.slots], `${optimizer.name} parameter ${i}`);
        if (optimizer.className === "Adam") {
          // As PyTorch keeps it: a 0-dim float32 tensor.
          const step = entry.step as Tensor;
          assert.ok(step instanceof Tensor, "Adam's step is a tensor");
          assert.deepEqual([step.dtype, step.shape], ["float32", []]);
          assert.equal(step.data[0], STEPS_BEFORE);
        } else {
          assert.equal(entry.step, STEPS_BEFORE);
        }
        optimizer.slots.forEach((name, j) => {
          const slot = entry[name] as Tensor;
          const tfjsSlot = tfjsSlots[j * params.length + i]!.tensor;
          const shape = params[i]!.shape as number[];
          // Kernels are transposed exactly as their weights are; the rest keep their layout.
          if (shape.length === 4) assert.deepEqual(slot.shape, [shape[3], shape[2], shape[0], shape[1]]);
          else if (shape.length === 2) assert.deepEqual(slot.shape, [shape[1], shape[0]]);
          else assert.deepEqual(slot.shape, shape);
          const values = tfjsSlot.arraySync();
          for (const index of indices(shape)) {
            const torchIndex = shape.length === 4 ? [index[3]!, index[2]!, index[0]!, index[1]!] : shape.length === 2 ? [index[1]!, index[0]!] : index;
            const expected = index.reduce<unknown>((nested, k) => (nested as unknown[])[k], values) as number;
            assert.equal(element(slot, torchIndex), expected, `${optimizer.name} ${name} of parameter ${i} at [${index.join(", ")}]`);
          }
        });
      }
      model.dispose();
    }
  });

  it("restore a state captured before the first step, into a fresh optimizer and into one that has stepped, both training like a new one", async () => {
    for (const optimizer of OPTIMIZERS) {
      const reference = compiled(convNet(), optimizer.make());
      const saved = await throughFile({ model: captureModelState(reference), optimizer: await captureOptimizerState(reference.optimizer, reference) });
      // PyTorch's state before the first step is an empty dict too; read back it is a plain {}.
      const empty = (saved.optimizer as StateDict).state;
      assert.ok(empty instanceof Map ? empty.size === 0 : Object.keys(empty as StateDict).length === 0, `${optimizer.name}: no per-parameter state yet`);
      await train(reference, 0, STEPS_AFTER);

      const fresh = compiled(convNet(), optimizer.make());
      restoreModelState(fresh, saved.model as StateDict);
      await restoreOptimizerState(fresh.optimizer, fresh, saved.optimizer as StateDict);
      await train(fresh, 0, STEPS_AFTER);
      assertBitwiseEqual(captureModelState(fresh), captureModelState(reference), `${optimizer.name} restored before any step`);

      const stepped = compiled(convNet(), optimizer.make());
      await train(stepped, 50, 2);
      restoreModelState(stepped, saved.model as StateDict);
      await restoreOptimizerState(stepped.optimizer, stepped, saved.optimizer as StateDict);
      await train(stepped, 0, STEPS_AFTER);
      assertBitwiseEqual(captureModelState(stepped), captureModelState(reference), `${optimizer.name} reset to before any step`);
      for (const model of [reference, fresh, stepped]) model.dispose();
    }
  });

  it("refuse a state from another optimizer class, naming both", async () => {
    const pairs: [string, string][] = [["Adam", "SGD"], ["SGD", "Momentum"], ["Momentum", "RMSProp"], ["Adagrad", "Adadelta"], ["Adadelta", "Adam"]];
    for (const [from, to] of pairs) {
      const source = compiled(convNet(), OPTIMIZERS.find((o) => o.className === from)!.make());
      await train(source, 0, 1);
      const saved = await throughFile(await captureOptimizerState(source.optimizer, source));
      const target = compiled(convNet(), OPTIMIZERS.find((o) => o.className === to)!.make());
      await expectInvalidAsync(restoreOptimizerState(target.optimizer, target, saved), from, to);
      source.dispose();
      target.dispose();
    }
  });

  it("refuse an RMSProp state into an RMSProp whose centered setting differs, which keeps another number of slots", async () => {
    for (const [fromCentered, toCentered] of [[false, true], [true, false]] as const) {
      const source = compiled(convNet(), tf.train.rmsprop(0.01, 0.9, 0.5, undefined, fromCentered));
      await train(source, 0, 1);
      const saved = await throughFile(await captureOptimizerState(source.optimizer, source));
      const target = compiled(convNet(), tf.train.rmsprop(0.01, 0.9, 0.5, undefined, toCentered));
      await expectInvalidAsync(restoreOptimizerState(target.optimizer, target, saved), "RMSProp", "grad_avg");
      source.dispose();
      target.dispose();
    }
  });

  it("refuse a state for a model with other shapes or another number of weights, naming the weight and both shapes in PyTorch layout", async () => {
    const source = compiled(convNet(), tf.train.adam(0.01));
    await train(source, 0, 1);
    const saved = await throughFile(await captureOptimizerState(source.optimizer, source));

    const wider = compiled(convNet({ filters: 4 }), tf.train.adam(0.01));
    await expectInvalidAsync(restoreOptimizerState(wider.optimizer, wider, saved), "exp_avg", "0.weight", "[3, 2, 3, 3]", "[4, 2, 3, 3]");
    // The optimizer is left as it was: no slots, still at step 0.
    assert.deepEqual((await wider.optimizer.getWeights()).length, 1);

    const deeper = compiled(convNet({ extraDense: true }), tf.train.adam(0.01));
    await expectInvalidAsync(restoreOptimizerState(deeper.optimizer, deeper, saved), "6 parameters", "the model 8");
    for (const model of [source, wider, deeper]) model.dispose();
  });
});

describe("PyTorch", () => {
  it("loads a captured Conv2D + BatchNormalization + Dense state into nn.Conv2d, nn.BatchNorm2d and nn.Linear, with the same outputs within 1e-5, and an Adam state shaped like its own", async (t) => {
    const python = requireTorch(t);
    if (python === null) return;
    // tfjs: conv (0), relu (1), batch norm (2), flatten (3), dense (4); the relu is its own layer so
    // that layer indices line up with an nn.Sequential of the same modules.
    const model = tf.sequential();
    model.add(tf.layers.conv2d({ inputShape: [...INPUT_SHAPE], filters: 3, kernelSize: 3, kernelInitializer: tf.initializers.glorotUniform({ seed: 4 }) }));
    model.add(tf.layers.activation({ activation: "relu" }));
    model.add(tf.layers.batchNormalization());
    model.add(tf.layers.flatten());
    model.add(tf.layers.dense({ units: OUTPUTS, kernelInitializer: tf.initializers.glorotUniform({ seed: 5 }) }));
    compiled(model, tf.train.adam(0.01));
    await train(model, 0, 5); // biases, BatchNormalization's statistics and Adam's moments all away from their start

    const dir = await mkdtemp(join(root, "torch-"));
    const [modelPath, optimizerPath, inputsPath] = [join(dir, "model.pt"), join(dir, "optimizer.pt"), join(dir, "inputs.json")];
    await dumper.dump(captureModelState(model), modelPath);
    await dumper.dump(await captureOptimizerState(model.optimizer, model), optimizerPath);
    const [xs] = batch(77);
    await writeFile(inputsPath, JSON.stringify(xs.arraySync()));
    const tfjsOutputs = tf.tidy(() => (model.predict(xs) as tf.Tensor).arraySync() as number[][]);
    xs.dispose();

    const script = `
import json, sys, torch
from torch import nn

class ChannelsLastFlatten(nn.Module):
    """tfjs flattens its channels-last [h, w, c] feature maps; PyTorch's are [c, h, w]."""
    def forward(self, x):
        return x.permute(0, 2, 3, 1).flatten(1)

model_path, optimizer_path, inputs_path = sys.argv[1:4]
model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.ReLU(), nn.BatchNorm2d(3, eps=1e-3), ChannelsLastFlatten(), nn.Linear(27, ${OUTPUTS}))
model.load_state_dict(torch.load(model_path), strict=True)
model.eval()
with open(inputs_path) as f:
    x = torch.tensor(json.load(f), dtype=torch.float32).permute(0, 3, 1, 2)  # NHWC -> NCHW
with torch.no_grad():
    outputs = model(x)

saved = torch.load(optimizer_path)
state, groups = saved["state"], saved["param_groups"]
params = list(model.parameters())
report = {
    "outputs": outputs.tolist(),
    "state_type": type(state).__name__,
    "state_keys": [[type(k).__name__, k] for k in state],
    "param_shapes": [list(p.shape) for p in params],
    "entries": [{
        "keys": sorted(entry),
        "step": float(entry["step"]),
        "exp_avg": list(entry["exp_avg"].shape),
        "exp_avg_sq": list(entry["exp_avg_sq"].shape),
        "dtype": str(entry["exp_avg"].dtype),
    } for entry in state.values()],
    "groups": [{
        "betas_type": type(g["betas"]).__name__,
        "betas": list(g["betas"]),
        "lr": g["lr"],
        "lr_type": type(g["lr"]).__name__,
        "eps": g["eps"],
        "params": g["params"],
    } for g in groups],
}
optimizer = torch.optim.Adam(params, lr=0.01)
try:
    optimizer.load_state_dict(saved)
    report["load_state_dict"] = "ok"
    # PyTorch can keep training from it: one step with a gradient moves every parameter.
    before = [p.detach().clone() for p in params]
    for p in params:
        p.grad = torch.ones_like(p)
    optimizer.step()
    report["step_after_load"] = all(not torch.equal(a, p.detach()) for a, p in zip(before, params))
    report["step_count"] = float(optimizer.state_dict()["state"][0]["step"])
except Exception as error:
    report["load_state_dict"] = repr(error)
print(json.dumps(report))
`;
    const report = JSON.parse(runPython(python, script, [modelPath, optimizerPath, inputsPath])) as {
      outputs: number[][];
      state_type: string;
      state_keys: [string, number][];
      param_shapes: number[][];
      entries: { keys: string[]; step: number; exp_avg: number[]; exp_avg_sq: number[]; dtype: string }[];
      groups: { betas_type: string; betas: number[]; lr: number; lr_type: string; eps: number; params: number[] }[];
      load_state_dict: string;
      step_after_load: boolean;
      step_count: number;
    };

    assert.equal(report.outputs.length, BATCH);
    let maxDiff = 0;
    report.outputs.forEach((row, r) => row.forEach((value, c) => (maxDiff = Math.max(maxDiff, Math.abs(value - tfjsOutputs[r]![c]!)))));
    assert.ok(maxDiff <= 1e-5, `max abs diff ${maxDiff}`);
    assert.ok(new Set(report.outputs.map((row) => row[0]!.toFixed(4))).size > 1, "not vacuous: the outputs differ from row to row");

    // The torch parameters, in order: conv weight and bias, batch norm weight and bias, linear weight and bias.
    assert.deepEqual(report.param_shapes, [[3, 2, 3, 3], [3], [3], [3], [OUTPUTS, 27], [OUTPUTS]]);
    assert.equal(report.state_type, "dict");
    assert.deepEqual(report.state_keys, report.param_shapes.map((_, i) => ["int", i]));
    report.entries.forEach((entry, i) => {
      assert.deepEqual(entry.keys, ["exp_avg", "exp_avg_sq", "step"], `parameter ${i}`);
      assert.equal(entry.step, 5);
      assert.deepEqual(entry.exp_avg, report.param_shapes[i], `exp_avg of parameter ${i}`);
      assert.deepEqual(entry.exp_avg_sq, report.param_shapes[i], `exp_avg_sq of parameter ${i}`);
      assert.equal(entry.dtype, "torch.float32");
    });
    assert.equal(report.groups.length, 1);
    const group = report.groups[0]!;
    assert.equal(group.betas_type, "tuple");
    assert.deepEqual(group.betas, [0.9, 0.999]);
    assert.equal(group.lr_type, "float");
    assert.equal(group.lr, 0.01);
    assert.equal(typeof group.eps, "number");
    assert.deepEqual(group.params, [0, 1, 2, 3, 4, 5]);
    assert.equal(report.load_state_dict, "ok", "torch.optim.Adam.load_state_dict accepts the state");
    assert.equal(report.step_after_load, true, "torch.optim.Adam takes a step from the loaded state");
    assert.equal(report.step_count, 6, "and counts on from step 5");

    // The JavaScript view of the same file keeps the Python types too.
    const loaded = (await loader.load(optimizerPath)) as StateDict;
    const betas = ((loaded.param_groups as StateValue[])[0] as StateDict).betas;
    assert.ok(isTuple(betas), "betas is a tuple");
    model.dispose();
  });
});
