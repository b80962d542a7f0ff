/**
 * A process that saves a checkpoint with a big file to S3 and is meant to be killed mid-upload:
 * `s3-save-child.ts <endpoint> <s3 checkpointDir> <step>`. Credentials come from the environment.
 */
import { FileCheckpointManager, Tensor } from "../../src/index.js";
import { S3FileSystem } from "../../src/s3/index.js";

const [endpoint, checkpointDir, step] = process.argv.slice(2) as [string, string, string];
const fileSystem = new S3FileSystem({ endpoint, partSize: 5 << 20, concurrency: 1 });
const manager = new FileCheckpointManager({ checkpointDir, fileSystem });
await manager.beginCheckpoint(Number(step));
// rank_0.pt (small) is uploaded whole first (saveState writes it before the model file), then
// model.pt (24 MiB: five parts) stalls mid-upload.
await manager.saveState({ model: { w: Tensor.from(new Float32Array(6 << 20).fill(1)) }, optimizer: { m: Tensor.from(new Float32Array(4).fill(1)) } });
await manager.commitCheckpoint();
process.stdout.write("committed\n");
