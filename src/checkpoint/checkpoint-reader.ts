import { CheckpointError, CheckpointLoadError, CheckpointNotFoundError } from "../errors.js";
import { joinPath } from "../fs/paths.js";
import { digestFile } from "../io/file-digest.js";
import type { FileDigest, TensorLoadOptions } from "../io/tensor-io.js";
import { setOwn, type StateDict, type StateValue } from "../values/py-values.js";
import { findCheckpoint, type CheckpointInfo } from "./checkpoint-directory.js";
import type { LoadModelOptions, LoadOptions } from "./checkpoint-manager.js";
import { METADATA_FILE, modelFileName, rankFileName, replicatedFileName } from "./layout.js";
import { fileProgress, isPlainDict, type ManagerContext } from "./manager-context.js";
import { manifestFile } from "./manifest.js";
import { ReshardReader } from "./reshard-reader.js";
import { dropModelKeyEntry, mergeInto, namedModelKey, unwrapModelFile } from "./state-split.js";

/**
 * Loads this rank's view of committed checkpoints: its model, replicated and rank files merged
 * back into the state that was saved, every file checked against the manifest as it is read.
 */
export class CheckpointReader {
  constructor(private readonly context: ManagerContext) {}

  /**
   * The state saved at `stepNr`, merged back as fairseq2 0.4 does: the rank file, then the
   * replicated file, then — only when the model key they name is still missing — the model file;
   * the `model_key` entry is removed from the result.
   */
  async loadCheckpoint(stepNr: number, options: LoadOptions): Promise<StateDict> {
    const info = await this.requireCheckpoint(stepNr);
    if (info.modelOnly) {
      throw new CheckpointLoadError(stepNr, `checkpoint ${stepNr} keeps only its model (it was pruned with preserveModel): load it with loadModel(${stepNr})`);
    }
    const { dp, tp } = this.context.gangs;
    const saved = savedLayout(info);
    // A plan is honoured even on the saved layout: the caller asked for those blocks.
    const planned = typeof options.reshard === "object" && Object.keys(options.reshard.plan ?? {}).length > 0;
    if (options.reshard !== undefined && options.reshard !== false && saved !== undefined && (planned || saved.dpSize !== dp.size || saved.tpSize !== tp.size)) {
      if (saved.dpSize === undefined) throw new CheckpointLoadError(stepNr, `checkpoint ${stepNr} has no rank files to tell its data-parallel size: it cannot be resharded`);
      const layouts = { saved: { dpSize: saved.dpSize, tpSize: saved.tpSize }, current: { dpRank: dp.rank, dpSize: dp.size, tpRank: tp.rank, tpSize: tp.size } };
      const reshard = new ReshardReader(this.context, info, layouts, options.reshard === true ? {} : options.reshard, (name) => this.loadFile(info, name));
      return reshard.load();
    }
    this.checkLayout(info, true);
    const rankFile = rankFileName(dp.rank, tp.rank, tp.size);
    const replicatedFile = replicatedFileName(tp.rank, tp.size);
    // fairseq2 writes no rank file when the replicated keys take everything ("*").
    const rankFileOptional = info.manifest === undefined && hasFile(info, replicatedFile);
    if (!hasFile(info, rankFile) && !rankFileOptional) {
      throw new CheckpointLoadError(stepNr, `checkpoint ${stepNr} has no ${rankFile} for this rank (dp rank ${dp.rank}, tp rank ${tp.rank})`);
    }
    const state: StateDict = Object.create(Object.prototype) as StateDict;
    const modelFile = modelFileName(tp.rank, tp.size);
    const loadModelFile = (): Promise<StateDict> => this.loadDict(info, modelFile, modelInto(options.into?.[options.modelKey ?? "model"], options.modelKey));
    // The files are read at once (one's parsing overlaps another's reads). The model file is read
    // alongside only where it is sure to be needed: a checkpoint of ours saved by one data-parallel
    // rank puts a model there and never in the rank file (see splitState).
    const modelAlongside = info.manifest !== undefined && dp.size === 1 && hasFile(info, modelFile) ? loadModelFile() : undefined;
    modelAlongside?.catch(() => undefined); // awaited below
    const parts = await Promise.allSettled([rankFile, replicatedFile].filter((name) => hasFile(info, name)).map((name) => this.loadDict(info, name, options.into)));
    const failed = parts.find((part) => part.status === "rejected");
    if (failed !== undefined) {
      await modelAlongside?.catch(() => undefined);
      throw failed.reason;
    }
    for (const part of parts) mergeInto(state, (part as PromiseFulfilledResult<StateDict>).value);
    const namedKey = namedModelKey(state);
    if ((namedKey === undefined || state[namedKey] === undefined) && hasFile(info, modelFile)) {
      const { modelKey, model, rest } = unwrapModelFile(await (modelAlongside ?? loadModelFile()));
      mergeInto(state, rest);
      if (model !== undefined) setOwn(state, modelKey, model);
    }
    await modelAlongside; // (always used above in our layout; never left running)
    dropModelKeyEntry(state);
    return state;
  }

  /** `metadata.pt` of a checkpoint, or null when it was saved without one. */
  async loadMetadata(stepNr: number): Promise<StateValue | null> {
    const info = await this.requireCheckpoint(stepNr);
    return hasFile(info, METADATA_FILE) ? this.loadFile(info, METADATA_FILE) : null;
  }

  /** The model's state dict from the checkpoint's model file only. */
  async loadModel(stepNr: number, options: LoadModelOptions): Promise<StateDict> {
    const info = await this.requireCheckpoint(stepNr);
    const { dp, tp } = this.context.gangs;
    const saved = savedLayout(info);
    const planned = typeof options.reshard === "object" && Object.keys(options.reshard.plan ?? {}).length > 0;
    const name = modelFileName(tp.rank, tp.size);
    let part: StateDict;
    if (options.reshard !== undefined && options.reshard !== false && saved !== undefined && (planned || saved.tpSize !== tp.size)) {
      const layouts = { saved: { dpSize: saved.dpSize ?? 1, tpSize: saved.tpSize }, current: { dpRank: dp.rank, dpSize: dp.size, tpRank: tp.rank, tpSize: tp.size } };
      const content = await new ReshardReader(this.context, info, layouts, options.reshard === true ? {} : options.reshard, (file) => this.loadFile(info, file)).loadModelFiles();
      if (!isPlainDict(content)) throw new CheckpointLoadError(stepNr, `the model files of checkpoint ${stepNr} do not hold a dict of string keys`);
      part = content;
    } else {
      this.checkLayout(info, false);
      if (!hasFile(info, name)) {
        throw new CheckpointLoadError(stepNr, `checkpoint ${stepNr} has no ${name}: its model is sharded across data-parallel ranks; save a full copy with saveConsolidatedFsdpModel()`);
      }
      part = await this.loadDict(info, name, modelInto(options.into, options.modelKey));
    }
    const { modelKey, model } = unwrapModelFile(part);
    if (model === undefined || model === null || typeof model !== "object") {
      throw new CheckpointLoadError(stepNr, `${name} of checkpoint ${stepNr} has no model state dict under its model key ${JSON.stringify(modelKey)}`);
    }
    return model as StateDict;
  }

  /** Loads one file that must hold a dict of string keys (a model, replicated or rank part). */
  private async loadDict(info: CheckpointInfo, name: string, into: StateValue | undefined): Promise<StateDict> {
    const part = await this.loadFile(info, name, into);
    if (!isPlainDict(part)) throw new CheckpointLoadError(info.stepNr, `${name} of checkpoint ${info.stepNr} does not hold a dict of string keys`);
    return part;
  }

  private async requireCheckpoint(stepNr: number): Promise<CheckpointInfo> {
    const { fileSystem, checkpointDir } = this.context;
    let info: CheckpointInfo | undefined;
    try {
      info = await findCheckpoint(fileSystem, checkpointDir, stepNr);
    } catch (error) {
      if (error instanceof CheckpointError) throw error;
      throw new CheckpointLoadError(stepNr, `cannot read checkpoint ${stepNr} in ${checkpointDir}`, { cause: error });
    }
    if (info === undefined) throw new CheckpointNotFoundError(stepNr, `there is no checkpoint ${stepNr} in ${checkpointDir}`);
    if (info.damaged !== undefined) throw new CheckpointLoadError(stepNr, `checkpoint ${stepNr} is damaged: ${info.damaged}`);
    return info;
  }

  /**
   * Reads one file of a checkpoint, checked against the manifest: by the loader while it reads
   * (one pass) when it can, else by reading the file once more first.
   */
  private async loadFile(info: CheckpointInfo, name: string, into?: StateValue): Promise<StateValue> {
    const { loader, verifyChecksums } = this.context;
    const path = joinPath(info.path, name);
    const options: TensorLoadOptions = into === undefined ? {} : { into };
    const onProgress = fileProgress(this.context, "load", info.stepNr, name);
    if (onProgress !== undefined) options.onProgress = onProgress;
    if (info.manifest !== undefined) {
      const expected = info.manifest.files[name];
      if (expected === undefined) throw new CheckpointLoadError(info.stepNr, `${name} of checkpoint ${info.stepNr} is not in its manifest`);
      if (verifyChecksums) {
        const expectedDigest = { size: expected.size, crc32: Number.parseInt(expected.crc32, 16) };
        if (loader.verifiesDigest === true) options.expectedDigest = expectedDigest;
        else await this.checkDigest(info, name, expectedDigest);
      }
    }
    try {
      return await loader.load(path, options);
    } catch (error) {
      const corrupt = (error as { cause?: { code?: string } }).cause?.code === "DIGEST_MISMATCH";
      const what = corrupt ? `is corrupt (${(error as Error).message})` : `cannot be loaded: ${(error as Error).message}`;
      throw new CheckpointLoadError(info.stepNr, `${name} of checkpoint ${info.stepNr} ${what}`, { cause: error });
    }
  }

  private async checkDigest(info: CheckpointInfo, name: string, expected: FileDigest): Promise<void> {
    let actual: FileDigest;
    try {
      actual = await digestFile(this.context.fileSystem, joinPath(info.path, name));
    } catch (error) {
      throw new CheckpointLoadError(info.stepNr, `cannot read ${name} of checkpoint ${info.stepNr}: ${(error as Error).message}`, { cause: error });
    }
    if (actual.size !== expected.size || actual.crc32 >>> 0 !== expected.crc32 >>> 0) {
      const { crc32: a } = manifestFile(actual);
      const { crc32: e } = manifestFile(expected);
      throw new CheckpointLoadError(
        info.stepNr,
        `${name} of checkpoint ${info.stepNr} is corrupt: the manifest says ${expected.size} bytes with CRC-32 ${e}, the file has ${actual.size} bytes with CRC-32 ${a}`,
      );
    }
  }

  /** Refuses a checkpoint saved with another dp/tp layout (only tp matters for the model alone). */
  private checkLayout(info: CheckpointInfo, withDataParallel: boolean): void {
    const { dp, tp } = this.context.gangs;
    const saved = savedLayout(info);
    if (saved === undefined) return;
    const dpDiffers = withDataParallel && saved.dpSize !== undefined && saved.dpSize !== dp.size;
    if (dpDiffers || saved.tpSize !== tp.size) {
      throw new CheckpointLoadError(
        info.stepNr,
        `checkpoint ${info.stepNr} was saved with dp=${saved.dpSize ?? "?"}, tp=${saved.tpSize} but this job has dp=${dp.size}, tp=${tp.size}: load it with the same layout, or pass { reshard: true }`,
      );
    }
  }
}

/**
 * What to load a model file into: the live model under the key the file is expected to use, and
 * under "model" too, where earlier versions of ckpt put a model of any key.
 */
function modelInto(model: StateValue | undefined, modelKey: string | undefined): StateDict | undefined {
  if (model === undefined) return undefined;
  const into: StateDict = Object.create(Object.prototype) as StateDict;
  setOwn(into, "model", model);
  if (modelKey !== undefined) setOwn(into, modelKey, model);
  return into;
}

/**
 * Whether a checkpoint has a file: a file its manifest lists counts even when it is gone from the
 * directory, so that loading it fails naming it instead of silently leaving its part out.
 */
function hasFile(info: CheckpointInfo, name: string): boolean {
  return info.files.includes(name) || info.manifest?.files[name] !== undefined;
}

/** The dp/tp layout a checkpoint was saved with: from its manifest, or else from its file names. */
function savedLayout(info: CheckpointInfo): { dpSize: number | undefined; tpSize: number } | undefined {
  return info.manifest !== undefined ? { dpSize: info.manifest.dpSize, tpSize: info.manifest.tpSize } : inferLayout(info.files);
}

/** The dp/tp layout of a checkpoint without a manifest (fairseq2), from its file names. */
function inferLayout(files: string[]): { dpSize: number | undefined; tpSize: number } | undefined {
  let maxDp = -1;
  let maxTp = -1;
  let any = false;
  for (const name of files) {
    const rank = /^rank_(\d+)(?:\.(\d+))?\.pt$/.exec(name);
    const shard = /^(?:model|replicated)(?:\.(\d+))?\.pt$/.exec(name);
    if (rank !== null) {
      any = true;
      maxDp = Math.max(maxDp, Number(rank[1]));
      if (rank[2] !== undefined) maxTp = Math.max(maxTp, Number(rank[2]));
    } else if (shard !== null) {
      any = true;
      if (shard[1] !== undefined) maxTp = Math.max(maxTp, Number(shard[1]));
    }
  }
  if (!any) return undefined;
  return { dpSize: maxDp >= 0 ? maxDp + 1 : undefined, tpSize: maxTp >= 0 ? maxTp + 1 : 1 };
}
