import { TensorLoadError } from "../errors.js";
import { readTorchStructure } from "../formats/torch/torch-reader.js";
import { ZipReader, type ZipEntry } from "../formats/zip/zip-reader.js";
import type { FileReader, FileSystem } from "../fs/file-system.js";
import { swapByteOrder } from "../tensor/byte-order.js";
import { DTYPES } from "../tensor/dtype.js";
import type { Storage } from "../tensor/storage.js";
import type { Tensor } from "../tensor/tensor.js";
import type { StateValue } from "../values/py-values.js";

/**
 * A `.pt` file opened for reading parts of its tensors: its structure (every storage pending) and
 * positioned reads of element ranges of a storage straight into the caller's buffer. Resharding
 * reads only the rows a rank needs this way, never the whole file. Close it when done.
 */
export interface TensorRegionFile {
  readonly path: string;
  /** The file's size in bytes. */
  readonly size: number;
  /** The state; its tensors' storages are pending until `readWhole` (ShardedTensors revived). */
  readonly state: StateValue;
  /** Reads `count` elements of `tensor`'s storage from element `start` into `target` (exactly that many bytes). */
  readElements(tensor: Tensor, start: number, count: number, target: Uint8Array): Promise<void>;
  /** Reads a tensor's whole storage (once), after which its data can be used. */
  readWhole(tensor: Tensor): Promise<void>;
  close(): Promise<void>;
}

/**
 * Opens a PyTorch `.pt` file for region reads: the zip directory and the small entries are read
 * (each checked against its CRC-32), the storages are not. Errors are TensorLoadErrors naming it.
 */
export async function openTensorRegions(fileSystem: FileSystem, path: string): Promise<TensorRegionFile> {
  let reader: FileReader;
  try {
    reader = await fileSystem.openReader(path);
  } catch (error) {
    throw new TensorLoadError(path, `cannot open the file: ${(error as Error).message}`, { cause: error });
  }
  const fail = (what: string, error: unknown): TensorLoadError => new TensorLoadError(path, `${what}: ${(error as Error).message}`, { cause: error });
  let zip: ZipReader;
  let structure: Awaited<ReturnType<typeof readTorchStructure>>;
  try {
    zip = await ZipReader.open(reader);
    structure = await readTorchStructure(zip);
  } catch (error) {
    await reader.close().catch(() => undefined);
    throw fail("not a valid PyTorch file", error);
  }
  const entries = new Map<Storage, ZipEntry>(structure.storages.map((storage, i) => [storage, structure.entries[i]!]));
  const starts = new Map<Storage, number>();
  const wholeRead = new Set<Storage>();
  const dataStart = async (storage: Storage): Promise<number> => {
    const known = starts.get(storage);
    if (known !== undefined) return known;
    const entry = entries.get(storage);
    if (entry === undefined) throw new Error("the tensor is not one of this file's");
    const start = await zip.dataOffset(entry);
    starts.set(storage, start);
    return start;
  };
  return {
    path,
    size: reader.size,
    state: structure.state,
    async readElements(tensor, start, count, target) {
      const storage = tensor.storage;
      const { itemSize } = DTYPES[storage.dtype];
      if (!Number.isSafeInteger(start) || start < 0 || count < 0 || start + count > storage.numel || target.byteLength !== count * itemSize) {
        throw new TensorLoadError(path, `a read of ${count} elements at ${start} does not fit a storage of ${storage.numel}`);
      }
      try {
        const bytes = await reader.read((await dataStart(storage)) + start * itemSize, count * itemSize, target);
        if (bytes !== target && bytes.buffer !== target.buffer) target.set(bytes);
        if (structure.bigEndian) swapByteOrder(target, storage.dtype === "complex64" ? 4 : itemSize);
      } catch (error) {
        throw fail("cannot read a tensor's bytes", error);
      }
    },
    async readWhole(tensor) {
      const storage = tensor.storage;
      if (wholeRead.has(storage)) return;
      const entry = entries.get(storage);
      if (entry === undefined) return;
      try {
        const bytes = await zip.readEntry(entry);
        if (structure.bigEndian) swapByteOrder(bytes, storage.dtype === "complex64" ? 4 : DTYPES[storage.dtype].itemSize);
        storage.attach(bytes);
        wholeRead.add(storage);
      } catch (error) {
        throw fail("cannot read a tensor's bytes", error);
      }
    },
    close: () => reader.close(),
  };
}
