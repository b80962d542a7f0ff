/**
 * Loads one large legacy torch.save file in a fresh process and reports how much its peak resident
 * set grew, so the measurement is not blurred by whatever else a test process has done.
 *
 *   node --import tsx legacy-memory-child.ts FILE whole|into NUMEL_OF_BIG
 *
 * The file holds `big` (int32: 0, 1, 2, …), `small` (the same, 4000 elements) and `view`
 * (small[1000:2000]). "whole" loads it as is;
 * "into" first allocates and touches a live `big` of the same shape and loads into it in place.
 * Prints JSON: { peakGrowth, rssGrowth, checks }.
 */
import { Tensor, TorchTensorLoader, type StateDict } from "../../src/index.js";

const [path, mode, bigNumel] = process.argv.slice(2) as [string, "whole" | "into", string];
const loader = new TorchTensorLoader();

// The live tensor is allocated and touched before measuring: only what loading adds counts.
const into: StateDict | undefined = mode === "into" ? { big: Tensor.from(new Int32Array(Number(bigNumel)).fill(-1)) } : undefined;

const peakBefore = process.resourceUsage().maxRSS * 1024;
const rssBefore = process.memoryUsage().rss;
const state = (await loader.load(path, into === undefined ? {} : { into })) as StateDict;
const peakGrowth = process.resourceUsage().maxRSS * 1024 - peakBefore;
const rssGrowth = process.memoryUsage().rss - rssBefore;

const big = state.big as Tensor;
const small = state.small as Tensor;
const view = state.view as Tensor;
const data = big.data as Int32Array;
const n = data.length;
const checks = {
  numel: n,
  sampled: [0, 1, 12345, Math.floor(n / 2), n - 1].every((i) => data[i] === i),
  viewShares: view.storage === small.storage && view.offset === 1000 && (view.data as Int32Array)[999] === 1999,
  inPlace: into !== undefined && state.big === into.big,
};
console.log(JSON.stringify({ peakGrowth, rssGrowth, checks }));
