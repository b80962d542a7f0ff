"""A canonical, typed description of a state saved with torch.save, as plain JSON.

test/helpers/describe.ts gives exactly the same JSON for the values ckpt loads, so comparing the two
descriptions checks every Python type survives, not only the values: an int is not a float (0 is
not 0.0), a tuple is not a list, an OrderedDict keeps its `_metadata`, a tensor keeps its dtype,
strides, storage offset and which tensors share a storage.

    {"type": "none"} | {"type": "bool", "value": true}
    {"type": "int", "value": "-12"}                        decimal, so ints beyond 2^53 are exact
    {"type": "float", "value": "-0.0"}                     repr(): exact, and "nan", "inf", "-0.0"
    {"type": "str", "value": "..."} | {"type": "bytes", "hex": "00ff"}
    {"type": "list" | "tuple" | "torch.Size", "items": [...]}
    {"type": "dict", "items": [[key, value], ...]}         in iteration order
    {"type": "OrderedDict", "items": [...], "attributes": dict description or null}
    {"type": "dtype", "value": "float16"}
    {"type": "tensor", "dtype", "shape", "stride", "storage_offset", "storage", "storage_numel",
     "requires_grad", "is_parameter", "data"}

A tensor's "storage" numbers storages in the order they are first met, so tensors share a number
exactly when they share a storage (the same data_ptr); "data" is the hex of its elements' bytes in
row-major order (16-bit floats as their raw words, so NaN payloads and -0.0 compare exactly).

Usage: python describe.py [--weights-only] FILE... prints a JSON list with, for each file,
{"path", "description"} or {"path", "error"} (torch.load refused it).
"""

import collections
import json
import sys

import torch


class Describer:
    def __init__(self):
        self.storage_ids = {}

    def storage_id(self, tensor):
        storage = tensor.storage()
        # Empty storages all have data_ptr 0; torch.save keeps them apart by their StorageImpl.
        key = storage.data_ptr() if storage.nbytes() > 0 else ("empty", storage._cdata)
        return self.storage_ids.setdefault(key, len(self.storage_ids))

    def tensor(self, value):
        flat = value.detach().contiguous().reshape(-1)
        if flat.dtype == torch.bfloat16:
            flat = flat.view(torch.int16)  # numpy has no bfloat16; the raw words are what we compare
        return {
            "type": "tensor",
            "dtype": str(value.dtype).removeprefix("torch."),
            "shape": list(value.shape),
            "stride": list(value.stride()),
            "storage_offset": value.storage_offset(),
            "storage": self.storage_id(value),
            "storage_numel": value.storage().size(),
            "requires_grad": value.requires_grad,
            "is_parameter": isinstance(value, torch.nn.Parameter),
            "data": flat.numpy().tobytes().hex(),
        }

    def dict_items(self, value):
        return [[self.describe(key), self.describe(item)] for key, item in value.items()]

    def describe(self, value):
        if value is None:
            return {"type": "none"}
        if isinstance(value, bool):
            return {"type": "bool", "value": value}
        if isinstance(value, int):
            return {"type": "int", "value": str(value)}
        if isinstance(value, float):
            return {"type": "float", "value": repr(value)}
        if isinstance(value, str):
            return {"type": "str", "value": value}
        if isinstance(value, bytes):
            return {"type": "bytes", "hex": value.hex()}
        if isinstance(value, torch.dtype):
            return {"type": "dtype", "value": str(value).removeprefix("torch.")}
        if isinstance(value, torch.Tensor):
            return self.tensor(value)
        if isinstance(value, torch.Size):
            return {"type": "torch.Size", "items": [self.describe(item) for item in value]}
        if type(value) is tuple:
            return {"type": "tuple", "items": [self.describe(item) for item in value]}
        if type(value) is list:
            return {"type": "list", "items": [self.describe(item) for item in value]}
        if type(value) is collections.OrderedDict:
            attributes = vars(value)
            return {
                "type": "OrderedDict",
                "items": self.dict_items(value),
                "attributes": {"type": "dict", "items": self.dict_items(attributes)} if attributes else None,
            }
        if type(value) is dict:
            return {"type": "dict", "items": self.dict_items(value)}
        raise TypeError(f"cannot describe a {type(value).__name__}")


def describe(value):
    """The description of one saved object; storage numbers start afresh for each object."""
    return Describer().describe(value)


def describe_file(path, weights_only=False):
    if weights_only:
        return describe(torch.load(path, weights_only=True))
    return describe(torch.load(path))


def main(argv):
    weights_only = "--weights-only" in argv
    results = []
    for path in (arg for arg in argv if arg != "--weights-only"):
        try:
            results.append({"path": path, "description": describe_file(path, weights_only)})
        except Exception as error:  # reported per file, so one refusal does not hide the others
            results.append({"path": path, "error": f"{type(error).__name__}: {error}"})
    json.dump(results, sys.stdout)


if __name__ == "__main__":
    main(sys.argv[1:])
