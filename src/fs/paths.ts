import { posix } from "node:path";

/** Joins path segments with "/" (the FileSystem contract's separator, on disks and in buckets). */
export function joinPath(...segments: string[]): string {
  return posix.join(...segments);
}
