"""Loads the example's model.pt in PyTorch, rebuilds the network, and runs it.

    /usr/bin/python3 examples/load_in_pytorch.py checkpoints            # best checkpoint, a demo input
    /usr/bin/python3 examples/load_in_pytorch.py checkpoints/step_300 --inputs x.json --json

The network is rebuilt from model.yaml (written by the manager's saveModelMetadata): a stack of
nn.Linear layers with ReLU between them, keyed "0.weight", "0.bias", "1.weight", ... as the
TypeScript side names the Dense layers of its tf.Sequential model.
"""
import argparse
import json
import pathlib
import sys

import torch
from torch import nn


def read_model_card(checkpoint_dir):
    """model.yaml is flat enough to read without a YAML library (not always installed)."""
    text = (checkpoint_dir / "model.yaml").read_text()
    config = {}
    for line in text.splitlines():
        key, _, value = line.strip().partition(":")
        if key in ("inputSize", "outputSize"):
            config[key] = int(value)
        elif key == "hiddenSizes":
            config[key] = []
        elif line.strip().startswith("- ") and "hiddenSizes" in config:
            config["hiddenSizes"].append(int(line.strip()[2:]))
    return config


def pick_step_dir(path):
    """A step directory as given, or the best-scoring one of a checkpoint directory."""
    if (path / "model.pt").exists():
        return path
    steps = [p for p in path.glob("step_*") if p.name[5:].isdigit() and (p / "model.pt").exists()]
    if not steps:
        sys.exit(f"no checkpoint with a model.pt in {path}")
    def score(p):
        s = p / "score.txt"
        return (float(s.read_text()) if s.exists() else float("-inf"), int(p.name[5:]))
    return max(steps, key=score)


class Mlp(nn.Module):
    def __init__(self, sizes):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes, sizes[1:]))

    def forward(self, x):
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = torch.relu(x)
        return x


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("path", type=pathlib.Path, help="a checkpoint directory or one step_N directory")
    parser.add_argument("--inputs", type=pathlib.Path, help="a JSON list of input rows (default: a demo input)")
    parser.add_argument("--json", action="store_true", help="print only the outputs, as JSON")
    args = parser.parse_args()

    step_dir = pick_step_dir(args.path)
    checkpoint_dir = step_dir.parent
    config = read_model_card(checkpoint_dir)
    sizes = [config["inputSize"], *config["hiddenSizes"], config["outputSize"]]

    net = Mlp(sizes)
    state = torch.load(step_dir / "model.pt", weights_only=True)["model"]
    net.layers.load_state_dict(state)  # strict: every key and shape must match
    net.eval()

    if args.inputs:
        rows = json.loads(args.inputs.read_text())
    else:
        rows = [[(i % 5) / 5 - 0.4 for i in range(config["inputSize"])]]
    with torch.no_grad():
        outputs = net(torch.tensor(rows, dtype=torch.float32))

    if args.json:
        print(json.dumps(outputs.tolist()))
    else:
        print(f"loaded {step_dir / 'model.pt'} into {net}")
        for row, out in zip(rows, outputs.tolist()):
            print(f"input {[round(v, 3) for v in row]} -> output {out}")


if __name__ == "__main__":
    main()
