import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { once } from "node:events";
import { hostname } from "node:os";
import { createInterface } from "node:readline";
import { after, before, test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { fileURLToPath } from "node:url";

import { PutObjectCommand, S3Client } from "@aws-sdk/client-s3";
import { S3FileSystem, type S3FileSystemOptions } from "../src/s3/index.js";
import { FaultProxy, kindOf } from "./helpers/fault-proxy.js";
import { startS3Server, type S3TestServer } from "./helpers/s3-server.js";
import { bundledOnce } from "../torture/lib/bundle-child.js";

const CHILD = fileURLToPath(new URL("./helpers/s3-child.ts", import.meta.url));
const MiB = 1024 * 1024;

let server: S3TestServer;
let proxy: FaultProxy;
let prefixes = 0;

before(async () => {
  server = await startS3Server();
  proxy = await FaultProxy.start(server.endpoint);
});
after(async () => {
  await proxy.stop();
  await server.stop();
});

/** A file system on the server (through the proxy when `viaProxy`), and a fresh prefix for the test. */
function setup(options: S3FileSystemOptions & { viaProxy?: boolean } = {}): { fs: S3FileSystem; dir: string } {
  const { viaProxy, ...rest } = options;
  proxy.clear();
  const fs = new S3FileSystem({ endpoint: viaProxy ? proxy.endpoint : server.endpoint, credentials: server.credentials, retryBaseDelayMs: 5, ...rest });
  return { fs, dir: server.url(`t${++prefixes}`) };
}

test("files written are read back, listed under nested prefixes, dated and removed", async () => {
  const { fs, dir } = setup();
  await fs.writeFile(`${dir}/a.txt`, Buffer.from("alpha"));
  await fs.writeFile(`${dir}/sub/b.bin`, new Uint8Array([1, 2, 3]));
  await fs.writeFile(`${dir}/sub/deeper/c.bin`, new Uint8Array(0));

  assert.equal(Buffer.from(await fs.readFile(`${dir}/a.txt`)).toString(), "alpha");
  assert.deepEqual([...(await fs.readFile(`${dir}/sub/b.bin`))], [1, 2, 3]);
  assert.equal((await fs.readFile(`${dir}/sub/deeper/c.bin`)).length, 0, "an empty object reads as empty");
  const byName = (a: { name: string }, b: { name: string }) => a.name.localeCompare(b.name);
  assert.deepEqual((await fs.listDirectory(dir)).sort(byName), [{ name: "a.txt", isDirectory: false }, { name: "sub", isDirectory: true }]);
  assert.deepEqual((await fs.listDirectory(`${dir}/sub/`)).sort(byName), [{ name: "b.bin", isDirectory: false }, { name: "deeper", isDirectory: true }]);
  assert.deepEqual(await fs.listDirectory(`${dir}/nothing`), [], "a prefix with nothing under it lists empty");

  assert.equal(await fs.exists(`${dir}/a.txt`), true);
  assert.equal(await fs.exists(`${dir}/sub`), true, "a prefix with objects under it exists");
  assert.equal(await fs.exists(`${dir}/su`), false, "a mere string prefix of a directory is not one");
  assert.equal(await fs.exists(`${dir}/a.tx`), false);

  const fileTime = await fs.modifiedTime(`${dir}/sub/b.bin`);
  assert.ok(fileTime !== undefined && Math.abs(fileTime - Date.now()) < 10 * 60_000, `a LastModified near now, got ${fileTime}`);
  const dirTime = await fs.modifiedTime(`${dir}/sub`);
  assert.ok(dirTime !== undefined && dirTime >= fileTime, "a directory is as new as its newest object");
  assert.equal(await fs.modifiedTime(`${dir}/missing`), undefined);

  await fs.remove(`${dir}/sub`);
  assert.equal(await fs.exists(`${dir}/sub/deeper/c.bin`), false, "remove takes everything under the prefix");
  assert.equal(await fs.exists(`${dir}/a.txt`), true, "and nothing beside it");
  await fs.remove(`${dir}/sub`); // nothing there: still succeeds
  await fs.remove(`${dir}/a.txt`);
  assert.deepEqual(await fs.listDirectory(dir), []);
});

test("listings of more than one page are whole, and remove deletes more than one DeleteObjects batch of 1,000 keys", async () => {
  const { fs, dir } = setup({ viaProxy: true });
  const direct = new S3FileSystem({ endpoint: server.endpoint, credentials: server.credentials });
  const keys = Array.from({ length: 1_005 }, (_, i) => `${dir}/many/k${i}`);
  for (let i = 0; i < keys.length; i += 100) await Promise.all(keys.slice(i, i + 100).map((key) => direct.writeFile(key, new Uint8Array([1]))));
  assert.equal((await fs.listDirectory(`${dir}/many`)).length, 1_005, "a listing of more than one page is whole");
  assert.equal(proxy.count((r) => kindOf(r) === "ListObjectsV2" && r.query.has("continuation-token")), 1, "the second page was asked for");
  proxy.clear();
  await fs.remove(`${dir}/many`);
  // s3rver sometimes answers a DeleteObjects with a 500 (it races removing emptied folders): retried.
  assert.equal(proxy.count((r) => kindOf(r) === "DeleteObjects" && r.status === 200), 2, "two batches: 1,000 and 6 keys (the prefix key itself too)");
  assert.deepEqual(await fs.listDirectory(`${dir}/many`), []);
});

test("a missing object fails with ENOENT naming its s3:// URL; paths are normalised; rename is refused", async () => {
  const { fs, dir } = setup();
  await assert.rejects(fs.readFile(`${dir}/missing.pt`), (error: Error & { code?: string }) => {
    assert.equal(error.code, "ENOENT");
    assert.ok(error.message.includes(`${dir}/missing.pt`), error.message);
    return true;
  });
  await assert.rejects(fs.openReader(`${dir}/missing.pt`), { code: "ENOENT" });
  assert.equal(fs.resolvePath("s3://bucket//a/./b/"), "s3://bucket/a/b");
  assert.equal(fs.resolvePath("s3://bucket/"), "s3://bucket");
  assert.equal(fs.supportsRename, false);
  await assert.rejects(fs.renameDirectory(`${dir}/x`, `${dir}/y`), /object storage has no rename/);
  await assert.rejects(fs.readFile("/local/path"), /is not an s3:\/\/bucket\/key URL/);
  await fs.makeDirectory(`${dir}/made`); // no-ops, and nothing appears
  await fs.syncDirectory(dir);
  assert.equal(await fs.exists(`${dir}/made`), false);
});

test("a 23 MiB file goes up as a multipart upload with at most `concurrency` parts in flight", async () => {
  const { fs, dir } = setup({ viaProxy: true, partSize: 5 * MiB, concurrency: 2 });
  // Slow parts, so that a writer ignoring the bound would have more than two in flight.
  proxy.add({ method: "PUT", query: "partNumber", fault: { kind: "delay", ms: 150 } });
  const data = randomBytes(23 * MiB);
  const writer = await fs.createWriter(`${dir}/big.bin`);
  for (let offset = 0; offset < data.length; offset += 3 * MiB) await writer.write(data.subarray(offset, offset + 3 * MiB));
  assert.equal(await fs.exists(`${dir}/big.bin`), false, "nothing is visible before close");
  await writer.close();

  assert.equal(proxy.count((r) => kindOf(r) === "UploadPart"), 5, "23 MiB in 5 MiB parts: 5 parts");
  assert.equal(proxy.count((r) => kindOf(r) === "CompleteMultipartUpload"), 1);
  assert.equal(proxy.count((r) => kindOf(r) === "PutObject"), 0);
  const inFlight = proxy.maxInFlight("UploadPart");
  assert.ok(inFlight <= 2, `at most 2 parts in flight, saw ${inFlight}`);
  assert.ok(inFlight >= 2, `parts go up in parallel, saw ${inFlight}`);
  assert.ok(Buffer.from(await fs.readFile(`${dir}/big.bin`)).equals(data), "the object is the bytes written");
  assert.deepEqual(await server.pendingUploads(), []);
});

test("write waits for uploads when the part buffers are used up (bounded memory)", async () => {
  const { fs, dir } = setup({ viaProxy: true, partSize: 5 * MiB, concurrency: 1 });
  proxy.add({ method: "PUT", query: "partNumber", fault: { kind: "delay", ms: 100 } });
  const writer = await fs.createWriter(`${dir}/big.bin`);
  await writer.write(randomBytes(23 * MiB));
  // Two buffers (one uploading, one filling) hold at most 10 MiB: by the time write returns,
  // at least 13 MiB, so at least 3 whole parts, were uploaded and their buffers reused.
  const uploaded = proxy.count((r) => kindOf(r) === "UploadPart" && r.status === 200);
  assert.ok(uploaded >= 3, `write returned after ${uploaded} parts were uploaded`);
  await writer.close();
  assert.equal(proxy.count((r) => kindOf(r) === "UploadPart"), 5);
});

test("one part's worth or less goes up as a single PutObject, from writeFile or a writer", async () => {
  const { fs, dir } = setup({ viaProxy: true, partSize: 5 * MiB });
  const data = randomBytes(5 * MiB);
  await fs.writeFile(`${dir}/exact.bin`, data);
  const writer = await fs.createWriter(`${dir}/pieces.bin`);
  for (let offset = 0; offset < data.length; offset += MiB) await writer.write(data.subarray(offset, offset + MiB));
  await writer.close();
  assert.equal(proxy.count((r) => kindOf(r) === "PutObject"), 2);
  assert.equal(proxy.count((r) => kindOf(r) === "CreateMultipartUpload"), 0);
  assert.ok(Buffer.from(await fs.readFile(`${dir}/exact.bin`)).equals(data));
  assert.ok(Buffer.from(await fs.readFile(`${dir}/pieces.bin`)).equals(data));
});

test("a file of exactly two parts is uploaded as two full parts", async () => {
  const { fs, dir } = setup({ viaProxy: true, partSize: 5 * MiB });
  const data = randomBytes(10 * MiB);
  await fs.writeFile(`${dir}/two.bin`, data);
  assert.equal(proxy.count((r) => kindOf(r) === "UploadPart"), 2, "no empty third part");
  assert.ok(Buffer.from(await fs.readFile(`${dir}/two.bin`)).equals(data));
});

test("a large read is split into parallel ranged GETs that fill the caller's buffer in place", async () => {
  const { fs, dir } = setup({ viaProxy: true, concurrency: 2 });
  const data = randomBytes(23 * MiB);
  await fs.writeFile(`${dir}/big.bin`, data);
  proxy.add({ method: "GET", fault: { kind: "delay", ms: 100 } });
  const reader = await fs.openReader(`${dir}/big.bin`);
  assert.equal(reader.size, data.length);
  const target = new Uint8Array(data.length - 1000 + 16);
  const result = await reader.read(1000, data.length - 1000, target);
  await reader.close();

  assert.equal(result.buffer, target.buffer, "the caller's memory, not a copy");
  assert.equal(result.byteOffset, target.byteOffset);
  assert.equal(result.length, data.length - 1000);
  assert.ok(Buffer.from(result).equals(data.subarray(1000)), "every byte where it belongs");
  const gets = proxy.log.filter((r) => kindOf(r) === "GetObject");
  assert.deepEqual(gets.map((r) => r.range), ["bytes=1000-8389607", "bytes=8389608-16778215", "bytes=16778216-24117247"]);
  const inFlight = proxy.maxInFlight("GetObject");
  assert.ok(inFlight <= 2 && inFlight >= 2, `two ranges in flight at once, saw ${inFlight}`);
});

test("an object replaced while it is being read fails the read instead of mixing versions", async () => {
  const { fs, dir } = setup();
  await fs.writeFile(`${dir}/changing.bin`, new Uint8Array(1000).fill(1));
  const reader = await fs.openReader(`${dir}/changing.bin`);
  assert.equal((await reader.read(0, 10))[0], 1);
  await fs.writeFile(`${dir}/changing.bin`, new Uint8Array(1000).fill(2));
  await assert.rejects(reader.read(500, 10), (error: Error) => {
    assert.match(error.message, /GetObject s3:\/\/.*changing\.bin .*changed while being read/);
    return true;
  });
});

test("an aborted writer leaves nothing at the key and no upload behind", async () => {
  const { fs, dir } = setup({ partSize: 5 * MiB });
  await fs.writeFile(`${dir}/kept.bin`, Buffer.from("before"));
  const writer = await fs.createWriter(`${dir}/kept.bin`);
  await writer.write(randomBytes(12 * MiB)); // two parts dispatched
  await writer.abort();
  assert.equal(Buffer.from(await fs.readFile(`${dir}/kept.bin`)).toString(), "before", "what was there before is untouched");
  assert.deepEqual(await server.pendingUploads(), [], "the multipart upload was aborted");
  await assert.rejects(writer.write(new Uint8Array(1)), /already closed/);
});

test("removeAbandonedWrites aborts the upload of a SIGKILLed writer, and only under its directory", async () => {
  const { fs, dir } = setup({ partSize: 5 * MiB });
  const child = spawn(process.execPath, [await bundledOnce(CHILD), "upload", server.endpoint, `${dir}/dead/model.pt`, String(12 * MiB)], { stdio: ["ignore", "pipe", "inherit"] });
  const [line] = await once(createInterface({ input: child.stdout! }), "line");
  assert.equal(line, "ready");
  while ((await server.pendingUploads()).length === 0) await sleep(20); // its CreateMultipartUpload landed
  child.kill("SIGKILL");
  await once(child, "exit");
  const other = await fs.createWriter(`${server.url("elsewhere")}/x.bin`);
  await other.write(randomBytes(6 * MiB));
  while ((await server.pendingUploads()).length < 2) await sleep(20);

  await fs.removeAbandonedWrites(`${dir}/dead`);
  assert.equal((await server.pendingUploads()).length, 1, "the dead writer's upload is gone, the other one stays");
  assert.equal(await fs.exists(`${dir}/dead/model.pt`), false);
  await other.abort();
  assert.deepEqual(await server.pendingUploads(), []);
});

test("a held lock refuses others with ELOCKED naming the holder, and is free again after release", async () => {
  const { fs, dir } = setup();
  const second = new S3FileSystem({ endpoint: server.endpoint, credentials: server.credentials });
  const lock = await fs.lock(`${dir}/.lock`);
  await assert.rejects(second.lock(`${dir}/.lock`), (error: Error & { code?: string }) => {
    assert.equal(error.code, "ELOCKED");
    assert.ok(error.message.includes(`process ${process.pid} on ${hostname()} since`), error.message);
    return true;
  });
  await lock.release();
  assert.equal(await fs.exists(`${dir}/.lock`), false, "release deletes the lease");
  const again = await second.lock(`${dir}/.lock`);
  await lock.release(); // a second release does not remove the new holder's lease
  assert.equal(await fs.exists(`${dir}/.lock`), true);
  await again.release();
});

test("the lock of a SIGKILLed holder on this host is taken over at once", async () => {
  const { fs, dir } = setup();
  const child = spawn(process.execPath, [await bundledOnce(CHILD), "lock", server.endpoint, `${dir}/.lock`], { stdio: ["ignore", "pipe", "inherit"] });
  const [line] = await once(createInterface({ input: child.stdout! }), "line");
  assert.equal(line, "ready");
  await assert.rejects(fs.lock(`${dir}/.lock`), { code: "ELOCKED" }, "held while the child lives");
  child.kill("SIGKILL");
  await once(child, "exit");
  const lock = await fs.lock(`${dir}/.lock`);
  const lease = JSON.parse(Buffer.from(await fs.readFile(`${dir}/.lock`)).toString()) as { pid: number };
  assert.equal(lease.pid, process.pid, "the lease is ours now");
  await lock.release();
});

test("a lease from another host is honoured until it expires, then taken over", async () => {
  const { fs, dir } = setup();
  const raw = new S3Client({ endpoint: server.endpoint, region: "us-east-1", credentials: server.credentials, forcePathStyle: true });
  const put = (expiresAt: number) =>
    raw.send(new PutObjectCommand({ Bucket: server.bucket, Key: `${dir.slice(`s3://${server.bucket}/`.length)}/.lock`, Body: JSON.stringify({ token: "t", host: "another-host", pid: 1, since: "then", expiresAt }) }));
  await put(Date.now() + 60_000);
  await assert.rejects(fs.lock(`${dir}/.lock`), /held by process 1 on another-host since then/);
  await put(Date.now() - 1);
  const lock = await fs.lock(`${dir}/.lock`);
  await lock.release();
  raw.destroy();
});

test("a holder's heartbeat renews its lease past the lease time", async () => {
  // A lease of 3 s renewed every 500 ms: five renewals in a row would have to stall (a busy
  // machine, s3rver's disk) before the lease lapsed.
  const { fs, dir } = setup({ leaseMs: 3_000 });
  const lock = await fs.lock(`${dir}/.lock`);
  const expiresAt = async (): Promise<number> => {
    // s3rver does not write objects atomically: a read racing the renewal can see the new bytes
    // with no ETag yet (which the reader rightly refuses) or a file still empty. Read again then.
    for (;;) {
      try {
        return (JSON.parse(Buffer.from(await fs.readFile(`${dir}/.lock`)).toString()) as { expiresAt: number }).expiresAt;
      } catch (error) {
        if (!(error instanceof SyntaxError) && !/changed while being read/.test((error as Error).message)) throw error;
      }
    }
  };
  const first = await expiresAt();
  let renewed = first;
  for (let polls = 0; renewed === first; polls++) {
    assert.ok(polls < 200, "the lease was never renewed (10 s of polling)");
    await sleep(50);
    renewed = await expiresAt();
  }
  // Past the end of the lease as first renewed: only renewals after that one still hold it.
  await sleep(renewed + 300 - Date.now());
  await assert.rejects(fs.lock(`${dir}/.lock`), { code: "ELOCKED" }, "still held: renewed, not expired");
  await lock.release();
});
