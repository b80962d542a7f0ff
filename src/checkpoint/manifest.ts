import { CheckpointLoadError } from "../errors.js";
import type { FileDigest } from "../io/tensor-io.js";
import { isSaveDirName } from "./layout.js";
import { MANIFEST_SEAL_FIELD, checkSeal, sealJsonObject } from "./manifest-seal.js";

export const MANIFEST_FORMAT = "ckpt-manifest";
/**
 * 2: the manifest ends with a checksum of its own bytes (manifest-seal.ts). Version 1 (no checksum,
 * written by ckpt before it sealed its manifests) is still read, with only its fields checked.
 */
export const MANIFEST_VERSION = 2;
/** The oldest version this library reads. */
const OLDEST_MANIFEST_VERSION = 1;

export interface ManifestFile {
  size: number;
  /** CRC-32 as 8 lowercase hex digits. */
  crc32: string;
}

/**
 * `manifest.json`, written last into a checkpoint: which files it holds with their sizes and
 * checksums, and the job layout it was saved with.
 */
export interface Manifest {
  format: typeof MANIFEST_FORMAT;
  version: number;
  stepNr: number;
  createdAt: string;
  dpSize: number;
  tpSize: number;
  /** True once retention kept only the model files (`preserveModel`): not resumable. */
  modelOnly: boolean;
  files: Record<string, ManifestFile>;
  /**
   * The direction of the score in `score.txt`: true when it was saved with `lowerBetter` (so the
   * file holds it negated, as the higher-is-better convention wants). Absent without a score, and
   * in manifests written before ckpt recorded it.
   */
  lowerBetter?: boolean;
  /**
   * The sharded tensors (ShardedTensor) in the rank files: each one's full shape and where every
   * rank's shard lies in it, for consolidation and later resharding. Absent when there are none.
   */
  sharded?: ManifestShardedTensor[];
  /**
   * On object storage: the directory within `step_N/` that holds the files (`save-<id>`), one per
   * save, so that a re-save never mixes with the files it replaces. Absent on a local disk, where
   * the files sit next to the manifest.
   */
  filesDir?: string;
  /** What this save cost (see SaveCost). Absent in manifests written before ckpt recorded it. */
  save?: SaveCost;
}

/**
 * What one save cost, measured on rank 0 up to the moment the manifest is written (the commit
 * follows). `ckpt serve` shows it per step and derives the Young/Daly interval from it.
 */
export interface SaveCost {
  /** Milliseconds the caller spent inside the save's calls: the whole save in the foreground, the snapshot copies in the background. */
  blockedMs: number;
  /** Milliseconds from beginCheckpoint until every file was written and durable. */
  durableMs: number;
  /** Bytes of the files the manifest lists. */
  bytesWritten: number;
}

/** One sharded tensor of a checkpoint: the same key path in the rank files of one tp rank. */
export interface ManifestShardedTensor {
  /** The key path in the rank files' state, e.g. `["model", "0.weight"]`. */
  path: (string | number)[];
  tpRank: number;
  dtype: string;
  globalShape: number[];
  shards: { file: string; offsets: number[]; shape: number[] }[];
}

export function manifestFile(digest: FileDigest): ManifestFile {
  return { size: digest.size, crc32: (digest.crc32 >>> 0).toString(16).padStart(8, "0") };
}

/**
 * The bytes of `manifest.json`: always the current version, sealed with a checksum of its own
 * bytes (a manifest read from an older version is upgraded when it is rewritten, e.g. by retention).
 */
export function encodeManifest(manifest: Manifest): Uint8Array {
  const { [MANIFEST_SEAL_FIELD]: _oldSeal, ...fields } = manifest as Manifest & { [MANIFEST_SEAL_FIELD]?: unknown };
  return sealJsonObject(JSON.stringify({ ...fields, version: MANIFEST_VERSION }, null, 2));
}

/** What Date.prototype.toISOString writes. */
const ISO_UTC_TIME = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,3})?Z$/;

/** Parses and checks a manifest; anything malformed is a CheckpointLoadError naming the problem. */
export function decodeManifest(bytes: Uint8Array, stepNr: number): Manifest {
  const fail = (what: string): never => {
    throw new CheckpointLoadError(stepNr, `manifest.json of step ${stepNr} is damaged: ${what}`);
  };
  const seal = checkSeal(bytes);
  const mismatch = seal.kind === "mismatch" ? `its checksum does not match its contents (crc32:${JSON.stringify(seal.recorded).slice(1, -1)} recorded, crc32:${seal.computed} computed)` : undefined;
  let value: unknown;
  try {
    value = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(bytes));
  } catch (error) {
    // A sealed manifest damaged into bad JSON: the seal says more than the parser.
    if (mismatch !== undefined) fail(mismatch);
    throw new CheckpointLoadError(stepNr, `manifest.json of step ${stepNr} is not valid JSON`, { cause: error });
  }
  if (typeof value !== "object" || value === null || Array.isArray(value)) return fail(mismatch ?? "not an object");
  const m = value as Record<string, unknown>;
  // A later version may seal differently: it is refused as newer, not called damaged.
  if (Number.isInteger(m.version) && (m.version as number) > MANIFEST_VERSION) {
    fail(`version ${String(m.version)} is newer than this library understands (${MANIFEST_VERSION}); upgrade ckpt${mismatch === undefined ? "" : ` (or the file was damaged: ${mismatch})`}`);
  }
  if (mismatch !== undefined) fail(mismatch);
  if (m.format !== MANIFEST_FORMAT) fail(`format is ${JSON.stringify(m.format)}, expected "${MANIFEST_FORMAT}"`);
  if (!Number.isInteger(m.version) || (m.version as number) < OLDEST_MANIFEST_VERSION) fail(`version ${JSON.stringify(m.version)} is not a manifest version`);
  // Every version from 2 on is sealed; version 1 never was, so a checksum there means the version
  // itself was changed (a "2" flipped to "1" must not switch the check off).
  if (m.version === OLDEST_MANIFEST_VERSION && MANIFEST_SEAL_FIELD in m) fail(`a version-1 manifest has no ${MANIFEST_SEAL_FIELD}, and this one has`);
  if ((m.version as number) > OLDEST_MANIFEST_VERSION && seal.kind !== "intact") {
    fail(`it does not end with its checksum ("${MANIFEST_SEAL_FIELD}": "crc32:…" as the last field), as every version-${String(m.version)} manifest does: cut short, extended or edited`);
  }
  delete m[MANIFEST_SEAL_FIELD];
  if (m.stepNr !== stepNr) fail(`it names step ${String(m.stepNr)}`);
  for (const key of ["dpSize", "tpSize"] as const) {
    if (!Number.isInteger(m[key]) || (m[key] as number) < 1) fail(`${key} is not a positive integer`);
  }
  if (typeof m.modelOnly !== "boolean") fail("modelOnly is not a boolean");
  // Time-based retention reads it: a damaged time must not silently reorder what is kept.
  if (m.createdAt !== undefined && (typeof m.createdAt !== "string" || !ISO_UTC_TIME.test(m.createdAt) || Number.isNaN(Date.parse(m.createdAt)))) {
    fail(`createdAt ${JSON.stringify(m.createdAt)} is not a UTC time such as "2024-05-01T12:00:00.000Z"`);
  }
  if (typeof m.files !== "object" || m.files === null) return fail("files is not an object");
  for (const [name, file] of Object.entries(m.files as Record<string, unknown>)) {
    const f = file as Record<string, unknown>;
    if (name.startsWith("/") || name.split("/").some((part) => part === ".." || part === "." || part === "")) fail(`file name ${JSON.stringify(name)} is unsafe`);
    if (!Number.isSafeInteger(f?.size) || (f.size as number) < 0 || typeof f.crc32 !== "string" || !/^[0-9a-f]{8}$/.test(f.crc32)) {
      fail(`the entry for ${name} is malformed`);
    }
  }
  if (m.sharded !== undefined && !Array.isArray(m.sharded)) fail("sharded is not a list");
  if (m.lowerBetter !== undefined && typeof m.lowerBetter !== "boolean") fail("lowerBetter is not a boolean");
  if (m.filesDir !== undefined && (typeof m.filesDir !== "string" || !isSaveDirName(m.filesDir))) fail(`filesDir ${JSON.stringify(m.filesDir)} is not a save directory name`);
  if (m.save !== undefined) {
    const save = m.save as Record<string, unknown> | null;
    for (const key of ["blockedMs", "durableMs", "bytesWritten"] as const) {
      if (typeof save?.[key] !== "number" || !Number.isFinite(save[key]) || save[key] < 0) fail(`save.${key} is not a non-negative number`);
    }
  }
  return value as Manifest;
}
