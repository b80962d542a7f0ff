import { crc32 } from "../formats/crc32.js";
import type { FileSystem } from "../fs/file-system.js";
import type { FileDigest } from "./tensor-io.js";

/** Reads are done in pieces of this size: large enough for full disk speed, small for memory. */
const CHUNK_SIZE = 8 << 20;

/** The size and CRC-32 of a file, read through once in fixed-size pieces. */
export async function digestFile(fileSystem: FileSystem, path: string): Promise<FileDigest> {
  const reader = await fileSystem.openReader(path);
  try {
    const buffer = new Uint8Array(Math.min(CHUNK_SIZE, Math.max(reader.size, 1)));
    let crc = 0;
    for (let position = 0; position < reader.size; position += buffer.length) {
      const length = Math.min(buffer.length, reader.size - position);
      crc = crc32(await reader.read(position, length, buffer), crc);
    }
    return { size: reader.size, crc32: crc };
  } finally {
    await reader.close();
  }
}
