// What the benchmark checks after each measured operation: the values loaded (not only their
// byte count), that a load into existing tensors filled them in place, and that a save wrote the
// state's bytes.
import { promises as fsp } from "node:fs";
import { join } from "node:path";
import type { StateDict, StateValue, Tensor } from "./library.js";
import { buildState, collectTensors, countTensorBytes, stateBytes, type ScenarioSpec } from "./scenarios.js";

/**
 * The state a training process that resumes already has: built, then every byte overwritten, so
 * its memory is touched (warm) and a load that fills it in place is visible.
 */
export function liveState(spec: ScenarioSpec): { state: StateDict; tensors: Set<Tensor>; buffers: Uint8Array[]; expected: number[] } {
  const { state, buffers } = buildState(spec);
  const expected = buffers.map((b) => new Float32Array(b.buffer, b.byteOffset, 1)[0]!);
  for (const buffer of buffers) buffer.fill(0);
  return { state, tensors: collectTensors(state), buffers, expected };
}

/** Checks that a load into `live` filled every one of its tensors in place and returned them. */
export function checkLoadedInto(spec: ScenarioSpec, live: ReturnType<typeof liveState>, loaded: StateValue, what: string): void {
  checkLoaded(spec, loaded, what);
  const returned = collectTensors(loaded);
  const inPlace = [...live.tensors].filter((t) => returned.has(t)).length;
  if (inPlace !== live.tensors.size) throw new Error(`${what} returned ${inPlace} of the ${live.tensors.size} existing tensors: the others were allocated anew`);
  live.buffers.forEach((buffer, i) => {
    const floats = new Float32Array(buffer.buffer, buffer.byteOffset, buffer.byteLength / 4);
    if (floats[0] !== live.expected[i] || floats[floats.length - 1] !== live.expected[i]) throw new Error(`${what} did not fill tensor ${i} in place`);
  });
}

/** The shapes of the tensors in plain.bin, in its order: the parameters, then each one's two Adam moments. */
export function tensorShapesInPlainFile(spec: ScenarioSpec): number[][] {
  const shapes = spec.parameters.map((p) => p.shape);
  if (spec.adam) for (const p of spec.parameters) shapes.push(p.shape, p.shape);
  return shapes;
}

export function numelOf(shape: readonly number[]): number {
  return shape.reduce((product, n) => product * n, 1);
}

export function checkLoaded(spec: ScenarioSpec, value: StateValue, what: string): void {
  const bytes = countTensorBytes(value);
  if (bytes !== stateBytes(spec)) throw new Error(`${what} gave ${bytes} bytes of tensors, expected ${stateBytes(spec)}`);
  checkValues(spec, value, what);
}

/**
 * Checks the values, not only the byte count: buildState (and torch_peer.py's build_state) fill
 * the n-th tensor made with n · 10⁻³ — the model's parameters in order, then each parameter's
 * exp_avg and exp_avg_sq — so every tensor's first and last element must be that.
 */
function checkValues(spec: ScenarioSpec, value: StateValue, what: string): void {
  const state = value as { model?: Record<string, unknown>; optimizer?: { state?: unknown } };
  let seed = 0;
  const expect = (tensor: unknown, where: string): void => {
    const expected = Math.fround(++seed * 1e-3);
    const data = (tensor as Tensor | undefined)?.data;
    if (!(data instanceof Float32Array) || data[0] !== expected || data[data.length - 1] !== expected) {
      throw new Error(`${what}: ${where} does not hold the values saved (expected ${expected} throughout)`);
    }
  };
  for (const p of spec.parameters) expect(state.model?.[p.name], `model["${p.name}"]`);
  if (!spec.adam) return;
  const perParameter = state.optimizer?.state;
  spec.parameters.forEach((_, i) => {
    const moments = (perParameter instanceof Map ? perParameter.get(i) : (perParameter as Record<number, unknown> | undefined)?.[i]) as Record<string, unknown> | undefined;
    expect(moments?.exp_avg, `optimizer.state[${i}].exp_avg`);
    expect(moments?.exp_avg_sq, `optimizer.state[${i}].exp_avg_sq`);
  });
}

/** Checks that a file, or the files of a directory, hold at least the state's bytes. */
export async function checkWritten(spec: ScenarioSpec, path: string): Promise<void> {
  const stat = await fsp.stat(path);
  let size = stat.size;
  if (stat.isDirectory()) {
    size = 0;
    for (const name of await fsp.readdir(path)) size += (await fsp.stat(join(path, name))).size;
  }
  if (size < stateBytes(spec)) throw new Error(`${path} has ${size} bytes, less than the state's ${stateBytes(spec)}`);
}
