import { CheckpointError, CheckpointLoadError, CheckpointNotFoundError } from "../errors.js";
import { joinPath } from "../fs/paths.js";
import { digestFile } from "../io/file-digest.js";
import type { FileDigest, TensorLoadOptions } from "../io/tensor-io.js";
import type { StateDict, StateValue } from "../values/py-values.js";
import { findCheckpoint, type CheckpointInfo } from "./checkpoint-directory.js";
import type { LoadOptions, ModelLoadOptions } from "./checkpoint-manager.js";
import { METADATA_FILE, isModelFile, modelFileName, rankFileName, replicatedFileName } from "./layout.js";
import { fileProgress, isPlainDict, type ManagerContext } from "./manager-context.js";
import { manifestFile } from "./manifest.js";
import { ReshardReader } from "./reshard-reader.js";
import { mergeInto } from "./state-split.js";

/**
 * Loads this rank's view of committed checkpoints: its model, replicated and rank files merged
 * back into the state that was saved, every file checked against the manifest as it is read.
 */
export class CheckpointReader {
  constructor(private readonly context: ManagerContext) {}

  /** The state saved at `stepNr`, merged back from the model, replicated and rank files. */
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
      return reshard.load(options.modelKey ?? "model");
    }
    this.checkLayout(info, true);
    const rankFile = rankFileName(dp.rank, tp.rank, tp.size);
    if (!info.files.includes(rankFile)) {
      throw new CheckpointLoadError(stepNr, `checkpoint ${stepNr} has no ${rankFile} for this rank (dp rank ${dp.rank}, tp rank ${tp.rank})`);
    }
    const state: StateDict = Object.create(Object.prototype) as StateDict;
    for (const name of [modelFileName(tp.rank, tp.size), replicatedFileName(tp.rank, tp.size), rankFile]) {
      if (!hasFile(info, name)) continue;
      const into = options.into === undefined ? undefined : isModelFile(name) ? { model: options.into[options.modelKey ?? "model"] ?? null } : options.into;
      const part = await this.loadFile(info, name, into);
      if (!isPlainDict(part)) throw new CheckpointLoadError(stepNr, `${name} of checkpoint ${stepNr} does not hold a dict of string keys`);
      if (isModelFile(name)) {
        const modelKey = typeof part.model_key === "string" ? part.model_key : "model";
        const { model, model_key: _, ...rest } = part;
        mergeInto(state, rest);
        if (model !== undefined) state[modelKey] = model;
      } else {
        mergeInto(state, part);
      }
    }
    return state;
  }

  /** `metadata.pt` of a checkpoint, or null when it was saved without one. */
  async loadMetadata(stepNr: number): Promise<StateValue | null> {
    const info = await this.requireCheckpoint(stepNr);
    return hasFile(info, METADATA_FILE) ? this.loadFile(info, METADATA_FILE) : null;
  }

  /** The model's state dict from the checkpoint's model file only. */
  async loadModel(stepNr: number, options: ModelLoadOptions): Promise<StateDict> {
    const info = await this.requireCheckpoint(stepNr);
    const { dp, tp } = this.context.gangs;
    const saved = savedLayout(info);
    const planned = typeof options.reshard === "object" && Object.keys(options.reshard.plan ?? {}).length > 0;
    const name = modelFileName(tp.rank, tp.size);
    let part: StateValue;
    if (options.reshard !== undefined && options.reshard !== false && saved !== undefined && (planned || saved.tpSize !== tp.size)) {
      const layouts = { saved: { dpSize: saved.dpSize ?? 1, tpSize: saved.tpSize }, current: { dpRank: dp.rank, dpSize: dp.size, tpRank: tp.rank, tpSize: tp.size } };
      part = await new ReshardReader(this.context, info, layouts, options.reshard === true ? {} : options.reshard, (file) => this.loadFile(info, file)).loadModelFiles();
    } else {
      this.checkLayout(info, false);
      if (!hasFile(info, name)) {
        throw new CheckpointLoadError(stepNr, `checkpoint ${stepNr} has no ${name}: its model is sharded across data-parallel ranks; save a full copy with saveConsolidatedFsdpModel()`);
      }
      part = await this.loadFile(info, name, options.into === undefined ? undefined : { model: options.into });
    }
    const model = isPlainDict(part) ? part.model : undefined;
    if (model === undefined || model === null || typeof model !== "object") {
      throw new CheckpointLoadError(stepNr, `${name} of checkpoint ${stepNr} has no "model" entry`);
    }
    return model as StateDict;
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
