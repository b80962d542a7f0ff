/**
 * A process that uses an S3FileSystem and then waits to be killed: `lock <endpoint> <url>` takes
 * the lock, `upload <endpoint> <url> <bytes>` starts a multipart upload it never finishes.
 * Prints "ready" when done. Credentials come from the environment.
 */
import { S3FileSystem } from "../../src/s3/index.js";

const [mode, endpoint, url, bytes] = process.argv.slice(2);
const fileSystem = new S3FileSystem({ endpoint: endpoint!, partSize: 5 * 1024 * 1024, concurrency: 2 });
if (mode === "lock") {
  await fileSystem.lock(url!);
} else if (mode === "upload") {
  const writer = await fileSystem.createWriter(url!);
  await writer.write(new Uint8Array(Number(bytes)).fill(7));
} else {
  throw new Error(`unknown mode ${mode}`);
}
process.stdout.write("ready\n");
setInterval(() => undefined, 1_000); // stays until killed
