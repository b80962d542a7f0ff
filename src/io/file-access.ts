import { FormatError, InvalidArgumentError, TensorDumpError, TensorLoadError } from "../errors.js";
import type { FileReader, FileSystem, FileWriter } from "../fs/file-system.js";
import type { FileDigest } from "./tensor-io.js";

/**
 * Opens `path`, runs `work` on it and closes it. Errors become TensorLoadErrors naming the file:
 * a digest mismatch as it is, anything else as "not a valid <format> file: …" (`explain` may
 * add what it can tell from the bytes).
 */
export async function readingFile<T>(
  fileSystem: FileSystem,
  path: string,
  format: string,
  work: (reader: FileReader) => Promise<T>,
  explain: (reader: FileReader, error: unknown) => Promise<string> = async (_, error) => (error as Error).message,
): Promise<T> {
  let reader: FileReader;
  try {
    reader = await fileSystem.openReader(path);
  } catch (error) {
    throw new TensorLoadError(path, `cannot open the file: ${(error as Error).message}`, { cause: error });
  }
  try {
    return await work(reader);
  } catch (error) {
    // A corrupt file, or `into` tensors that do not fit the file: not a malformed file, said as it is.
    if ((error instanceof FormatError && error.code === "DIGEST_MISMATCH") || error instanceof InvalidArgumentError) {
      throw new TensorLoadError(path, error.message, { cause: error });
    }
    throw new TensorLoadError(path, `not a valid ${format} file: ${await explain(reader, error)}`, { cause: error });
  } finally {
    await reader.close();
  }
}

/**
 * Creates `path` and runs `work` to fill it; the file appears only if `work` succeeds, and any
 * error becomes a TensorDumpError naming the file.
 */
export async function writingFile(fileSystem: FileSystem, path: string, work: (writer: FileWriter) => Promise<FileDigest>): Promise<FileDigest> {
  let writer: FileWriter;
  try {
    writer = await fileSystem.createWriter(path);
  } catch (error) {
    throw new TensorDumpError(path, `cannot create the file: ${(error as Error).message}`, { cause: error });
  }
  try {
    const digest = await work(writer);
    await writer.close();
    return digest;
  } catch (error) {
    await writer.abort().catch(() => undefined);
    throw new TensorDumpError(path, `cannot save the state: ${(error as Error).message}`, { cause: error });
  }
}

/** Refuses a file whose size differs from the digest recorded for it. */
export function checkDigestSize(actual: number, expected: FileDigest | undefined): void {
  if (expected !== undefined && actual !== expected.size) {
    throw new FormatError("DIGEST_MISMATCH", `the file is corrupt: it should have ${expected.size} bytes but has ${actual}`);
  }
}

/** Refuses a file whose CRC-32 differs from the one recorded for it. */
export function checkDigestCrc(actual: number, expected: number): void {
  if (actual >>> 0 !== expected >>> 0) {
    const hex = (crc: number): string => (crc >>> 0).toString(16).padStart(8, "0");
    throw new FormatError("DIGEST_MISMATCH", `the file is corrupt: its CRC-32 is ${hex(actual)}, it should be ${hex(expected)}`);
  }
}
