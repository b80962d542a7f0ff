"""The peer the benchmark compares with: torch.save (plus fsync) and torch.load in one fresh process.

    python3 bench/torch_peer.py prepare|save|load SPEC.json WORKDIR

SPEC.json is the scenario bench/scenarios.ts describes; the state is built with the same structure
and tensor sizes (the values differ). `prepare` writes WORKDIR/torch.pt for the loads; `save`
writes a new file and removes it. Prints one line of JSON: {"seconds", "peakBytes", "baselineBytes"},
timed with time.perf_counter; peak memory is ru_maxrss above the resident size just before.
"""

import gc
import json
import math
import os
import resource
import sys
import tempfile
import time

import torch

TORCH_FILE = "torch.pt"


def build_state(spec):
    """As bench/scenarios.ts buildState: every tensor written once, so its memory is touched."""
    seed = 0

    def tensor(shape):
        nonlocal seed
        seed += 1
        return torch.full(shape, seed * 1e-3, dtype=torch.float32)

    model = {p["name"]: tensor(p["shape"]) for p in spec["parameters"]}
    state = {"model": model}
    if spec["adam"]:
        per_parameter = {}
        for i, p in enumerate(spec["parameters"]):
            per_parameter[i] = {"step": 1000.0, "exp_avg": tensor(p["shape"]), "exp_avg_sq": tensor(p["shape"])}
        group = {"lr": 0.001, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0, "amsgrad": False,
                 "params": list(range(len(spec["parameters"])))}
        state["optimizer"] = {"state": per_parameter, "param_groups": [group]}
    state["step_nr"] = 1000
    return state


def warm_up_spec():
    """As bench/scenarios.ts warmUpSpec."""
    parameters = [{"name": "embed.weight", "shape": [8, 64]}]
    for i in range(16):
        parameters += [{"name": f"layers.{i}.weight", "shape": [8, 64]}, {"name": f"layers.{i}.bias", "shape": [64]}]
    return {"id": "warm-up", "parameters": parameters, "adam": True}


def save_and_sync(state, path):
    # A path (not a file object) lets torch write with its own C++ writer, its fastest way.
    torch.save(state, path)
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def tensor_bytes(value):
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, dict):
        return sum(tensor_bytes(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(tensor_bytes(v) for v in value)
    return 0


def state_bytes(spec):
    parameter_bytes = sum(4 * math.prod(p["shape"]) for p in spec["parameters"])
    return parameter_bytes * (3 if spec["adam"] else 1)


def resident_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def reset_peak_memory():
    """Resets the kernel's peak-RSS mark to the current RSS, so ru_maxrss is this operation's peak."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def measure(op, spec, workdir):
    state = build_state(spec) if op == "save" else None
    target = os.path.join(workdir, f"out-{os.getpid()}.pt")
    source = os.path.join(workdir, TORCH_FILE)
    gc.collect()
    reset_peak_memory()
    baseline = resident_bytes()
    start = time.perf_counter()
    if op == "save":
        save_and_sync(state, target)
    else:
        loaded = torch.load(source)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - baseline
    if op == "save":
        os.remove(target)
    else:
        got, want = tensor_bytes(loaded), state_bytes(spec)
        if got != want:
            raise SystemExit(f"torch.load gave {got} bytes of tensors, expected {want}")
    return {"seconds": seconds, "peakBytes": peak, "baselineBytes": baseline}


def main():
    if len(sys.argv) != 4 or sys.argv[1] not in ("prepare", "save", "load"):
        raise SystemExit(__doc__)
    op, spec_path, workdir = sys.argv[1:]
    with open(spec_path) as f:
        spec = json.load(f)
    if op == "prepare":
        save_and_sync(build_state(spec), os.path.join(workdir, TORCH_FILE))
        print(json.dumps({"prepared": True}))
        return
    # Warm-up: the same operation on a tiny state, so lazily imported code is loaded first.
    with tempfile.TemporaryDirectory(dir=workdir) as warm_dir:
        warm = warm_up_spec()
        save_and_sync(build_state(warm), os.path.join(warm_dir, TORCH_FILE))
        measure(op, warm, warm_dir)
    print(json.dumps(measure(op, spec, workdir)))


if __name__ == "__main__":
    main()
