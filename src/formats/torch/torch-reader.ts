import { FormatError } from "../../errors.js";
import { DTYPES } from "../../tensor/dtype.js";
import { swapByteOrder } from "../../tensor/byte-order.js";
import { Storage } from "../../tensor/storage.js";
import type { StateValue } from "../../values/py-values.js";
import { unpickle } from "../pickle/unpickler.js";
import type { ZipReader } from "../zip/zip-reader.js";
import { TorchStorageType, buildTorchObject, findTorchGlobal } from "./torch-globals.js";

export interface TorchReadOptions {
  /** Check each entry's CRC-32 (default true): PyTorch does not, so a flipped bit would pass. */
  verifyCrc?: boolean;
}

/** Archive format versions PyTorch has written (1.6 through 2.x write 3). */
const MAX_ARCHIVE_VERSION = 10;

/**
 * Reads the state in a PyTorch zip archive (`torch.save` since 1.6): `<root>/data.pkl` unpickled
 * against the allow-list, each `<root>/data/<key>` entry a storage.
 */
export async function readTorchArchive(zip: ZipReader, options: TorchReadOptions = {}): Promise<StateValue> {
  const verifyCrc = options.verifyCrc ?? true;
  const root = findRoot(zip);
  await checkVersion(zip, root, verifyCrc);
  const bigEndian = await readByteOrder(zip, root, verifyCrc);

  const storageBytes = new Map<string, Uint8Array>();
  const dataPrefix = `${root}/data/`;
  for (const name of zip.entries.keys()) {
    if (name.startsWith(dataPrefix)) storageBytes.set(name.slice(dataPrefix.length), await zip.read(name, { verifyCrc }));
  }

  const storages = new Map<string, Storage>();
  const persistentLoad = (pid: unknown): Storage => {
    if (!Array.isArray(pid) || pid.length !== 5 || pid[0] !== "storage") {
      throw new FormatError("TORCH_PERSID", "a persistent id is not ('storage', type, key, location, numel)");
    }
    const [, type, key, location, numel] = pid as unknown[];
    if (!(type instanceof TorchStorageType) || typeof key !== "string" || typeof location !== "string" || typeof numel !== "number") {
      throw new FormatError("TORCH_PERSID", "a storage's persistent id has fields of the wrong type");
    }
    const known = storages.get(key);
    if (known !== undefined) {
      if (known.dtype !== type.dtype) throw new FormatError("TORCH_STORAGE", `storage "${key}" is used as both ${known.dtype} and ${type.dtype}`);
      return known;
    }
    const bytes = storageBytes.get(key);
    if (bytes === undefined) throw new FormatError("TORCH_STORAGE", `storage "${key}" has no entry ${dataPrefix}${key}`);
    const { itemSize } = DTYPES[type.dtype];
    if (!Number.isSafeInteger(numel) || numel < 0 || numel * itemSize !== bytes.length) {
      throw new FormatError("TORCH_STORAGE", `storage "${key}" should hold ${numel} ${type.dtype} elements (${numel * itemSize} bytes) but its entry has ${bytes.length} bytes`);
    }
    if (bigEndian) swapByteOrder(bytes, type.dtype === "complex64" ? 4 : itemSize);
    const storage = new Storage(type.dtype, bytes);
    storages.set(key, storage);
    return storage;
  };

  const pickle = await zip.read(`${root}/data.pkl`, { verifyCrc });
  return unpickle(pickle, { findGlobal: findTorchGlobal, persistentLoad, build: buildTorchObject }) as StateValue;
}

/** The archive's root folder: PyTorch names it after the file (1.x) or "archive" (2.x). */
function findRoot(zip: ZipReader): string {
  const roots = [...zip.entries.keys()].filter((name) => /^[^/]+\/data\.pkl$/.test(name));
  if (roots.length !== 1) {
    throw new FormatError("TORCH_LAYOUT", roots.length === 0 ? "not a PyTorch archive: no <root>/data.pkl entry" : "the archive has more than one data.pkl");
  }
  return roots[0]!.slice(0, -"/data.pkl".length);
}

async function readSmallText(zip: ZipReader, name: string, verifyCrc: boolean): Promise<string | undefined> {
  const entry = zip.entries.get(name);
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
