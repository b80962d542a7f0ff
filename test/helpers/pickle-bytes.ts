// Builders of hostile bytes for the tests: little-endian integers and pickle opcodes, written out
// byte by byte so each test says exactly what its file holds.
import { MemorySink } from "../../src/formats/byte-io.js";
import { Op } from "../../src/formats/pickle/opcodes.js";
import { ZipWriter } from "../../src/formats/zip/zip-writer.js";

export type Part = number | readonly number[] | Uint8Array;

export function bytesOf(...parts: Part[]): Uint8Array {
  const out: number[] = [];
  for (const part of parts) {
    if (typeof part === "number") out.push(part);
    else for (const byte of part) out.push(byte);
  }
  return Uint8Array.from(out);
}

export const utf8 = (text: string): Uint8Array => new TextEncoder().encode(text);

export function u16(value: number): number[] {
  return [value & 0xff, (value >>> 8) & 0xff];
}

export function u32(value: number): number[] {
  const out = new Uint8Array(4);
  new DataView(out.buffer).setUint32(0, value, true);
  return [...out];
}

export function u64(value: bigint): number[] {
  const out = new Uint8Array(8);
  new DataView(out.buffer).setBigUint64(0, value, true);
  return [...out];
}

/** BINUNICODE: a u32 length and UTF-8 bytes. */
export function str(text: string): number[] {
  const bytes = utf8(text);
  return [Op.BINUNICODE, ...u32(bytes.length), ...bytes];
}

/** BININT when the value fits in 32 bits, else LONG1 with two's complement bytes. */
export function int(value: number | bigint): number[] {
  const big = BigInt(value);
  if (big >= -(2n ** 31n) && big < 2n ** 31n) {
    const out = new Uint8Array(4);
    new DataView(out.buffer).setInt32(0, Number(big), true);
    return [Op.BININT, ...out];
  }
  const bytes: number[] = [];
  let rest = big;
  do {
    bytes.push(Number(rest & 0xffn));
    rest >>= 8n;
  } while (!((rest === 0n && (bytes[bytes.length - 1]! & 0x80) === 0) || (rest === -1n && (bytes[bytes.length - 1]! & 0x80) !== 0)));
  return [Op.LONG1, bytes.length, ...bytes];
}

/** BINFLOAT: a big-endian double. */
export function float(value: number): number[] {
  const out = new Uint8Array(8);
  new DataView(out.buffer).setFloat64(0, value, false);
  return [Op.BINFLOAT, ...out];
}

export function global(module: string, name: string): number[] {
  return [Op.GLOBAL, ...utf8(`${module}\n${name}\n`)];
}

/** A protocol-2 pickle: PROTO 2, the parts, STOP. */
export function pickle(...parts: Part[]): Uint8Array {
  return bytesOf(Op.PROTO, 2, ...parts, Op.STOP);
}

/** A .pt archive (as torch.save lays it out) around a hand-built pickle and the storages given. */
export async function torchZip(pickleBytes: Uint8Array, storages: Record<string, Uint8Array> = {}): Promise<Uint8Array> {
  const sink = new MemorySink();
  const zip = new ZipWriter(sink);
  await zip.addEntry("archive/data.pkl", pickleBytes);
  await zip.addEntry("archive/byteorder", utf8("little"));
  for (const [key, bytes] of Object.entries(storages)) await zip.addEntry(`archive/data/${key}`, bytes);
  await zip.addEntry("archive/version", utf8("3\n"));
  await zip.finish();
  return sink.toBytes();
}
