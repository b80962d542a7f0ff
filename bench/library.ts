// The library the benchmark measures: the built one in dist/ (what users install and run), unless
// CKPT_BENCH_SOURCE=1, which runs src/ through tsx instead (its transform wraps every closure in a
// __name() call, a cost per small tensor that the built library does not have). `npm run bench`
// builds first. Types come from src/ either way: they are the same.
import { existsSync, readdirSync, statSync } from "node:fs";
import { join } from "node:path";
import type * as Library from "../src/index.js";
import type * as S3Library from "../src/s3/index.js";

const fromSource = process.env.CKPT_BENCH_SOURCE === "1";
if (!fromSource) checkBuildIsCurrent(join(import.meta.dirname, ".."));
const library = (await import(fromSource ? "../src/index.js" : "../dist/index.js")) as typeof Library;

export const { FileCheckpointManager, LocalFileSystem, PyFloat, Storage, Tensor, TorchTensorDumper, TorchTensorLoader, closeGangs, initGangs, tuple } = library;
export type FileCheckpointManager = Library.FileCheckpointManager;
export type Storage = Library.Storage;
export type Tensor = Library.Tensor;
export type { FileSystem, FileWriter, StateDict, StateValue } from "../src/index.js";

/** The S3 back end, loaded only by the S3 worker (it needs the AWS SDK). */
export async function loadS3Library(): Promise<typeof S3Library> {
  return (await import(fromSource ? "../src/s3/index.js" : "../dist/s3/index.js")) as typeof S3Library;
}

/** Refuses to measure a dist/ older than a file of src/ (`npm run bench` builds first). */
function checkBuildIsCurrent(root: string): void {
  const built = join(root, "dist", "index.js");
  if (!existsSync(built)) throw new Error("dist/ is missing: run `npm run build` (`npm run bench` does), or set CKPT_BENCH_SOURCE=1");
  const builtAt = statSync(built).mtimeMs;
  const newer = readdirSync(join(root, "src"), { recursive: true, encoding: "utf8" }).find((file) => file.endsWith(".ts") && statSync(join(root, "src", file)).mtimeMs > builtAt);
  if (newer !== undefined) throw new Error(`src/${newer} is newer than dist/: run \`npm run build\` (\`npm run bench\` does), or set CKPT_BENCH_SOURCE=1`);
}
