/**
 * Runs hostile-input cases sent by the class over IPC, one at a time, and answers how each ended:
 * loaded, refused with the library's own error (a CkptError), or with anything else (a bug). The
 * peak growth of ArrayBuffer memory and of the resident set during the case is sampled every
 * millisecond. The parent kills this process when a case does not answer in time (a hang).
 */
import { AutoTensorLoader, CkptError, FileCheckpointManager, readTensorFileOutline, verifyCheckpoints } from "../../src/index.js";

export interface FuzzCase {
  id: number;
  /**
   * "tensor file": load a .pt, safetensors or index file; "checkpoint dir": list, verify and load
   * a checkpoint directory with a manager; "load step 1": only load its step 1.
   */
  target: "tensor file" | "checkpoint dir" | "load step 1";
  path: string;
}

export interface FuzzAnswer {
  id: number;
  outcome: "loaded" | "refused" | "uncaught";
  error: string | undefined;
  peakArrayBuffers: number;
  peakRss: number;
}

const gc = (globalThis as { gc?: () => void }).gc;

async function runCase(fuzzCase: FuzzCase): Promise<void> {
  if (fuzzCase.target === "tensor file") {
    const loader = new AutoTensorLoader();
    await loader.load(fuzzCase.path);
    await readTensorFileOutline(fuzzCase.path);
    return;
  }
  if (fuzzCase.target === "load step 1") {
    const manager = new FileCheckpointManager({ checkpointDir: fuzzCase.path, onWarning: () => undefined });
    try {
      await manager.loadCheckpoint(1);
    } finally {
      await manager.close();
    }
    return;
  }
  // A silent warning sink: damaged scores and the like are warned about, not thrown.
  const manager = new FileCheckpointManager({ checkpointDir: fuzzCase.path, onWarning: () => undefined });
  try {
    const infos = await manager.listCheckpoints();
    await manager.getStepNumbers({ includeModelOnly: true });
    await manager.getScores();
    await verifyCheckpoints(fuzzCase.path);
    for (const info of infos) {
      await manager.loadCheckpoint(info.stepNr).catch((error: unknown) => {
        if (!(error instanceof CkptError)) throw error;
      });
      await manager.loadModel(info.stepNr);
    }
  } finally {
    await manager.close();
  }
}

process.on("message", (message: FuzzCase) => {
  void (async () => {
    gc?.();
    const baseArrayBuffers = process.memoryUsage().arrayBuffers;
    const baseRss = process.memoryUsage.rss();
    let peakArrayBuffers = 0;
    let peakRss = 0;
    const sample = (): void => {
      peakArrayBuffers = Math.max(peakArrayBuffers, process.memoryUsage().arrayBuffers - baseArrayBuffers);
      peakRss = Math.max(peakRss, process.memoryUsage.rss() - baseRss);
    };
    const sampler = setInterval(sample, 1);
    let answer: Omit<FuzzAnswer, "peakArrayBuffers" | "peakRss">;
    try {
      await runCase(message);
      answer = { id: message.id, outcome: "loaded", error: undefined };
    } catch (error) {
      const described = error instanceof Error ? `${error.name}: ${error.message}`.slice(0, 500) : String(error);
      answer = { id: message.id, outcome: error instanceof CkptError ? "refused" : "uncaught", error: error instanceof CkptError ? described : `${described}\n${(error as Error)?.stack ?? ""}`.slice(0, 2000) };
    }
    sample();
    clearInterval(sampler);
    process.send!({ ...answer, peakArrayBuffers, peakRss } satisfies FuzzAnswer);
  })();
});
process.send!({ ready: true });
