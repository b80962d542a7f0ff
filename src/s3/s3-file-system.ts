import type { _Object, ObjectIdentifier } from "@aws-sdk/client-s3";
import { CkptError } from "../errors.js";
import type { DirectoryEntry, FileLock, FileReader, FileSystem, FileWriter } from "../fs/file-system.js";
import { withRetries } from "./retry.js";
import { removeAbandonedUploads } from "./abandoned-uploads.js";
import { ObjectStoreError } from "./s3-errors.js";
import { acquireS3Lease } from "./s3-lease.js";
import { createClient, resolveSettings, type ResolvedS3Settings, type S3FileSystemOptions } from "./s3-options.js";
import { openS3Reader } from "./s3-reader.js";
import type { S3Session } from "./s3-session.js";
import { directoryPrefix, formatS3Url, parseS3Url, type S3Location } from "./s3-url.js";
import { S3Writer } from "./s3-writer.js";
import { loadS3Sdk } from "./sdk-loader.js";

/** DeleteObjects takes at most this many keys per request. */
const DELETE_BATCH = 1000;

/**
 * Object storage (S3 and compatible) as a FileSystem. Paths are `s3://bucket/key` URLs; a
 * "directory" is a key prefix ending in "/", which exists while any object is under it. There is no
 * rename (`supportsRename` is false), so the manager commits by writing its manifest last.
 *
 * @example
 * const fs = new S3FileSystem({ endpoint: "http://127.0.0.1:9000" });
 * await fs.writeFile("s3://bucket/run/step_1/model.pt", bytes);
 */
export class S3FileSystem implements FileSystem {
  readonly supportsRename = false;
  private readonly settings: ResolvedS3Settings;
  private session: Promise<S3Session> | undefined;

  constructor(
    private readonly options: S3FileSystemOptions = {},
    /** The module to load the SDK from; only the test of the missing-SDK message changes it. */
    private readonly sdkSpecifier?: string,
  ) {
    this.settings = resolveSettings(options);
  }

  /** The SDK is loaded, and the client made, at first use: the constructor needs neither. */
  private connect(): Promise<S3Session> {
    this.session ??= (async () => {
      const sdk = await loadS3Sdk(this.sdkSpecifier);
      const client = this.options.client ?? createClient(sdk, this.options);
      return { sdk, client, settings: this.settings, retry: { maxAttempts: this.settings.maxAttempts, baseDelayMs: this.settings.retryBaseDelayMs } };
    })();
    this.session.catch(() => (this.session = undefined)); // a failed load is tried again next time
    return this.session;
  }

  resolvePath(path: string): string {
    return formatS3Url(parseS3Url(path));
  }

  async openReader(path: string): Promise<FileReader> {
    return openS3Reader(await this.connect(), this.objectLocation(path));
  }

  async createWriter(path: string): Promise<FileWriter> {
    return new S3Writer(await this.connect(), this.objectLocation(path));
  }

  async readFile(path: string): Promise<Uint8Array> {
    const reader = await this.openReader(path);
    try {
      return await reader.read(0, reader.size);
    } finally {
      await reader.close();
    }
  }

  /** One PutObject up to a part's size (no part buffer needed); larger data goes through a multipart writer. */
  async writeFile(path: string, data: Uint8Array): Promise<void> {
    const session = await this.connect();
    const location = this.objectLocation(path);
    if (data.byteLength <= this.settings.partSize) {
      await withRetries("PutObject", formatS3Url(location), session.retry, () =>
        session.client.send(new session.sdk.PutObjectCommand({ Bucket: location.bucket, Key: location.key, Body: data, ContentLength: data.byteLength })),
      );
      return;
    }
    const writer = new S3Writer(session, location);
    try {
      await writer.write(data);
    } catch (error) {
      await writer.abort();
      throw error;
    }
    await writer.close(); // aborts by itself when it fails
  }

  async exists(path: string): Promise<boolean> {
    const session = await this.connect();
    const location = parseS3Url(path);
    if (location.key !== "" && (await this.head(session, location)) !== undefined) return true;
    const page = await this.listPage(session, location.bucket, directoryPrefix(location.key), { maxKeys: 1 });
    return (page.Contents?.length ?? 0) > 0;
  }

  /** LastModified of the object, or for a directory of the newest object under it. */
  async modifiedTime(path: string): Promise<number | undefined> {
    const session = await this.connect();
    const location = parseS3Url(path);
    if (location.key !== "") {
      const head = await this.head(session, location);
      if (head !== undefined) return head.LastModified?.getTime();
    }
    let newest: number | undefined;
    for await (const object of this.objectsUnder(session, location)) {
      const time = object.LastModified?.getTime();
      if (time !== undefined && (newest === undefined || time > newest)) newest = time;
    }
    return newest;
  }

  async listDirectory(path: string): Promise<DirectoryEntry[]> {
    const session = await this.connect();
    const location = parseS3Url(path);
    const prefix = directoryPrefix(location.key);
    const entries: DirectoryEntry[] = [];
    let token: string | undefined;
    do {
      const page = await this.listPage(session, location.bucket, prefix, { delimiter: "/", token });
      for (const common of page.CommonPrefixes ?? []) {
        const name = common.Prefix?.slice(prefix.length).replace(/\/$/, "");
        if (name) entries.push({ name, isDirectory: true });
      }
      for (const object of page.Contents ?? []) {
        const name = object.Key?.slice(prefix.length);
        if (name) entries.push({ name, isDirectory: false }); // "" is a folder marker ("dir/" itself)
      }
      token = page.IsTruncated === true ? page.NextContinuationToken : undefined;
    } while (token !== undefined);
    return entries;
  }

  async makeDirectory(_path: string): Promise<void> {
    // A prefix exists once an object is under it: nothing to create.
  }

  async syncDirectory(_path: string): Promise<void> {
    // A completed upload is durable and listed: nothing to flush.
  }

  /**
   * Deletes the object at `path` and every object under `path/`, in batches of 1,000. The keys are
   * all listed first: deleting while paging through a listing can skip or repeat keys on servers
   * whose pages are not in key order (s3rver).
   */
  async remove(path: string): Promise<void> {
    const location = parseS3Url(path);
    if (location.key === "") throw new CkptError("EPERM", `refusing to remove ${path}: that is a whole bucket`);
    const session = await this.connect();
    const keys = new Set<string>([location.key]);
    for await (const object of this.objectsUnder(session, location)) keys.add(object.Key!);
    const all = [...keys];
    for (let start = 0; start < all.length; start += DELETE_BATCH) {
      await this.deleteBatch(session, location.bucket, all.slice(start, start + DELETE_BATCH).map((Key) => ({ Key })));
    }
  }

  async renameDirectory(from: string, to: string): Promise<void> {
    throw new CkptError("ENOTSUP", `cannot rename ${from} to ${to}: object storage has no rename (supportsRename is false; commit by writing a manifest last)`);
  }

  async lock(path: string): Promise<FileLock> {
    return acquireS3Lease(await this.connect(), this.objectLocation(path));
  }

  async removeAbandonedWrites(dir: string): Promise<void> {
    await removeAbandonedUploads(await this.connect(), parseS3Url(dir));
  }

  private objectLocation(path: string): S3Location {
    const location = parseS3Url(path);
    if (location.key === "") throw new CkptError("EISDIR", `${path} is a bucket, not an object`);
    return location;
  }

  private async head(session: S3Session, location: S3Location): Promise<{ LastModified?: Date | undefined } | undefined> {
    try {
      return await withRetries("HeadObject", formatS3Url(location), session.retry, () => session.client.send(new session.sdk.HeadObjectCommand({ Bucket: location.bucket, Key: location.key })));
    } catch (error) {
      if (error instanceof ObjectStoreError && error.code === "ENOENT" && error.s3Code !== "NoSuchBucket") return undefined;
      throw error;
    }
  }

  private listPage(session: S3Session, bucket: string, prefix: string, page: { delimiter?: string; token?: string | undefined; maxKeys?: number }) {
    return withRetries("ListObjectsV2", formatS3Url({ bucket, key: prefix }), session.retry, () =>
      session.client.send(
        new session.sdk.ListObjectsV2Command({
          Bucket: bucket,
          Prefix: prefix,
          ...(page.delimiter === undefined ? {} : { Delimiter: page.delimiter }),
          ...(page.token === undefined ? {} : { ContinuationToken: page.token }),
          ...(page.maxKeys === undefined ? {} : { MaxKeys: page.maxKeys }),
        }),
      ),
    );
  }

  /** Every object under `location` as a directory, all levels down, page by page. */
  private async *objectsUnder(session: S3Session, location: S3Location): AsyncGenerator<_Object> {
    let token: string | undefined;
    do {
      const page = await this.listPage(session, location.bucket, directoryPrefix(location.key), { token });
      yield* page.Contents ?? [];
      token = page.IsTruncated === true ? page.NextContinuationToken : undefined;
    } while (token !== undefined);
  }

  private async deleteBatch(session: S3Session, bucket: string, objects: ObjectIdentifier[]): Promise<void> {
    const url = formatS3Url({ bucket, key: objects[0]!.Key! });
    const response = await withRetries(`DeleteObjects (${objects.length} keys from)`, url, session.retry, () =>
      session.client.send(new session.sdk.DeleteObjectsCommand({ Bucket: bucket, Delete: { Objects: objects, Quiet: true } })),
    );
    const failed = response.Errors ?? [];
    if (failed.length > 0) {
      const first = failed[0]!;
      const code = first.Code === "AccessDenied" ? "EACCES" : "S3";
      throw new CkptError(code, `DeleteObjects could not delete ${failed.length} of ${objects.length} objects, e.g. ${formatS3Url({ bucket, key: first.Key ?? "?" })} (${first.Code}: ${first.Message})`);
    }
  }
}
