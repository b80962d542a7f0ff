import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { after, before, test } from "node:test";

import { S3FileSystem, type S3FileSystemOptions } from "../src/s3/index.js";
import { FaultProxy, kindOf } from "./helpers/fault-proxy.js";
import { startS3Server, type S3TestServer } from "./helpers/s3-server.js";

const MiB = 1024 * 1024;

let server: S3TestServer;
let proxy: FaultProxy;
let direct: S3FileSystem;
let prefixes = 0;

before(async () => {
  server = await startS3Server();
  proxy = await FaultProxy.start(server.endpoint);
  direct = new S3FileSystem({ endpoint: server.endpoint, credentials: server.credentials });
});
after(async () => {
  await proxy.stop();
  await server.stop();
});

/** A file system whose requests pass the fault proxy, and a fresh prefix. */
function setup(options: S3FileSystemOptions = {}): { fs: S3FileSystem; dir: string } {
  proxy.clear();
  const fs = new S3FileSystem({ endpoint: proxy.endpoint, credentials: server.credentials, retryBaseDelayMs: 5, partSize: 5 * MiB, concurrency: 2, ...options });
  return { fs, dir: server.url(`f${++prefixes}`) };
}

const sameBytes = (actual: Uint8Array, expected: Uint8Array): boolean => Buffer.from(actual.buffer, actual.byteOffset, actual.byteLength).equals(expected);

test("a connection closed before any answer is retried: the PutObject succeeds", async () => {
  const { fs, dir } = setup();
  const rule = proxy.add({ method: "PUT", occurrences: [1], fault: { kind: "drop" } });
  await fs.writeFile(`${dir}/a.bin`, Buffer.from("payload"));
  assert.equal(rule.fired, 1, "the connection was really dropped");
  assert.equal(proxy.count((r) => kindOf(r) === "PutObject"), 2);
  assert.equal(Buffer.from(await direct.readFile(`${dir}/a.bin`)).toString(), "payload");
});

test("a connection reset mid-upload is retried: only the part that was cut goes again", async () => {
  const { fs, dir } = setup();
  const rule = proxy.add({ method: "PUT", query: "partNumber", occurrences: [2], fault: { kind: "reset-request", afterBytes: MiB } });
  const data = randomBytes(12 * MiB);
  await fs.writeFile(`${dir}/big.bin`, data);
  assert.equal(rule.fired, 1);
  assert.equal(proxy.count((r) => kindOf(r) === "UploadPart"), 4, "3 parts, one of them twice");
  assert.ok(sameBytes(await direct.readFile(`${dir}/big.bin`), data));
  assert.deepEqual(await server.pendingUploads(), []);
});

test("a download cut mid-body is resumed for the missing bytes only", async () => {
  const { fs, dir } = setup();
  const data = randomBytes(6 * MiB);
  await direct.writeFile(`${dir}/big.bin`, data);
  const rule = proxy.add({ method: "GET", occurrences: [1], fault: { kind: "reset-response", afterBytes: 3 * MiB } });
  const reader = await fs.openReader(`${dir}/big.bin`);
  const bytes = await reader.read(100, data.length - 100);
  assert.equal(rule.fired, 1);
  assert.ok(sameBytes(bytes, data.subarray(100)));
  const ranges = proxy.log.filter((r) => kindOf(r) === "GetObject").map((r) => r.range);
  assert.equal(ranges.length, 2);
  assert.equal(ranges[0], `bytes=100-${data.length - 1}`);
  const resumedAt = Number(/^bytes=(\d+)-/.exec(ranges[1]!)?.[1]);
  assert.ok(resumedAt > 100 && resumedAt <= 100 + 3 * MiB, `the retry starts where the cut one stopped, at ${resumedAt}`);
  assert.ok(ranges[1]!.endsWith(`-${data.length - 1}`));
});

test("500 InternalError and 503 SlowDown answers are retried with backoff", async () => {
  const { fs, dir } = setup();
  const internal = proxy.add({ method: "HEAD", occurrences: [1], fault: { kind: "error", status: 500, code: "InternalError" } });
  const slowDown = proxy.add({ method: "PUT", occurrences: [1, 2], fault: { kind: "error", status: 503, code: "SlowDown" } });
  await fs.writeFile(`${dir}/a.bin`, Buffer.from("x"));
  assert.equal(slowDown.fired, 2);
  assert.deepEqual([...(await fs.readFile(`${dir}/a.bin`))], [..."x"].map((c) => c.charCodeAt(0)));
  assert.equal(internal.fired, 1);
});

test("a server that goes silent is given up on after socketTimeoutMs and the request retried", async () => {
  // The timeout covers the retry too: 1 s leaves it room on a busy machine, and the silence is 5× that.
  const { fs, dir } = setup({ socketTimeoutMs: 1_000 });
  await direct.writeFile(`${dir}/a.bin`, Buffer.from("slow"));
  const rule = proxy.add({ method: "GET", occurrences: [1], fault: { kind: "delay", ms: 5_000 } });
  assert.equal(Buffer.from(await fs.readFile(`${dir}/a.bin`)).toString(), "slow");
  assert.equal(rule.fired, 1);
  assert.equal(proxy.count((r) => kindOf(r) === "GetObject"), 2);
});

test("a PutObject failing on every attempt names the object, status and attempts, and leaves nothing", async () => {
  const { fs, dir } = setup({ maxAttempts: 3 });
  proxy.add({ method: "PUT", fault: { kind: "error", status: 503, code: "SlowDown" } });
  await assert.rejects(fs.writeFile(`${dir}/a.bin`, Buffer.from("x")), (error: Error & { cause?: unknown; attempts?: number }) => {
    assert.equal(error.message.startsWith(`PutObject ${dir}/a.bin failed after 3 attempts (HTTP 503, SlowDown)`), true, error.message);
    assert.equal(error.attempts, 3);
    assert.ok(error.cause instanceof Error, "the SDK's error is chained");
    return true;
  });
  assert.equal(proxy.count((r) => kindOf(r) === "PutObject"), 3);
  assert.equal(await direct.exists(`${dir}/a.bin`), false);
});

test("a multipart upload whose part fails on every attempt is aborted and the previous object survives", async () => {
  const { fs, dir } = setup({ maxAttempts: 2 });
  await direct.writeFile(`${dir}/model.pt`, Buffer.from("previous"));
  proxy.add({ method: "PUT", query: "partNumber", occurrences: [3, 4, 5, 6], fault: { kind: "reset-request", afterBytes: 64 * 1024 } });
  const writer = await fs.createWriter(`${dir}/model.pt`);
  const failed = (error: Error) => {
    assert.match(error.message, new RegExp(`^UploadPart \\d of ${dir}/model\\.pt failed after 2 attempts`));
    return true;
  };
  const written = (async () => {
    await writer.write(randomBytes(16 * MiB));
    await writer.close();
  })();
  await assert.rejects(written, failed);
  assert.equal(proxy.count((r) => kindOf(r) === "AbortMultipartUpload"), 1, "the upload was aborted");
  assert.deepEqual(await server.pendingUploads(), [], "no parts left on the server");
  assert.equal(Buffer.from(await direct.readFile(`${dir}/model.pt`)).toString(), "previous");
});

test("a download cut on every attempt fails naming the object; a 403 is not retried", async () => {
  const { fs, dir } = setup({ maxAttempts: 3 });
  await direct.writeFile(`${dir}/a.bin`, randomBytes(MiB));
  const reader = await fs.openReader(`${dir}/a.bin`);
  proxy.add({ method: "GET", fault: { kind: "reset-response", afterBytes: 1000 } });
  await assert.rejects(reader.read(0, MiB), new RegExp(`GetObject ${dir}/a\\.bin failed after 3 attempts`));
  assert.equal(proxy.count((r) => kindOf(r) === "GetObject"), 3);

  proxy.clear();
  proxy.add({ method: "GET", fault: { kind: "error", status: 403, code: "AccessDenied" } });
  await assert.rejects(reader.read(0, 10), (error: Error & { code?: string }) => {
    assert.equal(error.code, "EACCES");
    assert.match(error.message, /failed after 1 attempt \(HTTP 403, AccessDenied\)/);
    return true;
  });
  assert.equal(proxy.count((r) => kindOf(r) === "GetObject"), 1);
});
