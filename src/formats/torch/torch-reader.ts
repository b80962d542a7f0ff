import { FormatError } from "../../errors.js";
import { DTYPES } from "../../tensor/dtype.js";
import { swapByteOrder } from "../../tensor/byte-order.js";
import { Storage } from "../../tensor/storage.js";
import type { StateValue } from "../../values/py-values.js";
import { MAX_BUFFER_BYTES } from "../byte-io.js";
import type { FastRebuild } from "../pickle/rebuild-fast-path.js";
import { unpickle, type UnpickleContext, type UnpickleOptions } from "../pickle/unpickler.js";
import { decimalNumber } from "../zip/zip-directory.js";
import type { ZipEntry, ZipReader } from "../zip/zip-reader.js";
import { mayHoldShardedRecords, reviveShardedTensors } from "./sharded-record.js";
import { TENSOR_REBUILD, TorchStorageType, buildTorchObject, findTorchGlobal } from "./torch-globals.js";
import { matchTargets } from "./target-matching.js";
import { keepShape } from "../../keep-shapes.js";

export { matchTargets } from "./target-matching.js";

export interface TorchReadOptions {
  /** Check each entry's CRC-32 (default true): PyTorch does not, so a flipped bit would pass. */
  verifyCrc?: boolean;
  /**
   * Existing tensors to read into: where the file has a tensor at the same path (same keys and
   * indices from the root) as a tensor here, its elements are read into that tensor (straight
   * from the file, or copied when the file's tensor is a view), which is returned in its place.
   * A tensor here of another dtype or shape, or not contiguous, is an InvalidArgumentError naming
   * its path, raised before any tensor is written. Paths with no tensor here load as usual.
   */
  into?: StateValue;
  /** Called after each storage is read, with bytes done and bytes in all. */
  onProgress?: (bytesDone: number, bytesTotal: number) => void;
}

/** Archive format versions PyTorch has written (1.6 through 2.x write 3). */
const MAX_ARCHIVE_VERSION = 10;

/**
 * Reads the state in a PyTorch zip archive (`torch.save` since 1.6): `<root>/data.pkl` unpickled
 * against the allow-list, each `<root>/data/<key>` entry a storage. The pickle is read first, so
 * each storage can then be read straight to where it belongs.
 */
export async function readTorchArchive(zip: ZipReader, options: TorchReadOptions = {}): Promise<StateValue> {
  const verifyCrc = options.verifyCrc ?? true;
  return readTorchStorages(zip, await readTorchStructure(zip, { verifyCrc }), options);
}

/**
 * Reads the storages of a structure read before (`readTorchStructure`, possibly from another
 * reader of the same file: the loader parses the pickle while the whole file is being read).
 */
export async function readTorchStorages(zip: ZipReader, structure: TorchStructure, options: TorchReadOptions = {}): Promise<StateValue> {
  const verifyCrc = options.verifyCrc ?? true;
  const { state, storages: list, entries, bigEndian } = structure;
  const { result, targets, copies } = options.into === undefined ? { result: state, targets: new Map<Storage, Uint8Array>(), copies: [] } : matchTargets(state, options.into);

  // Read in file order: sequential on a disk, and each storage once.
  const order = list.map((_, i) => i).sort((a, b) => entries[a]!.headerOffset - entries[b]!.headerOffset);
  const total = list.reduce((sum, storage) => sum + storage.numel * DTYPES[storage.dtype].itemSize, 0);
  let done = 0;
  for (const i of order) {
    const entry = entries[i]!;
    const storage = list[i]!;
    const target = targets.get(storage);
    // In memory, a storage is a checked view without a promise (copied into its target, once
    // checked); else it is read (into its target).
    const view = zip.viewInMemory(entry, verifyCrc);
    let bytes: Uint8Array;
    if (view === undefined) bytes = await zip.readEntry(entry, target === undefined ? { verifyCrc } : { verifyCrc, target });
    else if (target === undefined) bytes = view;
    else {
      target.set(view);
      bytes = target.byteLength === view.byteLength ? target : target.subarray(0, view.byteLength);
    }
    if (bigEndian) swapByteOrder(bytes, storage.dtype === "complex64" ? 4 : DTYPES[storage.dtype].itemSize);
    storage.attach(bytes);
    done += bytes.byteLength;
    options.onProgress?.(done, total);
  }
  for (const [file, target] of copies) target.bytes.set(file.bytes);
  return result;
}

/** What a PyTorch archive holds, before its storages' bytes are read. */
export interface TorchStructure {
  /** The unpickled state; its tensors' storages are pending (`Storage.pending`) until read. */
  state: StateValue;
  /** Each storage once, in the order the pickle first names them. */
  storages: Storage[];
  /** Each storage's entry (`<root>/data/<key>`), in the order of `storages`. */
  entries: ZipEntry[];
  /** The storages' bytes are big-endian (`byteorder` says "big") and must be swapped once read. */
  bigEndian: boolean;
}

/**
 * Reads the small entries of a PyTorch archive (version, byte order, `data.pkl`) and builds its
 * state with every storage pending, checking each storage's size against its entry: everything
 * but the tensors' bytes, which `readTorchArchive` reads next (or a caller reads on demand).
 */
export async function readTorchStructure(zip: ZipReader, options: { verifyCrc?: boolean; fastRebuild?: boolean } = {}): Promise<TorchStructure> {
  const verifyCrc = options.verifyCrc ?? true;
  const root = findRoot(zip);
  await checkVersion(zip, root, verifyCrc);
  const bigEndian = await readByteOrder(zip, root, verifyCrc);
  const unpickling = new TorchArchiveUnpickling(zip, `${root}/data/`, options.fastRebuild === false ? undefined : TENSOR_REBUILD);
  const pickle = await zip.read(`${root}/data.pkl`, { verifyCrc });
  const unpickled = unpickle(pickle, unpickling);
  const state = (mayHoldShardedRecords(pickle) ? reviveShardedTensors(unpickled) : unpickled) as StateValue;
  return { state, storages: unpickling.storages, bigEndian, entries: unpickling.entries };
}

/**
 * What unpickling one archive's `data.pkl` needs: globals from the allow-list, and each storage
 * by its persistent id, found once and checked against its entry. Keys "0", "1", … (all PyTorch
 * writes) index an array and the zip's numbered entries: no string built, hashed and looked up
 * per storage; any other key goes through names. A class rather than closures, so the
 * unpickler's optimized code outlives a load (keep-shapes.ts).
 */
class TorchArchiveUnpickling implements UnpickleOptions {
  /** Each storage once, in the order the pickle first names them. */
  readonly storages: Storage[] = [];
  /** Each storage's entry, in the order of `storages`. */
  readonly entries: ZipEntry[] = [];
  private readonly numberedStorages: (Storage | undefined)[] = [];
  private readonly namedStorages = new Map<string, Storage>();

  constructor(
    private readonly zip: ZipReader,
    private readonly dataPrefix: string,
    readonly fastRebuild: FastRebuild | undefined,
  ) {}

  findGlobal(module: string, name: string): unknown {
    return findTorchGlobal(module, name);
  }

  build(object: unknown, state: unknown, context: UnpickleContext): void {
    buildTorchObject(object, state, context);
  }

  persistentLoad(pid: unknown): Storage {
    if (!Array.isArray(pid) || pid.length !== 5 || pid[0] !== "storage") {
      throw new FormatError("TORCH_PERSID", "a persistent id is not ('storage', type, key, location, numel)");
    }
    // Indexed, not destructured: destructuring goes through the iterator protocol, once per tensor.
    const type = pid[1] as unknown;
    const key = pid[2] as unknown;
    const location = pid[3] as unknown;
    const numel = pid[4] as unknown;
    if (!(type instanceof TorchStorageType) || typeof key !== "string" || typeof location !== "string" || typeof numel !== "number") {
      throw new FormatError("TORCH_PERSID", "a storage's persistent id has fields of the wrong type");
    }
    const number = decimalNumber(key, 0, this.zip.entryCount);
    const known = number >= 0 ? this.numberedStorages[number] : this.namedStorages.get(key);
    if (known !== undefined) {
      if (known.dtype !== type.dtype) throw new FormatError("TORCH_STORAGE", `storage "${key}" is used as both ${known.dtype} and ${type.dtype}`);
      return known;
    }
    const entry = number >= 0 ? this.zip.numberedEntry(this.dataPrefix, number) : this.zip.find(`${this.dataPrefix}${key}`);
    if (entry === undefined) throw new FormatError("TORCH_STORAGE", `storage "${key}" has no entry ${this.dataPrefix}${key}`);
    const { itemSize } = DTYPES[type.dtype];
    if (!Number.isSafeInteger(numel) || numel < 0 || numel * itemSize !== entry.size) {
      throw new FormatError("TORCH_STORAGE", `storage "${key}" should hold ${numel} ${type.dtype} elements (${numel * itemSize} bytes) but its entry has ${entry.size} bytes`);
    }
    if (entry.size > MAX_BUFFER_BYTES) {
      throw new FormatError("TORCH_STORAGE", `storage "${key}" has ${entry.size} bytes, more than the ${MAX_BUFFER_BYTES} one Node.js buffer can hold`);
    }
    const storage = Storage.pending(type.dtype, numel);
    if (number >= 0) this.numberedStorages[number] = storage;
    else this.namedStorages.set(key, storage);
    this.storages.push(storage);
    this.entries.push(entry);
    return storage;
  }

  static {
    keepShape(new TorchArchiveUnpickling(undefined as never, "", undefined));
  }
}

/** The archive's root folder: PyTorch names it after the file (1.x) or "archive" (2.x). */
function findRoot(zip: ZipReader): string {
  // Only the names that are not numbered: a storage's name ends in its number.
  const roots: string[] = [];
  for (const name of zip.unnumberedNames()) if (name.endsWith("/data.pkl") && /^[^/]+\/data\.pkl$/.test(name)) roots.push(name);
  if (roots.length !== 1) {
    throw new FormatError("TORCH_LAYOUT", roots.length === 0 ? "not a PyTorch archive: no <root>/data.pkl entry" : "the archive has more than one data.pkl");
  }
  return roots[0]!.slice(0, -"/data.pkl".length);
}

async function readSmallText(zip: ZipReader, name: string, verifyCrc: boolean): Promise<string | undefined> {
  const entry = zip.find(name);
  if (entry === undefined) return undefined;
  if (entry.size > 64) throw new FormatError("TORCH_LAYOUT", `${name} is ${entry.size} bytes; it should hold a short word`);
  return Buffer.from(await zip.read(name, { verifyCrc })).toString("utf8").trim();
}

async function checkVersion(zip: ZipReader, root: string, verifyCrc: boolean): Promise<void> {
  const text = (await readSmallText(zip, `${root}/.data/version`, verifyCrc)) ?? (await readSmallText(zip, `${root}/version`, verifyCrc));
  if (text === undefined) return;
  const version = Number(text);
  if (!Number.isInteger(version) || version < 1 || version > MAX_ARCHIVE_VERSION) {
    throw new FormatError("TORCH_VERSION", `archive version ${JSON.stringify(text)} is not one this reader knows (1–${MAX_ARCHIVE_VERSION})`);
  }
}

async function readByteOrder(zip: ZipReader, root: string, verifyCrc: boolean): Promise<boolean> {
  const order = await readSmallText(zip, `${root}/byteorder`, verifyCrc);
  if (order === undefined || order === "little") return false;
  if (order === "big") return true;
  throw new FormatError("TORCH_LAYOUT", `unknown byte order ${JSON.stringify(order)}`);
}
