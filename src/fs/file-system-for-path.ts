import { InvalidArgumentError } from "../errors.js";
import { S3FileSystem } from "../s3/s3-file-system.js";
import type { FileSystem } from "./file-system.js";
import { LocalFileSystem } from "./local-file-system.js";
import { isUrlPath } from "./paths.js";

/** One per process for s3:// paths named without a file system: its client and connections are shared. */
let defaultS3: S3FileSystem | undefined;

/**
 * The file system a path names: `s3://bucket/prefix` an object store (configured from the standard
 * AWS environment; pass an `S3FileSystem` of your own for other settings), anything else the local
 * disk. The manager and the CLI choose by it, so a user only ever gives a path.
 */
export function fileSystemForPath(path: string): FileSystem {
  if (/^s3:\/\//i.test(path)) return (defaultS3 ??= new S3FileSystem());
  if (isUrlPath(path)) throw new InvalidArgumentError(`${path}: only local paths and s3://bucket/prefix URLs are supported`);
  return new LocalFileSystem();
}
