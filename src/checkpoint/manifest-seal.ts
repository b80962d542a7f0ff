import { crc32 } from "../formats/crc32.js";

/**
 * The seal of a version-2 `manifest.json`: its last field, `"checksum": "crc32:xxxxxxxx"`, holds the
 * CRC-32 of the file's exact bytes with those 8 hex digits read as `00000000`.
 *
 * Why: a digit flipped in `createdAt` or `save.durableMs` still parses and still passes every field
 * check (the torture campaign found such flips undetected), and the manifest is the one file whose
 * checksum nothing else holds. Covering every byte (whitespace, key order, the seal's own text) means
 * any change of up to 32 consecutive bits is detected for certain (a CRC-32 property), and a cut or
 * an extension moves or removes the seal, which must sit exactly at the end.
 */
const SEAL_FIELD = "checksum";
const SEAL_PREFIX = `,\n  "${SEAL_FIELD}": "crc32:`;
const SEAL_SUFFIX = '"\n}\n';
const PLACEHOLDER = "00000000";
const HEX_DIGITS = 8;
const ASCII_ZERO = 0x30;

export { SEAL_FIELD as MANIFEST_SEAL_FIELD };

const encoder = new TextEncoder();
const prefixBytes = encoder.encode(SEAL_PREFIX);
const suffixBytes = encoder.encode(SEAL_SUFFIX);

const hex = (crc: number): string => (crc >>> 0).toString(16).padStart(HEX_DIGITS, "0");

/**
 * `text` (a JSON object as `JSON.stringify(value, null, 2)` writes it, without a `checksum` key)
 * with the seal added as its last field, as bytes.
 */
export function sealJsonObject(text: string): Uint8Array {
  if (!text.endsWith("\n}")) throw new TypeError("sealJsonObject wants a non-empty object written with an indent of 2");
  const bytes = encoder.encode(`${text.slice(0, -2)}${SEAL_PREFIX}${PLACEHOLDER}${SEAL_SUFFIX}`);
  bytes.set(encoder.encode(hex(crc32(bytes))), bytes.length - suffixBytes.length - HEX_DIGITS);
  return bytes;
}

export type SealCheck =
  /** No seal at the end of the bytes (a version-1 manifest, or one damaged there). */
  | { kind: "absent" }
  | { kind: "intact" }
  | { kind: "mismatch"; recorded: string; computed: string };

/** Whether `bytes` end with a seal, and whether it matches them. Looks nowhere but at the very end. */
export function checkSeal(bytes: Uint8Array): SealCheck {
  const hexStart = bytes.length - suffixBytes.length - HEX_DIGITS;
  const prefixStart = hexStart - prefixBytes.length;
  if (prefixStart < 0) return { kind: "absent" };
  if (!sameBytes(bytes, bytes.length - suffixBytes.length, suffixBytes) || !sameBytes(bytes, prefixStart, prefixBytes)) return { kind: "absent" };
  const recorded = new TextDecoder("latin1").decode(bytes.subarray(hexStart, hexStart + HEX_DIGITS));
  const unsealed = Uint8Array.from(bytes);
  unsealed.fill(ASCII_ZERO, hexStart, hexStart + HEX_DIGITS);
  const computed = hex(crc32(unsealed));
  // Only what the writer writes counts: upper-case or other spellings of the same number do not.
  return recorded === computed ? { kind: "intact" } : { kind: "mismatch", recorded, computed };
}

function sameBytes(bytes: Uint8Array, at: number, expected: Uint8Array): boolean {
  for (let i = 0; i < expected.length; i++) if (bytes[at + i] !== expected[i]) return false;
  return true;
}
