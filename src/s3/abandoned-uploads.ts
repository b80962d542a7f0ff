import { withRetries } from "./retry.js";
import { errorFacts, isNotImplemented } from "./s3-errors.js";
import type { S3Session } from "./s3-session.js";
import { directoryPrefix, formatS3Url, type S3Location } from "./s3-url.js";
import { abortMultipartUpload, warnOnce } from "./s3-writer.js";

/**
 * Aborts the multipart uploads under `dir/` that were started before this call: those of writers
 * that died (a writer that lives completes or aborts its own). The owner of a directory calls it
 * when it takes the directory, before its own writers start. "Before" compares the server's
 * Initiated time with this host's clock (see docs/design.md: the clock assumption).
 *
 * A server without ListMultipartUploads (s3rver answers NotImplemented) cannot be cleaned this
 * way: a warning says so once, and the bucket should expire incomplete uploads by a lifecycle rule.
 */
export async function removeAbandonedUploads(session: S3Session, dir: S3Location): Promise<number> {
  const startedBefore = Date.now();
  const prefix = directoryPrefix(dir.key);
  const url = formatS3Url(dir);
  let aborted = 0;
  let keyMarker: string | undefined;
  let uploadIdMarker: string | undefined;
  do {
    let page;
    try {
      page = await withRetries("ListMultipartUploads", url, session.retry, () =>
        session.client.send(
          new session.sdk.ListMultipartUploadsCommand({
            Bucket: dir.bucket,
            Prefix: prefix,
            ...(keyMarker === undefined ? {} : { KeyMarker: keyMarker }),
            ...(uploadIdMarker === undefined ? {} : { UploadIdMarker: uploadIdMarker }),
          }),
        ),
      );
    } catch (error) {
      const facts = errorFacts((error as { cause?: unknown }).cause ?? error);
      if (!isNotImplemented(facts)) throw error;
      warnOnce("list-uploads", `this S3 server cannot list multipart uploads (${facts.code}): uploads abandoned under ${url} by crashed writers cannot be aborted; they stay stored, invisible; configure the bucket to expire incomplete uploads`);
      return aborted;
    }
    for (const upload of page.Uploads ?? []) {
      if (upload.Key === undefined || upload.UploadId === undefined) continue;
      if (upload.Initiated !== undefined && upload.Initiated.getTime() >= startedBefore) continue; // a live writer's
      await abortMultipartUpload(session, { bucket: dir.bucket, key: upload.Key }, upload.UploadId);
      aborted++;
    }
    keyMarker = page.IsTruncated === true ? page.NextKeyMarker : undefined;
    uploadIdMarker = page.IsTruncated === true ? page.NextUploadIdMarker : undefined;
  } while (keyMarker !== undefined);
  return aborted;
}
