import { spawn } from "node:child_process";
import { once } from "node:events";
import { mkdtempSync, promises as fsp, rmSync } from "node:fs";
import type { IncomingMessage, ServerResponse } from "node:http";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import { makePutObjectAtomic } from "./s3rver-atomic-put.js";
import { fixDelimitedListing } from "./s3rver-listing-fix.js";
// @ts-expect-error s3rver ships no type declarations
import S3rver from "s3rver";

/** The credentials s3rver accepts by default (dummies: it serves only loopback). */
const SELF = fileURLToPath(import.meta.url);

export const S3RVER_CREDENTIALS = { accessKeyId: "S3RVER", secretAccessKey: "S3RVER" };

export interface S3TestServer {
  /** `http://127.0.0.1:<port>` */
  endpoint: string;
  bucket: string;
  credentials: typeof S3RVER_CREDENTIALS;
  /** The directory s3rver keeps its objects in. */
  directory: string;
  /** The server process (s3rver runs in a child process). */
  pid: number;
  /** `s3://<bucket>/<prefix>` */
  url(prefix: string): string;
  /** The ids of the multipart uploads s3rver holds (started, neither completed nor aborted). */
  pendingUploads(): Promise<string[]>;
  stop(): Promise<void>;
}

export interface S3TestServerOptions {
  /**
   * s3rver lacks AbortMultipartUpload and ListMultipartUploads (it answers 405 / 501). By default
   * the harness adds both, working on s3rver's own store of uploads, so aborts can be checked;
   * false serves plain s3rver, to test how the library copes with a server without them.
   */
  multipartAdmin?: boolean;
}

/**
 * A real S3 server (s3rver) on 127.0.0.1, port 0, in a fresh temp directory, in a child process
 * started with --openssl-legacy-provider: s3rver signs its ListObjectsV2 continuation tokens with
 * DES, which OpenSSL 3 (Node.js ≥ 17) refuses otherwise, so every truncated listing would be a 500.
 * Stopped by its PID; it also exits when this process goes (its stdin closes).
 */
export async function startS3Server(options: S3TestServerOptions = {}): Promise<S3TestServer> {
  const directory = mkdtempSync(join(tmpdir(), "ckpt-s3rver-"));
  const bucket = "ckpt-test";
  process.env.AWS_ACCESS_KEY_ID ??= S3RVER_CREDENTIALS.accessKeyId;
  process.env.AWS_SECRET_ACCESS_KEY ??= S3RVER_CREDENTIALS.secretAccessKey;
  const child = spawn(process.execPath, ["--openssl-legacy-provider", "--import", "tsx", SELF, directory, bucket, String(options.multipartAdmin !== false)], {
    stdio: ["pipe", "pipe", "inherit"],
  });
  const exited = once(child, "exit");
  const [line] = (await Promise.race([once(createInterface({ input: child.stdout! }), "line"), exited.then(() => ["exited"])])) as [string];
  const port = Number(/^listening (\d+)$/.exec(line)?.[1]);
  if (!Number.isInteger(port)) throw new Error(`s3rver did not start: ${line}`);
  const uploadsDir = join(directory, bucket, "._S3rver_uploads");
  return {
    endpoint: `http://127.0.0.1:${port}`,
    bucket,
    credentials: S3RVER_CREDENTIALS,
    directory,
    pid: child.pid!,
    url: (prefix) => `s3://${bucket}/${prefix.replace(/^\/+/, "")}`,
    pendingUploads: async () => {
      try {
        return await fsp.readdir(uploadsDir);
      } catch (error) {
        if ((error as NodeJS.ErrnoException).code === "ENOENT") return [];
        throw error;
      }
    },
    stop: async () => {
      if (child.exitCode === null && child.signalCode === null) {
        process.kill(child.pid!, "SIGTERM");
        await exited;
      }
      rmSync(directory, { recursive: true, force: true });
      rmSync(`${directory}.staging`, { recursive: true, force: true });
    },
  };
}

/** The child: `s3-server.ts <directory> <bucket> <multipartAdmin>` serves until killed or orphaned. */
async function serve(directory: string, bucket: string, withMultipartAdmin: boolean): Promise<void> {
  const server = new S3rver({ port: 0, address: "127.0.0.1", silent: true, directory, configureBuckets: [{ name: bucket }] });
  if (withMultipartAdmin) server.middleware.unshift(multipartAdmin(bucket, join(directory, bucket, "._S3rver_uploads")));
  fixDelimitedListing((server as { store: Parameters<typeof fixDelimitedListing>[0] }).store);
  makePutObjectAtomic((server as { store: Parameters<typeof makePutObjectAtomic>[0] }).store, `${directory}.staging`);
  const { port } = (await server.run()) as { port: number };
  process.stdout.write(`listening ${port}\n`);
  process.stdin.on("end", () => process.exit(0));
  process.stdin.resume();
}

if (process.argv[1] === SELF) await serve(process.argv[2]!, process.argv[3]!, process.argv[4] === "true");

interface KoaContext {
  method: string;
  path: string;
  query: Record<string, string | undefined>;
  req: IncomingMessage;
  res: ServerResponse;
  respond: boolean;
}

/**
 * AbortMultipartUpload (DELETE /bucket/key?uploadId=) and ListMultipartUploads (GET
 * /bucket?uploads&prefix=), on the files s3rver keeps per upload: `<id>/key` and the parts.
 */
function multipartAdmin(bucket: string, uploadsDir: string) {
  return async (ctx: KoaContext, next: () => Promise<void>): Promise<void> => {
    if (ctx.method === "DELETE" && ctx.query.uploadId !== undefined && ctx.path.startsWith(`/${bucket}/`)) {
      const dir = join(uploadsDir, ctx.query.uploadId.replace(/[^0-9a-f]/g, ""));
      const known = await fsp.stat(dir).then(() => true, () => false);
      if (!known) return reply(ctx, 404, xmlError("NoSuchUpload", "The specified upload does not exist."));
      await fsp.rm(dir, { recursive: true, force: true });
      return reply(ctx, 204, "");
    }
    if (ctx.method === "GET" && ctx.path.replace(/\/$/, "") === `/${bucket}` && ctx.query.uploads !== undefined) {
      const prefix = ctx.query.prefix ?? "";
      const ids = await fsp.readdir(uploadsDir).catch(() => [] as string[]);
      const uploads = [];
      for (const id of ids) {
        const keyFile = join(uploadsDir, id, "key");
        const key = await fsp.readFile(keyFile, "utf8").catch(() => undefined);
        if (key === undefined || !key.startsWith(prefix)) continue;
        const { mtime } = await fsp.stat(keyFile);
        uploads.push(`<Upload><Key>${escapeXml(key)}</Key><UploadId>${id}</UploadId><Initiated>${mtime.toISOString()}</Initiated></Upload>`);
      }
      const body = `<?xml version="1.0" encoding="UTF-8"?><ListMultipartUploadsResult><Bucket>${bucket}</Bucket><Prefix>${escapeXml(prefix)}</Prefix><IsTruncated>false</IsTruncated>${uploads.join("")}</ListMultipartUploadsResult>`;
      return reply(ctx, 200, body);
    }
    await next();
  };
}

function reply(ctx: KoaContext, status: number, body: string): void {
  ctx.respond = false; // answered here, not by Koa
  ctx.res.writeHead(status, { "content-type": "application/xml", "content-length": Buffer.byteLength(body) });
  ctx.res.end(body);
}

export function xmlError(code: string, message: string): string {
  return `<?xml version="1.0" encoding="UTF-8"?><Error><Code>${code}</Code><Message>${escapeXml(message)}</Message><RequestId>ckpt-test</RequestId></Error>`;
}

function escapeXml(text: string): string {
  return text.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
}
