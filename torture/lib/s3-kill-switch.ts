/**
 * The kill switch of the S3 crash class (torture/classes/crash-s3.ts): each request that changes
 * the bucket under a prefix (PutObject, a part, the start, completion or abort of a multipart
 * upload, DeleteObject(s)) is a numbered point; `point <label>` is printed before it is sent and
 * the process SIGKILLs itself just before the k-th. The lease object's own requests are not points:
 * its renewals come on a timer, so counting them would shift the numbering from one run to the next.
 */
import { S3Client } from "@aws-sdk/client-s3";
import { say } from "../../test/helpers/kill-switch.js";

const LEASE_OBJECT = ".ckpt.lock";

/** A point's name, the same in every run: a save directory's random name is left out. */
export function s3Label(prefix: string, key: string): string {
  return (key.startsWith(prefix) ? key.slice(prefix.length) : key).replace(/save-[0-9a-z]+-[0-9a-f]{8}/, "save-*");
}

interface SentInput {
  Key?: string;
  PartNumber?: number;
  Delete?: { Objects?: { Key?: string }[] };
}

function describeRequest(name: string, input: SentInput, prefix: string): string | undefined {
  const key = (k: string | undefined): string => s3Label(prefix, k ?? "?");
  switch (name) {
    case "PutObjectCommand":
      return `put ${key(input.Key)}`;
    case "UploadPartCommand":
      return `part ${input.PartNumber ?? "?"} ${key(input.Key)}`;
    case "CreateMultipartUploadCommand":
      return `create-upload ${key(input.Key)}`;
    case "CompleteMultipartUploadCommand":
      return `complete-upload ${key(input.Key)}`;
    case "AbortMultipartUploadCommand":
      return `abort-upload ${key(input.Key)}`;
    case "DeleteObjectCommand":
      return `delete ${key(input.Key)}`;
    case "DeleteObjectsCommand": {
      const keys = input.Delete?.Objects ?? [];
      return `delete ${key(keys[0]?.Key)}${keys.length > 1 ? ` and ${keys.length - 1} more` : ""}`;
    }
    default:
      return undefined; // a read
  }
}

/** `prefix`: the checkpoint directory's key prefix ("run-3/"); requests outside it are not points. */
export function installS3KillSwitch(prefix: string, killAt: number | undefined): void {
  let count = 0;
  const send = S3Client.prototype.send as (this: S3Client, command: unknown, ...rest: unknown[]) => Promise<unknown>;
  (S3Client.prototype as { send: unknown }).send = function (this: S3Client, command: { constructor: { name: string }; input: SentInput }, ...rest: unknown[]) {
    const firstKey = command.input.Key ?? command.input.Delete?.Objects?.[0]?.Key ?? "";
    const label = firstKey.startsWith(prefix) && !firstKey.endsWith(LEASE_OBJECT) ? describeRequest(command.constructor.name, command.input, prefix) : undefined;
    if (label !== undefined) {
      count++;
      if (count === killAt) {
        say(`kill ${label}`);
        process.kill(process.pid, "SIGKILL");
      }
      say(`point ${label}`);
    }
    return send.call(this, command, ...rest);
  };
}
