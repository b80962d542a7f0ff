import { PyDType, PyFloat, getOrderedDictAttributes, isFloatSlot, isOrderedDict, tupleKind } from "../../src/values/py-values.js";
import type { Storage } from "../../src/tensor/storage.js";
import { Tensor } from "../../src/tensor/tensor.js";

/**
 * The canonical typed description of a state, exactly as test/helpers/describe.py gives it for the
 * same Python object (see there for the format). Comparing the two checks types, not only values:
 * 0 against 0.0, a tuple against a list, OrderedDict attributes, strides and shared storages.
 */
export type Description =
  | { type: "none" }
  | { type: "bool"; value: boolean }
  | { type: "int" | "float" | "str" | "dtype"; value: string }
  | { type: "bytes"; hex: string }
  | { type: "list" | "tuple" | "torch.Size"; items: Description[] }
  | { type: "dict"; items: [Description, Description][] }
  | { type: "OrderedDict"; items: [Description, Description][]; attributes: Description | null }
  | TensorDescription;

export interface TensorDescription {
  type: "tensor";
  dtype: string;
  shape: number[];
  stride: number[];
  storage_offset: number;
  storage: number;
  storage_numel: number;
  requires_grad: boolean;
  is_parameter: boolean;
  data: string;
}

/** Describes `value`; storages are numbered afresh, in the order they are first met. */
export function describe(value: unknown): Description {
  const storageIds = new Map<Storage, number>();
  const storageId = (storage: Storage): number => {
    let id = storageIds.get(storage);
    if (id === undefined) storageIds.set(storage, (id = storageIds.size));
    return id;
  };

  const dictItems = (dict: object): [Description, Description][] => {
    if (dict instanceof Map) return [...dict].map(([key, item]) => [visit(key), visit(item, dict, key)]);
    return Object.keys(dict).map((key) => [visit(key), visit((dict as Record<string, unknown>)[key], dict, key)]);
  };

  const visit = (value: unknown, container?: object, key?: unknown): Description => {
    switch (typeof value) {
      case "boolean":
        return { type: "bool", value };
      case "bigint":
        return { type: "int", value: value.toString() };
      case "number": {
        // As the pickler decides: only safe integers are ints.
        const isFloat = !Number.isSafeInteger(value) || Object.is(value, -0) || (container !== undefined && isFloatSlot(container, key));
        return isFloat ? { type: "float", value: pythonFloatRepr(value) } : { type: "int", value: BigInt(value).toString() };
      }
      case "string":
        return { type: "str", value };
      case "object":
        break;
      default:
        throw new TypeError(`a ${typeof value} is not a state value`);
    }
    if (value === null) return { type: "none" };
    if (value instanceof PyFloat) return { type: "float", value: pythonFloatRepr(value.value) };
    if (value instanceof PyDType) return { type: "dtype", value: value.name };
    if (value instanceof Tensor) {
      return {
        type: "tensor",
        dtype: value.dtype,
        shape: [...value.shape],
        stride: [...value.strides],
        storage_offset: value.offset,
        storage: storageId(value.storage),
        storage_numel: value.storage.numel,
        requires_grad: value.requiresGrad,
        is_parameter: value.isParameter,
        data: Buffer.from(value.bytes).toString("hex"),
      };
    }
    if (value instanceof Uint8Array) return { type: "bytes", hex: Buffer.from(value).toString("hex") };
    if (Array.isArray(value)) {
      const items = value.map((item, i) => visit(item, value, i));
      return { type: tupleKind(value) ?? "list", items };
    }
    if (isOrderedDict(value)) {
      const attributes = getOrderedDictAttributes(value);
      const hasAttributes = attributes !== undefined && dictItems(attributes).length > 0;
      return { type: "OrderedDict", items: dictItems(value), attributes: hasAttributes ? { type: "dict", items: dictItems(attributes) } : null };
    }
    if (value instanceof Map || Object.getPrototypeOf(value) === Object.prototype || Object.getPrototypeOf(value) === null) {
      return { type: "dict", items: dictItems(value) };
    }
    throw new TypeError(`a ${value.constructor?.name ?? "value"} is not a state value`);
  };

  return visit(value);
}

/**
 * Python's `repr(float)`: the shortest digits that read back as the same double (JavaScript's
 * `toExponential()` finds the same ones), laid out in fixed notation for exponents -4 to 15 and in
 * scientific notation with at least two exponent digits otherwise.
 */
export function pythonFloatRepr(x: number): string {
  if (Number.isNaN(x)) return "nan";
  if (x === Infinity) return "inf";
  if (x === -Infinity) return "-inf";
  if (x === 0) return Object.is(x, -0) ? "-0.0" : "0.0";
  const [mantissa = "", exponent = ""] = x.toExponential().split("e");
  const sign = x < 0 ? "-" : "";
  const digits = mantissa.replace("-", "").replace(".", "");
  const exp = Number(exponent);
  if (exp < -4 || exp >= 16) {
    const head = digits.length > 1 ? `${digits[0]}.${digits.slice(1)}` : digits;
    return `${sign}${head}e${exp < 0 ? "-" : "+"}${String(Math.abs(exp)).padStart(2, "0")}`;
  }
  if (exp < 0) return `${sign}0.${"0".repeat(-exp - 1)}${digits}`;
  if (digits.length <= exp + 1) return `${sign}${digits}${"0".repeat(exp + 1 - digits.length)}.0`;
  return `${sign}${digits.slice(0, exp + 1)}.${digits.slice(exp + 1)}`;
}
