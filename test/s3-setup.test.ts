import assert from "node:assert/strict";
import { execFileSync, spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { cpSync, existsSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";

import { S3FileSystem, S3SdkMissingError } from "../src/s3/index.js";
import { clientConfig, isLoopbackEndpoint, MAX_PARTS } from "../src/s3/s3-options.js";
import { partSizeFor } from "../src/s3/s3-writer.js";
import { startS3Server } from "./helpers/s3-server.js";

const ROOT = fileURLToPath(new URL("..", import.meta.url));
const MiB = 1024 * 1024;

test("path-style addressing for loopback endpoints, CKPT_S3_FORCE_PATH_STYLE=1 or the option; virtual hosts otherwise", () => {
  for (const endpoint of ["http://127.0.0.1:9000", "http://127.8.9.10", "http://localhost:9000", "http://[::1]:9000"]) assert.equal(isLoopbackEndpoint(endpoint), true, endpoint);
  for (const endpoint of ["https://s3.eu-west-1.amazonaws.com", "http://10.0.0.1:9000", "http://127.example.com"]) assert.equal(isLoopbackEndpoint(endpoint), false, endpoint);

  assert.equal(clientConfig({}, { AWS_ENDPOINT_URL: "http://127.0.0.1:9000" }).forcePathStyle, true);
  assert.equal(clientConfig({}, { AWS_ENDPOINT_URL: "https://minio.example.com" }).forcePathStyle, false);
  assert.equal(clientConfig({}, { AWS_ENDPOINT_URL: "https://minio.example.com", CKPT_S3_FORCE_PATH_STYLE: "1" }).forcePathStyle, true);
  assert.equal(clientConfig({ forcePathStyle: false }, { AWS_ENDPOINT_URL: "http://127.0.0.1:9000" }).forcePathStyle, false, "the option wins");
  assert.equal(clientConfig({}, {}).forcePathStyle, false);
});

test("endpoint and region come from options, then AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL and AWS_REGION / AWS_DEFAULT_REGION", () => {
  const env = { AWS_ENDPOINT_URL_S3: "http://s3-only:1", AWS_ENDPOINT_URL: "http://all:2", AWS_DEFAULT_REGION: "eu-west-3" };
  assert.equal(clientConfig({}, env).endpoint, "http://s3-only:1");
  assert.equal(clientConfig({}, { AWS_ENDPOINT_URL: "http://all:2" }).endpoint, "http://all:2");
  assert.equal(clientConfig({ endpoint: "http://mine:3" }, env).endpoint, "http://mine:3");
  assert.equal(clientConfig({}, {}).endpoint, undefined, "no endpoint: AWS itself");
  assert.equal(clientConfig({}, env).region, "eu-west-3");
  assert.equal(clientConfig({}, { ...env, AWS_REGION: "ap-south-1" }).region, "ap-south-1");
  assert.equal(clientConfig({}, {}).region, "us-east-1");
  assert.equal(clientConfig({}, {}).maxAttempts, 1, "the SDK's own retries are off: ours count");
  assert.throws(() => new S3FileSystem({ partSize: 1024 }), /partSize must be an integer of at least 5242880/);
});

test("without the AWS SDK, the first s3:// operation says what to install", async () => {
  const fs = new S3FileSystem({}, "ckpt-test-no-such-aws-sdk");
  await assert.rejects(fs.readFile("s3://bucket/key"), (error: Error & { code?: string }) => {
    assert.ok(error instanceof S3SdkMissingError);
    assert.equal(error.code, "S3_SDK_MISSING");
    assert.match(error.message, /npm install @aws-sdk\/client-s3/);
    return true;
  });
});

test("the built package without @aws-sdk/client-s3 installed imports ckpt/s3 and names the missing package on use", () => {
  const built = join(ROOT, "dist", "s3", "index.js");
  assert.ok(existsSync(built), "dist/s3 is missing: run `npm run build` first");
  const dir = mkdtempSync(join(tmpdir(), "ckpt-no-sdk-"));
  try {
    // The package's own files, and no node_modules anywhere above them.
    cpSync(join(ROOT, "dist"), join(dir, "dist"), { recursive: true });
    writeFileSync(join(dir, "package.json"), JSON.stringify({ name: "ckpt", type: "module" }));
    const script = `const { S3FileSystem } = await import("./dist/s3/index.js");
      try { await new S3FileSystem().exists("s3://bucket/key"); console.log("no error"); } catch (error) { console.log(error.code + " " + error.message); }`;
    const output = execFileSync(process.execPath, ["--input-type=module", "-e", script], { cwd: dir, encoding: "utf8" });
    assert.match(output, /^S3_SDK_MISSING s3:\/\/ paths need the AWS SDK .*run `npm install @aws-sdk\/client-s3`/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("using S3 on Node.js 20 prints no SDK deprecation warning", async () => {
  const server = await startS3Server();
  try {
    const script = `import { S3FileSystem } from ${JSON.stringify(join(ROOT, "src/s3/index.ts"))};
      const fs = new S3FileSystem({ endpoint: ${JSON.stringify(server.endpoint)} });
      await fs.writeFile(${JSON.stringify(server.url("w/a"))}, new Uint8Array([1]));
      console.log(String(await fs.exists(${JSON.stringify(server.url("w/a"))})));`;
    const child = spawnSync(process.execPath, ["--import", "tsx", "--input-type=module", "-e", script], { cwd: ROOT, encoding: "utf8" });
    assert.equal(child.stdout.trim(), "true", child.stderr);
    assert.doesNotMatch(child.stderr, /NodeVersionSupportWarning|Warning/, child.stderr);
  } finally {
    await server.stop();
  }
});

test("on a server without ListMultipartUploads and AbortMultipartUpload (plain s3rver) the limits are told, not hidden", async () => {
  const server = await startS3Server({ multipartAdmin: false });
  const warnings: string[] = [];
  const onWarning = (warning: Error & { code?: string }) => {
    if (warning.code === "CKPT_S3") warnings.push(warning.message);
  };
  process.on("warning", onWarning);
  try {
    const fs = new S3FileSystem({ endpoint: server.endpoint, credentials: server.credentials, partSize: 5 * MiB });
    const writer = await fs.createWriter(server.url("plain/model.pt"));
    await writer.write(randomBytes(6 * MiB));
    await writer.abort();
    assert.equal(await fs.exists(server.url("plain/model.pt")), false, "nothing visible");
    await fs.removeAbandonedWrites(server.url("plain"));
    await new Promise((resolve) => setImmediate(resolve)); // warnings are emitted on the next tick
    assert.equal(warnings.length, 2, warnings.join("\n"));
    assert.match(warnings[0]!, /cannot abort multipart uploads \(MethodNotAllowed\).*plain\/model\.pt/);
    assert.match(warnings[1]!, /cannot list multipart uploads \(NotImplemented\).*expire incomplete uploads/);
    assert.equal((await server.pendingUploads()).length, 1, "the parts really stay on such a server");
  } finally {
    process.off("warning", onWarning);
    await server.stop();
  }
});

test("parts grow with their number so that 10,000 parts hold 969 GiB at the default size", () => {
  const base = 16 * MiB;
  assert.equal(partSizeFor(1, base), base);
  assert.equal(partSizeFor(2_000, base), base);
  assert.equal(partSizeFor(2_001, base), 2 * base);
  assert.equal(partSizeFor(MAX_PARTS, base), 16 * base);
  let total = 0;
  for (let part = 1; part <= MAX_PARTS; part++) total += partSizeFor(part, base);
  assert.equal(total, 31 * 2_000 * base, `10,000 parts of 16 MiB and up hold ${total} bytes`);
});

test("removing a whole bucket is refused", async () => {
  await assert.rejects(new S3FileSystem({}, "ckpt-test-no-such-aws-sdk").remove("s3://bucket/"), { code: "EPERM", message: /whole bucket/ });
});
