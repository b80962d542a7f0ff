import { InvalidArgumentError } from "../errors.js";
import type { FileSystem } from "./file-system.js";
import { LocalFileSystem } from "./local-file-system.js";
import { isUrlPath } from "./paths.js";

/**
 * The file system a path names: `s3://bucket/prefix` an object store, anything else the local
 * disk. The manager and the CLI choose by it, so a user only ever gives a path.
 */
export function fileSystemForPath(path: string): FileSystem {
  if (/^s3:\/\//i.test(path)) throw new InvalidArgumentError(`${path}: s3:// paths are not supported yet`);
  if (isUrlPath(path)) throw new InvalidArgumentError(`${path}: only local paths and s3://bucket/prefix URLs are supported`);
  return new LocalFileSystem();
}
