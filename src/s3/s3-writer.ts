import type { CompletedPart } from "@aws-sdk/client-s3";
import type { FileWriter } from "../fs/file-system.js";
import { PartPool } from "./part-pool.js";
import { withRetries } from "./retry.js";
import { errorFacts, isNotFound, isNotImplemented, objectStoreError } from "./s3-errors.js";
import { MAX_PARTS } from "./s3-options.js";
import type { S3Session } from "./s3-session.js";
import { formatS3Url, type S3Location } from "./s3-url.js";

/**
 * Parts double in size every this many parts, so 10,000 parts hold any file: with the default
 * 16 MiB parts, the first 2,000 hold 31 GiB and all 10,000 969 GiB (303 GiB with 5 MiB parts).
 */
const PARTS_PER_SIZE_TIER = 2_000;

export function partSizeFor(partNumber: number, basePartSize: number): number {
  return basePartSize * 2 ** Math.floor((partNumber - 1) / PARTS_PER_SIZE_TIER);
}

/**
 * Writes an object: one PutObject when everything fits in one part, else a multipart upload with
 * at most `concurrency` parts in flight, from a pool of `concurrency + 1` part buffers (one being
 * filled): `write` waits for a free upload slot and a free buffer (back-pressure). Nothing is visible at the key until `close` resolves; a failure or `abort` aborts the
 * multipart upload, so no parts are left behind (where the server can abort them).
 */
export class S3Writer implements FileWriter {
  private readonly url: string;
  private readonly pool: PartPool;
  private current: Buffer | undefined;
  private filled = 0;
  private dispatchedParts = 0;
  private upload: Promise<string> | undefined;
  private readonly inFlight = new Set<Promise<void>>();
  private readonly completed: CompletedPart[] = [];
  private failure: { error: unknown } | undefined;
  private state: "open" | "closing" | "done" = "open";

  constructor(
    private readonly session: S3Session,
    private readonly location: S3Location,
  ) {
    this.url = formatS3Url(location);
    this.pool = new PartPool(session.settings.concurrency + 1);
  }

  async write(chunk: Uint8Array): Promise<void> {
    if (this.state !== "open") throw objectStoreError("EINVAL", `${this.url} is already closed`);
    let offset = 0;
    while (offset < chunk.byteLength) {
      if (this.failure !== undefined) throw this.failure.error;
      if (this.current === undefined) {
        this.current = await this.pool.acquire(partSizeFor(this.dispatchedParts + 1, this.session.settings.partSize));
        this.filled = 0;
        continue; // a part may have failed while we waited
      }
      const partSize = partSizeFor(this.dispatchedParts + 1, this.session.settings.partSize);
      if (this.filled === partSize) {
        // Full, and more bytes are coming: not the last part. It goes when an upload slot is free.
        await this.slotFree();
        if (this.failure === undefined) this.dispatchPart();
        continue;
      }
      const taken = Math.min(partSize - this.filled, chunk.byteLength - offset);
      this.current.set(chunk.subarray(offset, offset + taken), this.filled);
      this.filled += taken;
      offset += taken;
    }
  }

  async close(): Promise<void> {
    if (this.state !== "open") throw objectStoreError("EINVAL", `${this.url} is already closed`);
    this.state = "closing";
    try {
      if (this.upload === undefined) {
        await this.putWhole();
      } else {
        await this.slotFree();
        if (this.filled > 0 && this.failure === undefined) this.dispatchPart();
        await this.settle();
        if (this.failure !== undefined) throw this.failure.error;
        await this.complete(await this.upload);
      }
      this.state = "done";
    } catch (error) {
      this.state = "done";
      await this.settle();
      await this.abortUpload().catch((abortError: unknown) => warnLeftBehind(this.url, abortError));
      throw error;
    }
  }

  async abort(): Promise<void> {
    if (this.state === "done") return;
    this.state = "done";
    await this.settle();
    await this.abortUpload();
  }

  private async putWhole(): Promise<void> {
    const body = this.current?.subarray(0, this.filled) ?? new Uint8Array(0);
    await withRetries("PutObject", this.url, this.session.retry, () =>
      this.session.client.send(new this.session.sdk.PutObjectCommand({ Bucket: this.location.bucket, Key: this.location.key, Body: body, ContentLength: body.byteLength })),
    );
  }

  private dispatchPart(): void {
    const buffer = this.current!;
    const partNumber = ++this.dispatchedParts;
    const bytes = buffer.subarray(0, this.filled);
    this.current = undefined;
    this.filled = 0;
    if (partNumber > MAX_PARTS) {
      this.pool.release(buffer);
      this.failure ??= { error: objectStoreError("EFBIG", `${this.url}: more than ${MAX_PARTS} parts, S3's limit`) };
      return;
    }
    this.upload ??= this.createUpload();
    const task = this.uploadPart(partNumber, bytes)
      .catch((error: unknown) => {
        this.failure ??= { error };
      })
      .finally(() => {
        this.pool.release(buffer);
        this.inFlight.delete(task);
      });
    this.inFlight.add(task);
  }

  private async createUpload(): Promise<string> {
    const response = await withRetries("CreateMultipartUpload", this.url, this.session.retry, () =>
      this.session.client.send(new this.session.sdk.CreateMultipartUploadCommand({ Bucket: this.location.bucket, Key: this.location.key })),
    );
    if (response.UploadId === undefined) throw objectStoreError("S3", `CreateMultipartUpload ${this.url} returned no upload id`);
    return response.UploadId;
  }

  private async uploadPart(partNumber: number, bytes: Uint8Array): Promise<void> {
    const uploadId = await this.upload!;
    const response = await withRetries(`UploadPart ${partNumber} of`, this.url, this.session.retry, () =>
      this.session.client.send(
        new this.session.sdk.UploadPartCommand({ Bucket: this.location.bucket, Key: this.location.key, UploadId: uploadId, PartNumber: partNumber, Body: bytes, ContentLength: bytes.byteLength }),
      ),
    );
    this.completed.push({ PartNumber: partNumber, ETag: response.ETag });
  }

  private async complete(uploadId: string): Promise<void> {
    const parts = [...this.completed].sort((a, b) => a.PartNumber! - b.PartNumber!);
    await withRetries("CompleteMultipartUpload", this.url, this.session.retry, () =>
      this.session.client.send(
        new this.session.sdk.CompleteMultipartUploadCommand({ Bucket: this.location.bucket, Key: this.location.key, UploadId: uploadId, MultipartUpload: { Parts: parts } }),
      ),
    );
  }

  /** Waits until fewer than `concurrency` parts are in flight. */
  private async slotFree(): Promise<void> {
    while (this.inFlight.size >= this.session.settings.concurrency) await Promise.race(this.inFlight);
  }

  /** Waits for every part in flight (an abort while a part still uploads could leave that part). */
  private async settle(): Promise<void> {
    while (this.inFlight.size > 0) await Promise.all(this.inFlight);
  }

  private async abortUpload(): Promise<void> {
    if (this.current !== undefined) {
      this.pool.release(this.current);
      this.current = undefined;
    }
    if (this.upload === undefined) return;
    let uploadId: string;
    try {
      uploadId = await this.upload;
    } catch {
      return; // the upload was never created: nothing to abort (its error was thrown already)
    }
    await abortMultipartUpload(this.session, this.location, uploadId);
  }
}

/**
 * Aborts an upload. A server without AbortMultipartUpload (s3rver) is told about once per process
 * by a warning: its parts stay stored but are never visible at the key.
 */
export async function abortMultipartUpload(session: S3Session, location: S3Location, uploadId: string): Promise<void> {
  const url = formatS3Url(location);
  try {
    await withRetries("AbortMultipartUpload", url, session.retry, () =>
      session.client.send(new session.sdk.AbortMultipartUploadCommand({ Bucket: location.bucket, Key: location.key, UploadId: uploadId })),
    );
  } catch (error) {
    const facts = errorFacts((error as { cause?: unknown }).cause ?? error);
    if (isNotFound(facts)) return; // already aborted or completed
    if (!isNotImplemented(facts)) throw error;
    warnOnce("abort", `this S3 server cannot abort multipart uploads (${facts.code}): the parts of ${url} (upload ${uploadId}) stay stored, invisible; configure the bucket to expire incomplete uploads`);
  }
}

const warned = new Set<string>();

export function warnOnce(topic: string, message: string): void {
  if (warned.has(topic)) return;
  warned.add(topic);
  process.emitWarning(message, { code: "CKPT_S3" });
}

/** A failed write could not abort its upload: say so (the original failure is what is thrown). */
function warnLeftBehind(url: string, error: unknown): void {
  process.emitWarning(`the failed upload of ${url} could not be aborted, its parts may stay until removeAbandonedWrites or a lifecycle rule removes them: ${(error as Error).message}`, { code: "CKPT_S3" });
}
