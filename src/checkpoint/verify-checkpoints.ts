import { CheckpointNotFoundError } from "../errors.js";
import type { FileSystem } from "../fs/file-system.js";
import { fileSystemForPath } from "../fs/file-system-for-path.js";
import { joinPath } from "../fs/paths.js";
import { digestFile } from "../io/file-digest.js";
import { checkTensorFile } from "../io/tensor-file-outline.js";
import type { FileDigest } from "../io/tensor-io.js";
import { checkpointFiles, listCheckpointDirectory } from "./checkpoint-listing.js";
import { MANIFEST_FILE, SCORE_FILE, isModelFile, rankFileName } from "./layout.js";
import { decodeManifest, type Manifest } from "./manifest.js";
import { parseScore } from "./score.js";

/** One thing wrong with one file of a checkpoint. */
export interface FileProblem {
  /** The file, relative to the checkpoint's directory. */
  file: string;
  problem: string;
}

export interface CheckpointVerification {
  stepNr: number;
  name: string;
  path: string;
  /** `unfinished` and `deleting` directories are never loaded, so they are listed, not checked. */
  status: "sound" | "damaged" | "unfinished" | "deleting";
  hasManifest: boolean;
  /** Files read in full. */
  filesChecked: number;
  bytesChecked: number;
  problems: FileProblem[];
  /** What could not be checked, and why (a fairseq2 checkpoint has no checksums). */
  notes: string[];
}

export interface VerificationReport {
  checkpointDir: string;
  /** True when every committed checkpoint checked is sound. */
  sound: boolean;
  checkpoints: CheckpointVerification[];
}

export interface VerifyOptions {
  /** Only this step (and no unfinished directories); CheckpointNotFoundError when it is not there. */
  stepNr?: number;
  fileSystem?: FileSystem;
  /** Called as bytes are read, with bytes done and bytes in all. */
  onProgress?: (bytesDone: number, bytesTotal: number) => void;
}

/** Files parsed as tensor files, by name: PyTorch's (or safetensors written under those names) and safetensors. */
const TENSOR_FILE = /\.(pt|pth|safetensors)$/;

/**
 * Checks committed checkpoints file by file: every file the manifest lists is there with its size
 * and CRC-32, no file is there that it does not list, the rank files of its dp/tp layout are all
 * listed, every tensor file parses, and score.txt holds a number. A checkpoint without a manifest
 * (written by fairseq2) is checked as far as it can be: its tensor files must parse and each `.pt`
 * entry match its zip CRC-32. Files are streamed in fixed-size pieces: memory stays flat.
 *
 * @example
 * const report = await verifyCheckpoints("checkpoints");
 * if (!report.sound) for (const c of report.checkpoints) console.log(c.name, c.problems);
 */
export async function verifyCheckpoints(checkpointDir: string, options: VerifyOptions = {}): Promise<VerificationReport> {
  const fileSystem = options.fileSystem ?? fileSystemForPath(checkpointDir);
  const listing = await listCheckpointDirectory(checkpointDir, { fileSystem });
  let chosen = listing.checkpoints;
  if (options.stepNr !== undefined) {
    chosen = chosen.filter((c) => c.stepNr === options.stepNr && (c.status === "committed" || c.status === "damaged"));
    if (chosen.length === 0) throw new CheckpointNotFoundError(options.stepNr, `there is no checkpoint ${options.stepNr} in ${checkpointDir}`);
  }
  const toCheck = chosen.filter((c) => c.status === "committed" || c.status === "damaged");
  if (toCheck.length === 0) throw new CheckpointNotFoundError(undefined, `there is no committed checkpoint in ${checkpointDir}`);

  let bytesTotal = 0;
  for (const c of toCheck) bytesTotal += c.size;
  let bytesBefore = 0;
  const progress = (done: number): void => options.onProgress?.(bytesBefore + done, bytesTotal);

  const checkpoints: CheckpointVerification[] = [];
  for (const summary of chosen) {
    const result: CheckpointVerification = {
      stepNr: summary.stepNr,
      name: summary.name,
      path: summary.path,
      status: summary.status === "unfinished" || summary.status === "deleting" ? summary.status : "sound",
      hasManifest: false,
      filesChecked: 0,
      bytesChecked: 0,
      problems: [],
      notes: [],
    };
    checkpoints.push(result);
    if (result.status !== "sound") {
      result.notes.push(summary.status === "unfinished" ? "an unfinished save (.tmp): never loaded, not checked" : "a deletion in progress or cut off: not checked");
      continue;
    }
    await verifyOne(fileSystem, summary.stepNr, summary.path, summary.manifestPath, result, progress);
    bytesBefore += summary.size;
    progress(0);
    if (result.problems.length > 0) result.status = "damaged";
  }
  return { checkpointDir, sound: checkpoints.every((c) => c.status !== "damaged"), checkpoints };
}

async function verifyOne(
  fileSystem: FileSystem,
  stepNr: number,
  dir: string,
  manifestPath: string,
  result: CheckpointVerification,
  progress: (done: number) => void,
): Promise<void> {
  const problem = (file: string, what: string): void => void result.problems.push({ file, problem: what });
  let listed: Awaited<ReturnType<typeof checkpointFiles>>;
  try {
    listed = await checkpointFiles(fileSystem, dir, manifestPath);
  } catch (error) {
    problem(".", `the checkpoint's directory cannot be read: ${(error as Error).message}`);
    return;
  }
  // A link leads wherever its author chose (see readInfo): reported, and nothing of the step read.
  const links = (await fileSystem.listDirectory(dir).catch(() => [])).filter((entry) => entry.isSymbolicLink === true);
  for (const link of links) problem(link.name, "is a symbolic link: a checkpoint's files must be inside it (not read)");
  if (links.length > 0) return;
  const { files, sizes } = listed;
  let manifest: Manifest | undefined;
  if (sizes.has(MANIFEST_FILE)) {
    result.hasManifest = true;
    try {
      manifest = decodeManifest(await fileSystem.readFile(manifestPath), stepNr);
    } catch (error) {
      problem(MANIFEST_FILE, `${(error as Error).message}; the other files are only parsed`);
    }
  } else {
    result.notes.push("no manifest.json (written by fairseq2?): sizes and checksums not checked, tensor files parsed");
  }

  // What each file should be: from the manifest, or nothing known (parse it, if it is a tensor file).
  const expected = new Map<string, FileDigest>();
  if (manifest !== undefined) {
    for (const [name, file] of Object.entries(manifest.files)) {
      if (!sizes.has(name)) problem(name, `missing: the manifest lists it with ${file.size} bytes`);
      else expected.set(name, { size: file.size, crc32: Number.parseInt(file.crc32, 16) });
    }
    for (const name of files) {
      if (name !== MANIFEST_FILE && manifest.files[name] === undefined) problem(name, "an extra file: not in the manifest (added after the commit?)");
    }
    checkLayout(manifest, problem);
  }

  let done = 0;
  for (const name of files) {
    if (name === MANIFEST_FILE) continue;
    const size = sizes.get(name)!;
    const want = expected.get(name);
    const isTensorFile = TENSOR_FILE.test(name);
    if (want !== undefined && want.size !== size) {
      problem(name, size < want.size ? `truncated: ${size} bytes, the manifest says ${want.size}` : `${size} bytes, the manifest says ${want.size}: bytes were added`);
      done += size;
      progress(done);
      continue;
    }
    const path = joinPath(dir, name);
    const before = done;
    try {
      if (isTensorFile) {
        // Streamed: memory stays flat whatever the file's size, and tensor bytes are read once.
        await checkTensorFile(path, { fileSystem, ...(want === undefined ? {} : { expectedDigest: want }), onProgress: (d) => progress(before + d) });
      } else if (want !== undefined) {
        const actual = await digestFile(fileSystem, path);
        if (actual.crc32 >>> 0 !== want.crc32 >>> 0) problem(name, `corrupt: its CRC-32 is ${hex(actual.crc32)}, the manifest says ${hex(want.crc32)}`);
      }
      if (name === SCORE_FILE) {
        // A score that is no number leaves the step usable, unscored (as the manager treats it).
        try {
          parseScore(new TextDecoder().decode(await fileSystem.readFile(path)), stepNr);
        } catch (error) {
          result.notes.push(`${(error as Error).message}: the step is treated as unscored`);
        }
      }
      if (isTensorFile || want !== undefined || name === SCORE_FILE) {
        result.filesChecked++;
        result.bytesChecked += size;
      }
    } catch (error) {
      const cause = (error as { cause?: { code?: string } }).cause;
      const message = (error as Error).message.replace(`${path}: `, "");
      problem(name, cause?.code === "DIGEST_MISMATCH" ? message.replace("the file is corrupt: ", "corrupt: ").replace("it should be", "the manifest says") : message);
    }
    done = before + size;
    progress(done);
  }
}

/** A resumable checkpoint must list the rank file of every dp × tp rank; a model-only one a model file. */
function checkLayout(manifest: Manifest, problem: (file: string, what: string) => void): void {
  const names = Object.keys(manifest.files);
  if (manifest.modelOnly) {
    if (!names.some(isModelFile)) problem(MANIFEST_FILE, "the checkpoint is model-only but lists no model file");
    return;
  }
  for (let dp = 0; dp < manifest.dpSize; dp++) {
    for (let tp = 0; tp < manifest.tpSize; tp++) {
      const name = rankFileName(dp, tp, manifest.tpSize);
      if (manifest.files[name] === undefined) problem(name, `not in the manifest, though the checkpoint was saved with dp=${manifest.dpSize}, tp=${manifest.tpSize}`);
    }
  }
}

function hex(crc: number): string {
  return (crc >>> 0).toString(16).padStart(8, "0");
}
