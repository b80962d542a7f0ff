// The example's network and data, shared by the training script and its tests.
import * as tf from "@tensorflow/tfjs";

export const MODEL_FAMILY = "mlp";
/** A small regressor: FEATURES inputs, two hidden ReLU layers, one output. */
export const MODEL_CONFIG = { inputSize: 8, hiddenSizes: [32, 32], outputSize: 1, activation: "relu" } as const;

export function buildModel(): tf.Sequential {
  const { inputSize, hiddenSizes, outputSize, activation } = MODEL_CONFIG;
  const model = tf.sequential();
  const sizes = [...hiddenSizes, outputSize];
  sizes.forEach((units, i) => {
    model.add(
      tf.layers.dense({
        units,
        activation: i < sizes.length - 1 ? activation : "linear",
        ...(i === 0 ? { inputShape: [inputSize] } : {}),
        // Fixed seeds: every run starts from the same weights.
        kernelInitializer: tf.initializers.glorotUniform({ seed: 17 + i }),
        biasInitializer: "zeros",
      }),
    );
  });
  return model;
}

/** mulberry32: a tiny seeded PRNG whose whole state is one 32-bit integer, easy to checkpoint. */
export class Random {
  constructor(public state: number) {}

  next(): number {
    this.state = (this.state + 0x6d2b79f5) >>> 0;
    let t = this.state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }

  /** A random permutation of 0..n-1 (Fisher–Yates). */
  permutation(n: number): Int32Array {
    const order = Int32Array.from({ length: n }, (_, i) => i);
    for (let i = n - 1; i > 0; i--) {
      const j = Math.floor(this.next() * (i + 1));
      [order[i], order[j]] = [order[j]!, order[i]!];
    }
    return order;
  }
}

/** A synthetic data set: y = sin(x·a) + 0.5·(x·b) plus a little noise, from a fixed seed. */
export function makeDataset(size: number, seed: number): { x: Float32Array; y: Float32Array } {
  const { inputSize } = MODEL_CONFIG;
  const random = new Random(seed);
  const a = Array.from({ length: inputSize }, () => random.next() * 2 - 1);
  const b = Array.from({ length: inputSize }, () => random.next() * 2 - 1);
  const x = new Float32Array(size * inputSize);
  const y = new Float32Array(size);
  for (let i = 0; i < size; i++) {
    let dotA = 0;
    let dotB = 0;
    for (let f = 0; f < inputSize; f++) {
      const value = random.next() * 2 - 1;
      x[i * inputSize + f] = value;
      dotA += value * a[f]!;
      dotB += value * b[f]!;
    }
    y[i] = Math.sin(2 * dotA) + 0.5 * dotB + (random.next() - 0.5) * 0.05;
  }
  return { x, y };
}
