import { posix } from "node:path";

/** `s3://bucket` and other URL roots: kept whole, since a path join would fold their "//". */
const URL_ROOT = /^([a-z][a-z0-9+.-]*:\/\/[^/]*)(\/.*)?$/i;

/**
 * Joins path segments with "/" (the FileSystem contract's separator, on disks and in buckets).
 * A first segment that is a URL (`s3://bucket/prefix`) keeps its scheme and authority.
 */
export function joinPath(...segments: string[]): string {
  const match = segments.length > 0 ? URL_ROOT.exec(segments[0]!) : null;
  if (match === null) return posix.join(...segments);
  const rest = posix.join("/", match[2] ?? "/", ...segments.slice(1));
  return rest === "/" ? match[1]! : `${match[1]}${rest}`;
}

/** True for `scheme://...` paths, which name objects in a store rather than local files. */
export function isUrlPath(path: string): boolean {
  return URL_ROOT.test(path);
}
