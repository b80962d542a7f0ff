/** The element types a tensor can hold, named as in PyTorch (`torch.float32` is `"float32"`). */
export type DType =
  | "float32"
  | "float64"
  | "float16"
  | "bfloat16"
  | "int8"
  | "uint8"
  | "int16"
  | "int32"
  | "int64"
  | "bool"
  | "complex64";

/** The typed array that holds a dtype's elements. 16-bit floats are raw words in a Uint16Array. */
export type TypedArray =
  | Float32Array
  | Float64Array
  | Int8Array
  | Uint8Array
  | Int16Array
  | Uint16Array
  | Int32Array
  | BigInt64Array;

type TypedArrayConstructor =
  | Float32ArrayConstructor
  | Float64ArrayConstructor
  | Int8ArrayConstructor
  | Uint8ArrayConstructor
  | Int16ArrayConstructor
  | Uint16ArrayConstructor
  | Int32ArrayConstructor
  | BigInt64ArrayConstructor;

export interface DTypeInfo {
  readonly itemSize: number;
  /** PyTorch's legacy storage class, as written in `.pt` pickles (`torch.FloatStorage`). */
  readonly torchStorage: string;
  /** The dtype's name in safetensors headers. */
  readonly safetensors: string;
  /** The typed array that views this dtype's bytes (complex64 is viewed as interleaved float32). */
  readonly arrayType: TypedArrayConstructor;
}

export const DTYPES: Readonly<Record<DType, DTypeInfo>> = {
  float32: { itemSize: 4, torchStorage: "FloatStorage", safetensors: "F32", arrayType: Float32Array },
  float64: { itemSize: 8, torchStorage: "DoubleStorage", safetensors: "F64", arrayType: Float64Array },
  float16: { itemSize: 2, torchStorage: "HalfStorage", safetensors: "F16", arrayType: Uint16Array },
  bfloat16: { itemSize: 2, torchStorage: "BFloat16Storage", safetensors: "BF16", arrayType: Uint16Array },
  int8: { itemSize: 1, torchStorage: "CharStorage", safetensors: "I8", arrayType: Int8Array },
  uint8: { itemSize: 1, torchStorage: "ByteStorage", safetensors: "U8", arrayType: Uint8Array },
  int16: { itemSize: 2, torchStorage: "ShortStorage", safetensors: "I16", arrayType: Int16Array },
  int32: { itemSize: 4, torchStorage: "IntStorage", safetensors: "I32", arrayType: Int32Array },
  int64: { itemSize: 8, torchStorage: "LongStorage", safetensors: "I64", arrayType: BigInt64Array },
  bool: { itemSize: 1, torchStorage: "BoolStorage", safetensors: "BOOL", arrayType: Uint8Array },
  complex64: { itemSize: 8, torchStorage: "ComplexFloatStorage", safetensors: "C64", arrayType: Float32Array },
};

export function isDType(name: unknown): name is DType {
  return typeof name === "string" && Object.hasOwn(DTYPES, name);
}

const byTorchStorage = new Map(Object.entries(DTYPES).map(([dtype, info]) => [info.torchStorage, dtype as DType]));

/** The dtype of a PyTorch storage class name (`"FloatStorage"` → `"float32"`), or undefined. */
export function dtypeOfTorchStorage(className: string): DType | undefined {
  return byTorchStorage.get(className);
}

/** The dtype a typed array holds when nobody says otherwise; 16-bit words need an explicit dtype. */
export function defaultDTypeOf(array: TypedArray): DType | undefined {
  if (array instanceof Float32Array) return "float32";
  if (array instanceof Float64Array) return "float64";
  if (array instanceof Int8Array) return "int8";
  if (array instanceof Uint8Array) return "uint8";
  if (array instanceof Int16Array) return "int16";
  if (array instanceof Int32Array) return "int32";
  if (array instanceof BigInt64Array) return "int64";
  return undefined;
}
