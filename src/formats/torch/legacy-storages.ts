import { crc32 } from "../crc32.js";
import type { Storage } from "../../tensor/storage.js";
import type { StateValue } from "../../values/py-values.js";
import { readIntoExisting, type RandomAccessReader } from "../byte-io.js";
import { RECORD_HEADER_SIZE, checkCount, readLegacyStructure, type LegacyRecord } from "./legacy-reader.js";
import { matchTargets } from "./torch-reader.js";

/** Reading a whole legacy `.pt` file: its structure (legacy-reader.ts), then its storages' bytes. */

export interface LegacyReadOptions {
  /** Tensors to read into, in place (see TorchReadOptions.into). */
  into?: StateValue;
  /** Called after each storage is read, with bytes done and bytes in all. */
  onProgress?: (bytesDone: number, bytesTotal: number) => void;
  /** Compute the CRC-32 of the whole file from the bytes read (they cover it exactly once). */
  crc?: boolean;
}

/** Storages are placed in the arena at multiples of this, so every dtype's typed array fits. */
const SLOT_ALIGNMENT = 64;
/** Records smaller than this are read in runs into a scratch buffer and copied to their places. */
const SMALL_RECORD_BYTES = 1 << 20;
/** The scratch buffer for runs of small records: one read for many of them. */
const RUN_BYTES = 16 << 20;
/** Up to this much storage data goes into one arena; beyond it each storage gets its own buffer. */
const ARENA_MAX_BYTES = 2 ** 31;

/**
 * Reads a legacy `torch.save` file through positioned reads: the structure first, then the storage
 * records once each, in file order. Their data lands in one arena with every storage at a 64-byte
 * aligned place (the file packs them back to back after 8-byte counts, so views of the file's
 * bytes would not fit typed arrays), or in its in-place target. Large records are read straight to
 * their place; runs of small ones are read in one piece and copied. Memory is the storages' size
 * plus one 16 MiB scratch buffer. With `crc`, the CRC-32 of the file comes from the same reads,
 * which cover it exactly once.
 */
export async function readLegacyTorchFile(reader: RandomAccessReader, options: LegacyReadOptions = {}): Promise<{ state: StateValue; crc32: number | undefined }> {
  const structure = await readLegacyStructure(reader, { crc: options.crc === true });
  const { result, targets, copies } = options.into === undefined ? { result: structure.state, targets: new Map<Storage, Uint8Array>(), copies: [] } : matchTargets(structure.state, options.into);
  const places = placeStorages(structure.records, targets);

  let crc = structure.headerCrc ?? 0;
  const checksum = (bytes: Uint8Array): void => {
    if (options.crc === true) crc = crc32(bytes, crc);
  };
  const total = structure.records.reduce((sum, record) => sum + record.size, 0);
  let done = 0;
  const finish = (record: LegacyRecord, data: Uint8Array): void => {
    record.storage.attach(data);
    done += record.size;
    options.onProgress?.(done, total);
  };
  // Bytes already read for the pickles are taken from that window, not read again. A tensor
  // filled in place is memory the process already uses (RandomAccessReader.readIntoExisting).
  const { window } = structure;
  const read = async (at: number, length: number, target?: Uint8Array, existing = false): Promise<Uint8Array> => {
    if (at + length > window.length) return target !== undefined && existing ? readIntoExisting(reader, at, length, target) : reader.read(at, length, target);
    const bytes = window.subarray(at, at + length);
    if (target === undefined) return bytes;
    target.set(bytes);
    return target.subarray(0, length);
  };
  let scratch: Uint8Array | undefined;
  const records = structure.records;
  for (let i = 0; i < records.length; ) {
    const record = records[i]!;
    if (record.size >= SMALL_RECORD_BYTES) {
      const count = await read(record.at, RECORD_HEADER_SIZE);
      checkCount(record, count);
      const data = await read(record.at + RECORD_HEADER_SIZE, record.size, places.get(record)!, targets.has(record.storage));
      checksum(count);
      checksum(data);
      finish(record, data);
      i++;
      continue;
    }
    // A run of small records, read in one piece.
    let end = i;
    while (end < records.length && records[end]!.size < SMALL_RECORD_BYTES && records[end]!.at + RECORD_HEADER_SIZE + records[end]!.size - record.at <= RUN_BYTES) end++;
    const last = records[end - 1]!;
    const span = last.at + RECORD_HEADER_SIZE + last.size - record.at;
    let run: Uint8Array;
    if (record.at + span <= window.length) {
      run = window.subarray(record.at, record.at + span);
    } else {
      scratch ??= new Uint8Array(Math.min(RUN_BYTES, Math.max(span, 1)));
      if (scratch.length < span) scratch = new Uint8Array(RUN_BYTES);
      run = await reader.read(record.at, span, scratch);
    }
    checksum(run);
    for (let j = i; j < end; j++) {
      const small = records[j]!;
      const from = small.at - record.at;
      checkCount(small, run.subarray(from, from + RECORD_HEADER_SIZE));
      const place = places.get(small)!;
      place.set(run.subarray(from + RECORD_HEADER_SIZE, from + RECORD_HEADER_SIZE + small.size));
      finish(small, place);
    }
    i = end;
  }
  for (const [file, target] of copies) target.bytes.set(file.bytes); // views read as usual, then copied in place
  return { state: result, crc32: options.crc === true ? crc : undefined };
}

/**
 * Where each storage's bytes go: its in-place target, or a 64-byte aligned slot of one arena (of
 * the storages' total size), or, past ARENA_MAX_BYTES, a buffer of its own.
 */
function placeStorages(records: readonly LegacyRecord[], targets: ReadonlyMap<Storage, Uint8Array>): Map<LegacyRecord, Uint8Array> {
  const places = new Map<LegacyRecord, Uint8Array>();
  const slots: { record: LegacyRecord; offset: number }[] = [];
  let cursor = 0;
  for (const record of records) {
    const target = targets.get(record.storage);
    if (target !== undefined) {
      places.set(record, target.subarray(0, record.size));
      continue;
    }
    cursor = Math.ceil(cursor / SLOT_ALIGNMENT) * SLOT_ALIGNMENT;
    slots.push({ record, offset: cursor });
    cursor += record.size;
  }
  if (cursor <= ARENA_MAX_BYTES) {
    const arena = new Uint8Array(new ArrayBuffer(cursor));
    for (const { record, offset } of slots) places.set(record, arena.subarray(offset, offset + record.size));
  } else {
    for (const { record } of slots) places.set(record, new Uint8Array(record.size));
  }
  return places;
}
