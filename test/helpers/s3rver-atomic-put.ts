/**
 * s3rver (3.7) stores a PutObject by truncating the object's file and piping the request into it:
 * a client killed mid-body leaves the old object destroyed and a torn new one in its place (and the
 * request hanging). S3 stores an object whole or not at all; the crash torture (torture/classes/
 * crash-s3.ts) kills writers mid-request, so the tests serve S3's behaviour: the body is read whole
 * (a body cut short is refused), written to a staging file and renamed over the object's file.
 */
import { createHash, randomBytes } from "node:crypto";
import { mkdir, rename, writeFile } from "node:fs/promises";
import { dirname, join } from "node:path";

interface StoredObject {
  bucket: string;
  key: string;
  content: Buffer | AsyncIterable<Buffer>;
  metadata: Record<string, string>;
}

interface Store {
  getResourcePath(bucket: string, key: string, resource: string): string;
  putMetadata(bucket: string, key: string, metadata: Record<string, string>, md5: string): Promise<void>;
  putObject(object: StoredObject): Promise<{ size: number; md5: string }>;
}

/** `stagingDir`: a directory on the store's file system, outside its buckets. */
export function makePutObjectAtomic(store: Store, stagingDir: string): void {
  store.putObject = async (object) => {
    let content: Buffer;
    if (Buffer.isBuffer(object.content)) content = object.content;
    else {
      const chunks: Buffer[] = [];
      for await (const chunk of object.content) chunks.push(chunk); // throws when the client goes mid-body
      content = Buffer.concat(chunks);
      // Only a PutObject's body is the request itself; a multipart completion's is its parts.
      const declared = (object.content as { headers?: Record<string, string | undefined> }).headers?.["content-length"];
      if (declared !== undefined && Number(declared) !== content.length) throw new Error(`PutObject body cut short: ${content.length} of ${declared} bytes`);
    }
    const objectPath = store.getResourcePath(object.bucket, object.key, "object");
    const staged = join(stagingDir, randomBytes(8).toString("hex"));
    await mkdir(stagingDir, { recursive: true });
    await writeFile(staged, content);
    await mkdir(dirname(objectPath), { recursive: true });
    await rename(staged, objectPath);
    const md5 = createHash("md5").update(content).digest("hex");
    await store.putMetadata(object.bucket, object.key, object.metadata, md5);
    return { size: content.length, md5 };
  };
}
