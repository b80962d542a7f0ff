import { posix } from "node:path";
import { InvalidArgumentError } from "../errors.js";

/** A location in a bucket: `key` has no leading or trailing "/" ("" is the bucket's root). */
export interface S3Location {
  bucket: string;
  key: string;
}

const S3_URL = /^s3:\/\/([^/]+)(\/.*)?$/i;

/**
 * Parses `s3://bucket/key/...`, normalising the key as a path ("a//b/./c/" → "a/b/c"), since
 * the FileSystem contract joins paths with "/" and treats "dir" and "dir/" alike.
 */
export function parseS3Url(url: string): S3Location {
  const match = S3_URL.exec(url);
  if (match === null) throw new InvalidArgumentError(`${url} is not an s3://bucket/key URL`);
  const normalised = posix.normalize(`/${match[2] ?? ""}`);
  if (normalised.startsWith("/..")) throw new InvalidArgumentError(`${url} climbs above its bucket`);
  return { bucket: match[1]!, key: normalised.replace(/^\/+|\/+$/g, "") };
}

export function formatS3Url({ bucket, key }: S3Location): string {
  return key === "" ? `s3://${bucket}` : `s3://${bucket}/${key}`;
}

/** The prefix of every object "inside" `key` as a directory: "key/" (or "" at the bucket's root). */
export function directoryPrefix(key: string): string {
  return key === "" ? "" : `${key}/`;
}
