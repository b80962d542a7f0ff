import { CheckpointNotFoundError, InvalidArgumentError } from "../errors.js";
import type { FileSystem } from "../fs/file-system.js";
import { fileSystemForPath } from "../fs/file-system-for-path.js";
import { joinPath } from "../fs/paths.js";
import { fakeGangs } from "../gang/fake-gang.js";
import type { Gangs } from "../gang/gang.js";
import { InProcessGang } from "../gang/in-process-gang.js";
import { readTensorFileOutline } from "../io/tensor-file-outline.js";
import { ShardedTensor } from "../tensor/sharded-tensor.js";
import type { StateDict, StateValue } from "../values/py-values.js";
import type { PerRankPolicy, ReshardOptions } from "./checkpoint-manager.js";
import { FileCheckpointManager } from "./file-checkpoint-manager.js";
import { isModelFile, isRankFile, isReplicatedFile } from "./layout.js";
import { isPlainDict } from "./manager-context.js";
import { mapTree } from "./snapshot.js";

export interface ReshardCheckpointOptions {
  /** The checkpoint directory to read. */
  checkpointDir: string;
  /** The step to reshard (default: the last). */
  stepNr?: number;
  /** The new layout. */
  dpSize: number;
  tpSize: number;
  /** The checkpoint directory to write step `stepNr` into (not `checkpointDir`). */
  outputDir: string;
  /** As for loadCheckpoint's `reshard`; `perRank: { "*": "rank0" }` keeps rank 0's per-rank values. */
  reshard?: ReshardOptions;
  fileSystem?: FileSystem;
}

/**
 * Writes step N of a checkpoint again for another dp/tp layout, as a regular committed checkpoint
 * in `outputDir` that loads without `reshard` (`ckpt reshard`). Every new rank is played by one
 * in-process gang member: it loads its share with `reshard` and saves it with the same model key
 * and replicated keys as the original; the score and metadata are carried over.
 *
 * @example
 * await reshardCheckpoint({ checkpointDir: "ckpts", stepNr: 1000, dpSize: 2, tpSize: 1, outputDir: "ckpts-dp2" });
 */
export async function reshardCheckpoint(options: ReshardCheckpointOptions): Promise<{ stepNr: number }> {
  const { dpSize, tpSize } = options;
  for (const [name, value] of [["dpSize", dpSize], ["tpSize", tpSize]] as const) {
    if (!Number.isInteger(value) || value < 1) throw new InvalidArgumentError(`${name} must be a positive integer, got ${String(value)}`);
  }
  const fileSystem = options.fileSystem ?? fileSystemForPath(options.checkpointDir);
  const withFs = { fileSystem };
  const source = new FileCheckpointManager({ checkpointDir: options.checkpointDir, ...withFs });
  const stepNr = options.stepNr ?? (await source.getLastStepNumber());
  if (stepNr === undefined) throw new CheckpointNotFoundError(undefined, `there is no checkpoint in ${options.checkpointDir}`);
  const info = (await source.listCheckpoints()).find((c) => c.stepNr === stepNr);
  if (info === undefined) throw new CheckpointNotFoundError(stepNr, `there is no checkpoint ${stepNr} in ${options.checkpointDir}`);
  const { modelKey, replicatedKeys, modelReplicated } = await savedSplit(info.path, info.files, fileSystem);
  const metadata = await source.loadMetadata(stepNr);

  const root = InProcessGang.create(dpSize * tpSize);
  const dpGroups = Array.from({ length: tpSize }, () => InProcessGang.create(dpSize));
  const tpGroups = Array.from({ length: dpSize }, () => InProcessGang.create(tpSize));
  // Every share is loaded before any rank starts saving: a rank whose load fails (a per-rank key
  // without a policy) must not leave the others waiting in the save's collectives.
  const ranks = root.map((rootGang, rank) => ({ rootGang, dpRank: Math.floor(rank / tpSize), tpRank: rank % tpSize }));
  const states = await Promise.all(ranks.map(({ dpRank, tpRank }) => {
    const reader = new FileCheckpointManager({ checkpointDir: options.checkpointDir, gangs: fakeGangs({ dpRank, dpSize, tpRank, tpSize }), ...withFs });
    return reader.loadCheckpoint(stepNr, { reshard: options.reshard ?? true, modelKey });
  }));
  await Promise.all(ranks.map(async ({ rootGang, dpRank, tpRank }, rank) => {
    const gangs: Gangs = { root: rootGang, dp: dpGroups[tpRank]![dpRank]!, tp: tpGroups[dpRank]![tpRank]! };
    const writer = new FileCheckpointManager({ checkpointDir: options.outputDir, gangs, fileSystem: options.fileSystem ?? fileSystemForPath(options.outputDir) });
    try {
      await writer.beginCheckpoint(stepNr);
      await writer.saveState(states[rank]!, { modelKey, replicatedKeys: modelReplicated ? [...replicatedKeys, modelKey] : replicatedKeys });
      if (metadata !== null) await writer.saveMetadata(metadata);
      if (info.score !== undefined) await writer.saveScore(info.score);
      await writer.commitCheckpoint();
    } finally {
      await writer.close();
    }
  }));
  return { stepNr };
}

/**
 * The full model of a checkpoint in one state dict, whatever its layout: tensor-parallel files and
 * FSDP-style shards in the rank files are joined (a reshard to dp=1, tp=1), reading only the model.
 */
export async function loadConsolidatedModel(checkpointDir: string, stepNr: number, options: { fileSystem?: FileSystem } = {}): Promise<StateDict> {
  const fileSystem = options.fileSystem ?? fileSystemForPath(checkpointDir);
  const withFs = { fileSystem };
  const source = new FileCheckpointManager({ checkpointDir, ...withFs });
  const info = (await source.listCheckpoints()).find((c) => c.stepNr === stepNr);
  if (info === undefined) throw new CheckpointNotFoundError(stepNr, `there is no checkpoint ${stepNr} in ${checkpointDir}`);
  const { modelKey } = await savedSplit(info.path, info.files, fileSystem);
  // With model files (tp or not, model-only checkpoints included) only they are read.
  const fromModelFiles = info.files.some(isModelFile) || Object.keys(info.manifest?.files ?? {}).some(isModelFile);
  if (fromModelFiles) return wholeTensors(await source.loadModel(stepNr, { reshard: true }));
  const everyPolicy: Record<string, PerRankPolicy> = { "*": "rank0" }; // only the model is kept
  const state = await source.loadCheckpoint(stepNr, { reshard: { perRank: everyPolicy }, modelKey });
  const model = state[modelKey];
  if (model === undefined || model === null || typeof model !== "object") throw new CheckpointNotFoundError(stepNr, `checkpoint ${stepNr} has no model under "${modelKey}"`);
  return wholeTensors(model as StateDict);
}

/** Cut over one rank, every ShardedTensor holds the whole tensor: the plain tensor it stands for. */
function wholeTensors(model: StateDict): StateDict {
  return mapTree(model, (leaf) => (leaf instanceof ShardedTensor ? leaf.shard : leaf)) as StateDict;
}

/** How the original save split its state: the model key, the replicated keys, whether the model was replicated. */
async function savedSplit(dir: string, files: string[], fileSystem: FileSystem | undefined): Promise<{ modelKey: string; replicatedKeys: string[]; modelReplicated: boolean }> {
  const outline = async (name: string): Promise<StateValue> => (await readTensorFileOutline(joinPath(dir, name), fileSystem === undefined ? {} : { fileSystem })).state;
  const modelFile = files.filter(isModelFile).sort()[0];
  const replicatedFile = files.filter(isReplicatedFile).sort()[0];
  const model = modelFile === undefined ? undefined : await outline(modelFile);
  const replicated = replicatedFile === undefined ? undefined : await outline(replicatedFile);
  // Without a model file (a sharded model in the rank files) the rank files may name the key.
  const rankFile = files.filter(isRankFile).sort()[0];
  const named = model ?? (rankFile === undefined ? undefined : await outline(rankFile));
  const modelKey = isPlainDict(named) && typeof named.model_key === "string" ? named.model_key : "model";
  const replicatedKeys = isPlainDict(replicated) ? Object.keys(replicated).filter((key) => key !== "model_key") : [];
  return { modelKey, replicatedKeys, modelReplicated: modelFile !== undefined };
}
