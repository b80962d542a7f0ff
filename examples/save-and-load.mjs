// Saves a small training state as a PyTorch .pt file and loads it back.
// Run: npm install && npm run example   (then, with PyTorch: python3 -c "import torch; print(torch.load('...'))")
import { mkdtemp } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Tensor, TorchTensorDumper, TorchTensorLoader, orderedDict, tuple } from "ckpt";

const weight = Tensor.from(Float32Array.from({ length: 12 }, (_, i) => i / 10), { shape: [3, 4] });
const bias = Tensor.from(new Float32Array([0.1, 0.2, 0.3]));
const state = {
  model: orderedDict({ "linear.weight": weight, "linear.bias": bias }),
  optimizer: {
    state: new Map([[0, { step: 10, exp_avg: Tensor.zeros([3, 4]) }]]),
    param_groups: [{ lr: 0.001, betas: tuple(0.9, 0.999), params: [0, 1] }],
  },
  step_nr: 10,
};

const path = join(await mkdtemp(join(tmpdir(), "ckpt-example-")), "state.pt");
await new TorchTensorDumper().dump(state, path);
const loaded = await new TorchTensorLoader().load(path);

console.log(`saved and reloaded ${path}`);
console.log("step_nr:", loaded.step_nr);
console.log("linear.weight:", loaded.model["linear.weight"].shape, Array.from(loaded.model["linear.weight"].data));
console.log("optimizer state keys:", [...loaded.optimizer.state.keys()]);
console.log(`\nOpen it in PyTorch:\n  /usr/bin/python3 -c "import torch; print(torch.load('${path}'))"`);
