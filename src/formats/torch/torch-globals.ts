import { FormatError } from "../../errors.js";
import { DTYPES, dtypeOfTorchStorage, type DType } from "../../tensor/dtype.js";
import { Storage } from "../../tensor/storage.js";
import { Tensor } from "../../tensor/tensor.js";
import { PY_DTYPE_NAMES, PyDType, markTuple } from "../../values/py-values.js";
import { PickleCallable, type UnpickleContext } from "../pickle/unpickler.js";
import type { FastRebuild } from "../pickle/rebuild-fast-path.js";
import { keepShape } from "../../keep-shapes.js";

/** A storage class named in a pickle (`torch.FloatStorage`): it only says which dtype to read. */
export class TorchStorageType {
  constructor(readonly dtype: DType) {}

  static {
    keepShape(new TorchStorageType("float32"));
  }
}

/**
 * A storage that is a slice of another (legacy files of old PyTorch versions could pickle these):
 * tensors over it become tensors over the whole storage, shifted by `offset` elements.
 */
export class StorageView {
  constructor(
    readonly storage: Storage,
    readonly offset: number,
    readonly numel: number,
  ) {}
}

const orderedDictType = new PickleCallable("collections.OrderedDict", (args, context) => {
  const dict = new Map<unknown, unknown>();
  context.markOrderedDict(dict);
  if (args.length === 1 && Array.isArray(args[0])) {
    for (const pair of args[0]) {
      if (!Array.isArray(pair) || pair.length !== 2) throw new FormatError("TORCH_PICKLE", "OrderedDict items must be (key, value) pairs");
      dict.set(pair[0], pair[1]);
    }
  } else if (args.length !== 0) {
    throw new FormatError("TORCH_PICKLE", "OrderedDict takes no arguments or a list of pairs");
  }
  return dict;
});

const rebuildTensorV2 = new PickleCallable("torch._utils._rebuild_tensor_v2", (args) => {
  // (storage, storage_offset, size, stride, requires_grad, backward_hooks[, metadata])
  if (args.length < 6 || args.length > 7) throw new FormatError("TORCH_PICKLE", `_rebuild_tensor_v2 takes 6 or 7 arguments, got ${args.length}`);
  return rebuildTensor(args[0], args[1], args[2], args[3], args[4]);
});

const rebuildTensorV1 = new PickleCallable("torch._utils._rebuild_tensor", (args) => {
  if (args.length !== 4) throw new FormatError("TORCH_PICKLE", `_rebuild_tensor takes 4 arguments, got ${args.length}`);
  return rebuildTensor(args[0], args[1], args[2], args[3], false);
});

function rebuildParameter(name: string, count: number) {
  return new PickleCallable(`torch._utils.${name}`, (args) => {
    // (data, requires_grad, backward_hooks[, state])
    if (args.length !== count) throw new FormatError("TORCH_PICKLE", `${name} takes ${count} arguments, got ${args.length}`);
    const [data, requiresGrad] = args;
    if (!(data instanceof Tensor) || typeof requiresGrad !== "boolean") throw new FormatError("TORCH_PICKLE", `${name} needs a tensor and a bool`);
    const state = args[3];
    if (state !== undefined && state !== null && !(state instanceof Map && state.size === 0)) {
      throw new FormatError("TORCH_PICKLE", "parameters with extra Python attributes are not supported");
    }
    return new Tensor({ storage: data.storage, shape: data.shape, strides: data.strides, offset: data.offset, requiresGrad, isParameter: true });
  });
}

function rebuildTensor(storage: unknown, offset: unknown, size: unknown, stride: unknown, requiresGrad: unknown): Tensor {
  if (!(storage instanceof Storage) && !(storage instanceof StorageView)) throw new FormatError("TORCH_PICKLE", "a tensor's storage is not a storage");
  if (typeof offset !== "number" || !isIntList(size) || !isIntList(stride) || typeof requiresGrad !== "boolean") {
    throw new FormatError("TORCH_PICKLE", "a tensor's offset, size, stride or requires_grad has the wrong type");
  }
  if (storage instanceof StorageView) {
    // The tensor must stay inside the slice it was saved over, not merely inside the whole storage.
    void new Tensor({ storage: Storage.pending(storage.storage.dtype, storage.numel), shape: size, strides: stride, offset });
    return new Tensor({ storage: storage.storage, shape: size, strides: stride, offset: offset + storage.offset, requiresGrad });
  }
  return new Tensor({ storage, shape: size, strides: stride, offset, requiresGrad });
}

function isIntList(value: unknown): value is number[] {
  if (!Array.isArray(value)) return false;
  for (let i = 0; i < value.length; i++) if (!Number.isSafeInteger(value[i])) return false; // no closure per tensor
  return true;
}

const torchSize = new PickleCallable("torch.Size", (args) => {
  if (args.length !== 1 || !isIntList(args[0])) throw new FormatError("TORCH_PICKLE", "torch.Size takes one tuple of ints");
  return markTuple([...args[0]], "torch.Size");
});

const codecsEncode = new PickleCallable("_codecs.encode", (args) => {
  // How protocol 2 pickles Python 3 bytes: _codecs.encode(text, "latin1").
  const [text, encoding] = args;
  if (typeof text !== "string" || (encoding !== "latin1" && encoding !== "latin-1")) {
    throw new FormatError("TORCH_PICKLE", "_codecs.encode is only allowed as encode(str, 'latin1') for bytes");
  }
  return new Uint8Array(Buffer.from(text, "latin1"));
});

const emptyBytes = new PickleCallable("builtins.bytes", (args) => {
  if (args.length !== 0) throw new FormatError("TORCH_PICKLE", "bytes(...) is only allowed without arguments");
  return new Uint8Array(0);
});

/** The tensor rebuild the unpickler may take a faster path through (rebuild-fast-path.ts). */
export const TENSOR_REBUILD: FastRebuild = { rebuild: rebuildTensorV2, orderedDict: orderedDictType };

const ALLOWED = new Map<string, unknown>([
  ["collections.OrderedDict", orderedDictType],
  ["torch._utils._rebuild_tensor_v2", rebuildTensorV2],
  ["torch._utils._rebuild_tensor", rebuildTensorV1],
  ["torch._utils._rebuild_parameter", rebuildParameter("_rebuild_parameter", 3)],
  ["torch._utils._rebuild_parameter_with_state", rebuildParameter("_rebuild_parameter_with_state", 4)],
  ["torch.Size", torchSize],
  ["_codecs.encode", codecsEncode],
  ["builtins.bytes", emptyBytes],
  ["__builtin__.bytes", emptyBytes],
]);

/**
 * The allow-list of a `.pt` pickle: tensor and parameter rebuilders, storage classes, dtypes,
 * OrderedDict, torch.Size and the encoding of bytes. Anything else is refused by name.
 */
export function findTorchGlobal(module: string, name: string): unknown {
  const qualified = `${module}.${name}`;
  const allowed = ALLOWED.get(qualified);
  if (allowed !== undefined) return allowed;
  if (module === "torch") {
    const dtype = dtypeOfTorchStorage(name);
    if (dtype !== undefined) return new TorchStorageType(dtype);
    if (PY_DTYPE_NAMES.has(name)) return new PyDType(name);
  }
  const unsupported = unsupportedType(module, name);
  if (unsupported !== undefined) throw new FormatError("PICKLE_UNSUPPORTED_TYPE", unsupported);
  throw new FormatError("PICKLE_GLOBAL", `refusing to load the global ${qualified}: it is not on the allow-list of tensor-state types`);
}

/** Storage classes of dtypes that have no DType here (PyTorch's names), by dtype. */
const UNSUPPORTED_STORAGES = new Map([
  ["ComplexDoubleStorage", "complex128"],
  ["ComplexHalfStorage", "complex32"],
  ["QInt8Storage", "qint8"],
  ["QUInt8Storage", "quint8"],
  ["QInt32Storage", "qint32"],
  ["QUInt4x2Storage", "quint4x2"],
  ["QUInt2x4Storage", "quint2x4"],
]);

/**
 * Says why a harmless global PyTorch writes for a value type this library does not support is
 * refused (complex numbers, complex128 and quantized tensors), so the message does not read as a
 * security refusal; undefined for any other global.
 */
function unsupportedType(module: string, name: string): string | undefined {
  const qualified = `${module}.${name}`;
  if ((module === "builtins" || module === "__builtin__") && name === "complex") {
    return `Python complex numbers are not supported (${qualified}): a state's values are None, bool, int, float, str, bytes, lists, tuples, dicts and tensors`;
  }
  if (module !== "torch" || !name.endsWith("Storage")) return undefined;
  const dtype = UNSUPPORTED_STORAGES.get(name) ?? name;
  const kind = dtype.startsWith("complex") ? "complex tensors other than complex64" : `${dtype} tensors`;
  return `${kind} are not supported (${qualified} holds ${dtype}); the supported dtypes are ${Object.keys(DTYPES).join(", ")}`;
}

/** BUILD: OrderedDicts get their instance attributes (PyTorch's `_metadata`); nothing else has state. */
export function buildTorchObject(object: unknown, state: unknown, context: UnpickleContext): void {
  if (object instanceof Map && context.isOrderedDict(object) && state instanceof Map) {
    context.setOrderedDictAttributes(object, state);
    return;
  }
  if (object instanceof Tensor && (state === null || (state instanceof Map && state.size === 0))) return;
  throw new FormatError("PICKLE_BUILD", "the pickle sets the state of an object that has none");
}
