// Bench (e): `node --import tsx bench/s3-worker.ts RUNS BYTES`. Starts a real S3 server (s3rver, in
// a child process on loopback), then, RUNS times, interleaved: saves a checkpoint of BYTES through
// the manager on s3:// and loads it back, against one plain PutObject / GetObject of the same bytes
// through the same SDK and server. Prints one JSON line per measurement.
import { GetObjectCommand, PutObjectCommand, S3Client } from "@aws-sdk/client-s3";
import { FileCheckpointManager, Tensor, loadS3Library, type StateDict } from "./library.js";
import { startS3Server } from "../test/helpers/s3-server.js";

const [runsText, bytesText] = process.argv.slice(2) as [string, string];
const runs = Number(runsText);
const bytes = Number(bytesText);
const TENSOR_BYTES = Math.min(16 * 2 ** 20, bytes);

const server = await startS3Server();
try {
  const tensors = Array.from({ length: Math.ceil(bytes / TENSOR_BYTES) }, (_, i) => Tensor.from(new Float32Array(TENSOR_BYTES / 4).map((_, j) => (i * 31 + j) % 1009)));
  const state: StateDict = { model: Object.fromEntries(tensors.map((t, i) => [`layer${i}.weight`, t])), step_nr: 0 };
  const plainBody = Buffer.concat(tensors.map((t) => t.bytes)); // made before timing: the plain PUT sends one buffer
  const { S3FileSystem } = await loadS3Library();
  const fileSystem = new S3FileSystem({ endpoint: server.endpoint, credentials: server.credentials });
  const manager = new FileCheckpointManager({ checkpointDir: server.url("bench"), fileSystem });
  const client = new S3Client({ endpoint: server.endpoint, region: "us-east-1", forcePathStyle: true, credentials: server.credentials });
  const into = { ...state, model: Object.fromEntries(tensors.map((t, i) => [`layer${i}.weight`, Tensor.zeros([t.numel])])) };

  const measure = async (op: string, work: () => Promise<void>, report: boolean): Promise<void> => {
    const rssBefore = process.memoryUsage().rss;
    const start = performance.now();
    await work();
    const seconds = (performance.now() - start) / 1000;
    if (report) console.log(JSON.stringify({ op, seconds, peakBytes: process.memoryUsage().rss - rssBefore }));
  };
  const ops: [string, () => Promise<void>][] = [
    ["s3-save", async () => {
      await manager.beginCheckpoint(1);
      await manager.saveState(state);
      await manager.commitCheckpoint();
    }],
    ["s3-put", async () => void (await client.send(new PutObjectCommand({ Bucket: server.bucket, Key: "plain/state.bin", Body: plainBody })))],
    ["s3-load", async () => {
      const loaded = await manager.loadCheckpoint(1, { into });
      const first = (loaded.model as Record<string, Tensor>)["layer0.weight"]!;
      if (first.data[5] !== 5) throw new Error("the loaded values are not the saved ones");
    }],
    ["s3-get", async () => {
      const response = await client.send(new GetObjectCommand({ Bucket: server.bucket, Key: "plain/state.bin" }));
      const body = await response.Body!.transformToByteArray();
      if (body.byteLength !== plainBody.byteLength) throw new Error(`GetObject gave ${body.byteLength} bytes`);
    }],
  ];
  for (let run = -1; run < runs; run++) {
    // Run -1 warms up connections and the server's disk; saves come before the loads that need them.
    const pairs = run % 2 === 1 ? [ops[1]!, ops[0]!, ops[3]!, ops[2]!] : ops;
    for (const [op, work] of pairs) await measure(op, work, run >= 0);
  }
  await manager.close();
  client.destroy();
} finally {
  await server.stop();
}
