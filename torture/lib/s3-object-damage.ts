/**
 * The damage of the corruption class (torture/lib/mutations.ts), done to an object in s3rver's store
 * on disk. s3rver keeps object `k` as the file `k._S3rver_object`, with `k._S3rver_object.md5` (its
 * ETag) and `k._S3rver_metadata.json` (its headers) beside it, and takes the size from the file
 * itself. After the bytes change the ETag file is removed, so s3rver computes it again from the
 * damaged bytes: the server then serves the damage consistently (HEAD and GET agree), as S3 serves
 * an object that was stored damaged, instead of failing its requests.
 */
import { readFile, rename, rm } from "node:fs/promises";
import { mutate, type MutationKind } from "./mutations.js";
import type { Random } from "./random.js";

const OBJECT = "._S3rver_object";
const ETAG = "._S3rver_object.md5";
const METADATA = "._S3rver_metadata.json";

/** An object as its key's path in the store (without s3rver's suffixes) and as shown in reports. */
export interface StoredObject {
  path: string;
  shown: string;
}

export const objectBytes = (path: string): Promise<Buffer> => readFile(`${path}${OBJECT}`);

/** Applies `kind` to `target` (and for a swap `other`); returns what was done. */
export async function damageObject(random: Random, kind: MutationKind, target: StoredObject, other?: StoredObject): Promise<string> {
  if (kind === "deletion") {
    for (const suffix of [OBJECT, ETAG, METADATA]) await rm(`${target.path}${suffix}`, { force: true });
    return `removed the object ${target.shown}`;
  }
  const mutation = await mutate(random, kind, `${target.path}${OBJECT}`, target.shown, other && { path: `${other.path}${OBJECT}`, shown: other.shown });
  if (other !== undefined) {
    await rename(`${target.path}${METADATA}`, `${target.path}${METADATA}.swap`);
    await rename(`${other.path}${METADATA}`, `${target.path}${METADATA}`);
    await rename(`${target.path}${METADATA}.swap`, `${other.path}${METADATA}`);
    await rm(`${other.path}${ETAG}`, { force: true });
  }
  await rm(`${target.path}${ETAG}`, { force: true });
  return mutation.what;
}
