import { MAX_BUFFER_BYTES } from "../formats/byte-io.js";
import type { FileReader } from "../fs/file-system.js";
import { withRetries } from "./retry.js";
import { ObjectStoreError } from "./s3-errors.js";
import { runBounded, type S3Session } from "./s3-session.js";
import { formatS3Url, type S3Location } from "./s3-url.js";

/**
 * Reads of more than this are split into ranges fetched in parallel: large enough that a GET's
 * latency is small beside its transfer, small enough that `concurrency` of them keep a link busy.
 */
export const READ_RANGE_SIZE = 8 * 1024 * 1024;

/** Opens an object for positioned reads: its size and ETag come from one HEAD. */
export async function openS3Reader(session: S3Session, location: S3Location): Promise<FileReader> {
  const url = formatS3Url(location);
  const head = await withRetries("HeadObject", url, session.retry, () => session.client.send(new session.sdk.HeadObjectCommand({ Bucket: location.bucket, Key: location.key })));
  return new S3Reader(session, location, head.ContentLength ?? 0, head.ETag);
}

/**
 * Positioned reads by ranged GETs, each conditioned on the ETag seen at open (If-Match), so a
 * replaced object fails the read instead of mixing two versions; the ETag of each answer is
 * compared too, for servers that ignore If-Match (s3rver). Bytes go straight into the target.
 */
class S3Reader implements FileReader {
  private readonly url: string;

  constructor(
    private readonly session: S3Session,
    private readonly location: S3Location,
    readonly size: number,
    private readonly etag: string | undefined,
  ) {
    this.url = formatS3Url(location);
  }

  async read(position: number, length: number, target?: Uint8Array): Promise<Uint8Array> {
    if (!Number.isSafeInteger(position) || !Number.isSafeInteger(length) || position < 0 || length < 0 || position + length > this.size) {
      throw new RangeError(`read of ${length} bytes at ${position} is outside the ${this.size} bytes of ${this.url}`);
    }
    if (target !== undefined && target.byteLength < length) throw new RangeError(`a target of ${target.byteLength} bytes cannot hold ${length} bytes of ${this.url}`);
    if (target === undefined && length > MAX_BUFFER_BYTES) {
      throw new RangeError(`cannot read ${length} bytes of ${this.url} at once: a Node.js buffer holds at most ${MAX_BUFFER_BYTES}`);
    }
    const buffer = target ?? Buffer.allocUnsafeSlow(length);
    const ranges = Math.ceil(length / READ_RANGE_SIZE);
    await runBounded(ranges, this.session.settings.concurrency, async (index) => {
      const offset = index * READ_RANGE_SIZE;
      await this.readRange(position + offset, buffer.subarray(offset, Math.min(length, offset + READ_RANGE_SIZE)));
    });
    return buffer.subarray(0, length);
  }

  async close(): Promise<void> {
    // Nothing held open: each range is its own request.
  }

  /** Fills `into` from `position`; a GET cut mid-body is retried for the missing rest only. */
  private async readRange(position: number, into: Uint8Array): Promise<void> {
    let received = 0;
    await withRetries("GetObject", this.url, this.session.retry, async () => {
      const start = position + received;
      const end = position + into.byteLength - 1;
      const response = await this.session.client.send(
        new this.session.sdk.GetObjectCommand({
          Bucket: this.location.bucket,
          Key: this.location.key,
          Range: `bytes=${start}-${end}`,
          ...(this.etag === undefined ? {} : { IfMatch: this.etag }),
        }),
      );
      const body = response.Body as AsyncIterable<Uint8Array> | undefined;
      if (this.etag !== undefined && response.ETag !== this.etag) {
        (body as { destroy?: () => void } | undefined)?.destroy?.();
        throw this.changedError(`its ETag went from ${this.etag} to ${response.ETag}`);
      }
      if (body === undefined) throw this.changedError("a ranged GET returned no body");
      for await (const chunk of body) {
        if (received + chunk.byteLength > into.byteLength) throw this.changedError(`a GET of bytes ${start}-${end} returned more bytes than asked`);
        into.set(chunk, received);
        received += chunk.byteLength;
      }
      if (received !== into.byteLength) throw Object.assign(new Error(`premature close: ${received} of ${into.byteLength} bytes arrived`), { code: "ERR_STREAM_PREMATURE_CLOSE" });
    });
  }

  private changedError(detail: string): ObjectStoreError {
    return new ObjectStoreError("GetObject", this.url, { status: undefined, code: "ObjectChanged", message: `the object changed while being read: ${detail}` }, 1, undefined);
  }
}
