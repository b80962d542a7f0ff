// The least a load or a save of these tensors does on this machine, written for this state alone:
// what no general library can undercut. They explain the targets a save or load does not meet
// (docs/benchmark.md, issue 14's section). Each is checked like the rows it explains.
import { constants, promises as fsp } from "node:fs";
import { crc32 as fastCrc32 } from "@node-rs/crc32";
import { DEFAULT_DIRECT_BLOCK_BYTES, DIRECT_ALIGNMENT } from "../src/fs/direct-writes.js";
import { pageAlignedBuffer } from "../src/fs/page-aligned.js";
import { Op } from "../src/formats/pickle/opcodes.js";
import { putSmallInt, putSmallIntTuple } from "../src/formats/pickle/pickle-encoding.js";
import { CENTRAL_HEADER_SIZE, END_SIZE, LOCAL_HEADER_SIZE } from "../src/formats/zip/zip-constants.js";
import { writeEndRecord, writeLocalHeader, writePlainCentralHeader } from "../src/formats/zip/zip-records.js";
import { Storage, Tensor, type StateValue } from "./library.js";
import { numelOf } from "./checks.js";
import { bestRead } from "./plain-io.js";

/** Tensor `i` of the floors' files is called this (the bench's plain.bin has no names). */
export const floorKey = (i: number): string => `tensor.${i}`;

/**
 * The floor of a load: the best read of the bare bytes (plain.bin: no format around them), then
 * per tensor a CRC-32 pass, a view, a Storage, a Tensor and a dict entry. No pickle, no zip
 * directory, no headers.
 */
export async function loadFloor(path: string, shapes: readonly number[][]): Promise<{ state: Record<string, Tensor>; crcs: number[] }> {
  const bytes = await bestRead(path);
  const state: Record<string, Tensor> = {};
  const crcs: number[] = [];
  let at = 0;
  for (let i = 0; i < shapes.length; i++) {
    const shape = shapes[i]!;
    const view = new Uint8Array(bytes.buffer, bytes.byteOffset + at, numelOf(shape) * 4);
    crcs.push(fastCrc32(view));
    state[floorKey(i)] = new Tensor({ storage: new Storage("float32", view), shape });
    at += view.byteLength;
  }
  return { state, crcs };
}

/** Tensor i of plain.bin, and of what saveFloor writes, holds (i + 1) · 10⁻³ (bench/scenarios.ts buildState). */
export function checkFloorTensors(loaded: StateValue, count: number, what: string): void {
  const state = loaded as Record<string, Tensor>;
  for (let i = 0; i < count; i++) {
    const data = state[floorKey(i)]?.data as Float32Array | undefined;
    if (data === undefined || data[0] !== Math.fround((i + 1) * 1e-3) || data[data.length - 1] !== data[0]) {
      throw new Error(`${what}: tensor ${i} holds ${data?.[0]}`);
    }
  }
  if (Object.keys(state).length !== count) throw new Error(`${what}: ${Object.keys(state).length} tensors, expected ${count}`);
}

/** As the library's writer: a quarter block for a file under eight blocks, three blocks per file. */
const SMALL_FILE_BYTES = 8 * DEFAULT_DIRECT_BLOCK_BYTES;
const BLOCKS = 3;
/** As the library's writer: a flush to disk (fdatasync) starts in the background every 8 MiB sent. */
const FLUSH_EVERY = 8 << 20;
/** Data starts on a multiple of this in the file, as in torch.save's (and our) archives. */
const DATA_ALIGNMENT = 64;

/**
 * The floor of a process's first save: a real PyTorch file of `buffers` (tensor i under the key
 * `tensor.<i>`, float32, `shapes[i]`), written the way the library writes a small-tensor file
 * (O_DIRECT from three aligned blocks of fresh memory, flushes in the background, data.pkl last),
 * but in three tight loops written for this one layout (the library's zip records and pickle
 * integers, nothing else of it): no state to walk or check, a pickle of one flat dict, headers
 * without zip64, no temporary name to rename and no directory sync.
 */
export async function saveFloor(buffers: readonly Uint8Array[], shapes: readonly number[][], path: string): Promise<void> {
  const count = buffers.length;
  const dataBytes = buffers.reduce((sum, b) => sum + b.byteLength, 0);
  if (count + 2 >= 0xffff || dataBytes + count * 128 >= 0xffffffff) throw new Error("the save floor writes no zip64 records: too many tensors or bytes");
  const handle = await fsp.open(path, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_DIRECT, 0o644);
  const out = new BlockPipe(handle, dataBytes < SMALL_FILE_BYTES ? DEFAULT_DIRECT_BLOCK_BYTES / 4 : DEFAULT_DIRECT_BLOCK_BYTES);
  try {
    const names: string[] = [];
    const crcs = new Uint32Array(count + 2);
    const sizes = new Uint32Array(count + 2);
    const offsets = new Uint32Array(count + 2);
    let offset = 0;
    const header = Buffer.alloc(LOCAL_HEADER_SIZE + 64 + DATA_ALIGNMENT + 4);
    const entry = (name: string, data: Uint8Array): Promise<void> | undefined => {
      const crc = fastCrc32(data);
      const nameLength = header.write(name, LOCAL_HEADER_SIZE, "latin1");
      let padding = (DATA_ALIGNMENT - ((offset + LOCAL_HEADER_SIZE + nameLength) % DATA_ALIGNMENT)) % DATA_ALIGNMENT;
      if (padding > 0 && padding < 4) padding += DATA_ALIGNMENT; // an extra field needs 4 bytes of its own
      writeLocalHeader(header, 0, nameLength, crc, data.byteLength, false, padding);
      crcs[names.length] = crc;
      sizes[names.length] = data.byteLength;
      offsets[names.length] = offset;
      names.push(name);
      offset += LOCAL_HEADER_SIZE + nameLength + padding + data.byteLength;
      const waiting = out.put(header.subarray(0, LOCAL_HEADER_SIZE + nameLength + padding));
      return waiting === undefined ? out.put(data) : waiting.then(() => out.put(data));
    };
    for (let i = 0; i < count; i++) {
      const waiting = entry(`archive/data/${i}`, buffers[i]!);
      if (waiting !== undefined) await waiting; // an await per tensor would cost a microtask each
    }
    await entry("archive/data.pkl", flatDictPickle(shapes));
    await entry("archive/version", Buffer.from("3\n"));
    const directoryOffset = offset;
    const directory = Buffer.allocUnsafe(names.length * (CENTRAL_HEADER_SIZE + 32) + END_SIZE);
    let at = 0;
    for (let i = 0; i < names.length; i++) {
      const nameLength = directory.write(names[i]!, at + CENTRAL_HEADER_SIZE, "latin1");
      writePlainCentralHeader(directory, at, nameLength, crcs[i]!, sizes[i]!, offsets[i]!);
      at += CENTRAL_HEADER_SIZE + nameLength;
    }
    writeEndRecord(directory, at, names.length, directoryOffset, at, false);
    at += END_SIZE;
    await out.put(directory.subarray(0, at));
    await out.finish(offset + at);
  } finally {
    await out.settle();
    await handle.close();
  }
}

/**
 * Aligned blocks of fresh memory, filled by `put` and written with O_DIRECT while the next is
 * filled. A block is filled again only once its last write is done.
 */
class BlockPipe {
  private readonly blocks: Buffer[];
  /** Each block's last write, if it was sent. */
  private readonly writes: (Promise<void> | undefined)[] = [];
  private current = 0;
  private filled = 0;
  /** The current block's last write, until it is known to be done. */
  private blockBusy: Promise<void> | undefined;
  private position = 0;
  private sinceFlush = 0;
  private flushing: Promise<void> | undefined;

  constructor(
    private readonly handle: fsp.FileHandle,
    private readonly blockBytes: number,
  ) {
    this.blocks = Array.from({ length: BLOCKS }, () => pageAlignedBuffer(blockBytes));
  }

  /** Copies `bytes` in; returns a promise (to await before the next put) only if it must wait for a block. */
  put(bytes: Uint8Array): Promise<void> | undefined {
    if (this.blockBusy === undefined && this.filled + bytes.byteLength < this.blockBytes) {
      this.blocks[this.current]!.set(bytes, this.filled);
      this.filled += bytes.byteLength;
      return undefined;
    }
    return this.putAcrossBlocks(bytes);
  }

  /** Writes the last block (padded to the alignment), cuts the file to `size` and fsyncs it. */
  async finish(size: number): Promise<void> {
    await this.blockBusy;
    if (this.filled > 0) {
      const padded = Math.ceil(this.filled / DIRECT_ALIGNMENT) * DIRECT_ALIGNMENT;
      this.blocks[this.current]!.fill(0, this.filled, padded);
      this.send(padded);
    }
    await Promise.all(this.writes);
    await this.flushing;
    await this.handle.truncate(size);
    await this.handle.sync();
  }

  /** Waits for every write and flush, whatever their outcome (before the descriptor closes). */
  async settle(): Promise<void> {
    await Promise.allSettled(this.writes);
    await this.flushing?.catch(() => undefined);
  }

  private async putAcrossBlocks(bytes: Uint8Array): Promise<void> {
    for (let done = 0; done < bytes.byteLength; ) {
      if (this.blockBusy !== undefined) {
        await this.blockBusy;
        this.blockBusy = undefined;
      }
      const take = Math.min(this.blockBytes - this.filled, bytes.byteLength - done);
      this.blocks[this.current]!.set(take === bytes.byteLength ? bytes : bytes.subarray(done, done + take), this.filled);
      this.filled += take;
      done += take;
      if (this.filled === this.blockBytes) this.send(this.blockBytes);
    }
  }

  private send(length: number): void {
    const write = this.handle.write(this.blocks[this.current]!, 0, length, this.position).then(({ bytesWritten }) => {
      if (bytesWritten !== length) throw new Error(`an O_DIRECT write of ${length} bytes wrote ${bytesWritten}`);
      this.sinceFlush += length;
      if (this.sinceFlush >= FLUSH_EVERY && this.flushing === undefined) {
        this.sinceFlush = 0;
        this.flushing = this.handle.datasync().then(() => void (this.flushing = undefined));
      }
    });
    write.catch(() => undefined); // awaited before the block is filled again, or in finish
    this.writes[this.current] = write;
    this.position += length;
    this.current = (this.current + 1) % BLOCKS;
    this.filled = 0;
    this.blockBusy = this.writes[this.current];
  }
}

/**
 * torch.save's pickle of `{ "tensor.<i>": float32 tensor of shapes[i] }`, each tensor in storage
 * `<i>` (protocol 2, as torch writes it: _rebuild_tensor_v2 with a persistent id per storage).
 */
function flatDictPickle(shapes: readonly number[][]): Buffer {
  const out = Buffer.alloc(256 + shapes.reduce((sum, shape) => sum + 96 + 10 * shape.length, 0));
  let at = 0;
  const op = (code: number): void => void (out[at++] = code);
  const text = (value: string): void => {
    op(Op.BINUNICODE);
    const length = out.write(value, at + 4, "latin1");
    out.writeUInt32LE(length, at);
    at += 4 + length;
  };
  const global = (module: string, name: string): void => {
    op(Op.GLOBAL);
    at += out.write(`${module}\n${name}\n`, at, "latin1");
  };
  // Memo slots: 0 _rebuild_tensor_v2, 1 "storage", 2 FloatStorage, 3 "cpu", 4 OrderedDict; each
  // written once (then BINPUT) and recalled after (BINGET).
  const memo = (slot: number, isFirst: boolean): void => {
    op(isFirst ? Op.BINPUT : Op.BINGET);
    op(slot);
  };
  const strides: number[] = [];
  op(Op.PROTO);
  op(2);
  op(Op.EMPTY_DICT);
  op(Op.MARK);
  for (let i = 0; i < shapes.length; i++) {
    const shape = shapes[i]!;
    const first = i === 0;
    text(floorKey(i));
    if (first) global("torch._utils", "_rebuild_tensor_v2");
    memo(0, first);
    op(Op.MARK); // the arguments
    op(Op.MARK); // the persistent id
    if (first) text("storage");
    memo(1, first);
    if (first) global("torch", "FloatStorage");
    memo(2, first);
    text(String(i));
    if (first) text("cpu");
    memo(3, first);
    at = putSmallInt(out, at, numelOf(shape));
    op(Op.TUPLE);
    op(Op.BINPERSID);
    at = putSmallInt(out, at, 0); // storage offset
    at = putSmallIntTuple(out, at, shape);
    strides.length = shape.length;
    for (let d = shape.length - 1, step = 1; d >= 0; step *= shape[d]!, d--) strides[d] = step;
    at = putSmallIntTuple(out, at, strides);
    op(Op.NEWFALSE); // requires_grad
    if (first) global("collections", "OrderedDict");
    memo(4, first);
    op(Op.EMPTY_TUPLE);
    op(Op.REDUCE); // backward hooks
    op(Op.TUPLE);
    op(Op.REDUCE); // the tensor
  }
  op(Op.SETITEMS);
  op(Op.STOP);
  return out.subarray(0, at);
}
