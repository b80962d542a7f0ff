import { crc32 } from "../formats/crc32.js";
import { CheckpointError, CheckpointSaveError, InvalidArgumentError } from "../errors.js";
import type { JsonValue } from "../gang/gang.js";
import { joinPath } from "../fs/paths.js";
import { digestFile } from "../io/file-digest.js";
import { ShardedTensor } from "../tensor/sharded-tensor.js";
import type { StateDict, StateValue } from "../values/py-values.js";
import { findUnsaveable, inspectState } from "../values/state-check.js";
import type { TensorDumpOptions } from "../io/tensor-io.js";
import type { BeginOptions, SaveScoreOptions, SaveStateOptions } from "./checkpoint-manager.js";
import { agree } from "./collective.js";
import { METADATA_FILE, SCORE_FILE, modelFileName, rankFileName, replicatedFileName } from "./layout.js";
import { fileProgress, isPlainDict, isRoot, type ManagerContext } from "./manager-context.js";
import { assembleModel, describeShards, findShardedTensors, mergeShardDescriptions } from "./fsdp-consolidation.js";
import { manifestFile, type ManifestFile, type ManifestShardedTensor } from "./manifest.js";
import { PendingSave } from "./pending-save.js";
import { publishCheckpoint } from "./publish-checkpoint.js";
import { ensureFreeSpace, storageBytes } from "./free-space.js";
import { formatScore } from "./score.js";
import { SnapshotArena, snapshotState } from "./snapshot.js";
import { MODEL_KEY_ENTRY, modelFileContent, partTotals, splitState } from "./state-split.js";

/** A checkpoint between beginCheckpoint and commit/abort. */
interface OpenCheckpoint {
  stepNr: number;
  /** Written in the background from snapshots: each step is queued on `chain`. */
  background: boolean;
  chain: Promise<void>;
  /** Where its files go (`step_N.tmp`, or a save directory on object storage); known once begun. */
  tmpDir: string | undefined;
  /** The files this rank wrote, with their digests. */
  files: Record<string, ManifestFile>;
  /** The sharded tensors in this rank's files, for the manifest. */
  sharded: ManifestShardedTensor[];
  stateSaved: boolean;
  /** How the score was saved (root only), for the manifest; undefined without a score. */
  lowerBetter: boolean | undefined;
  /** performance.now() at beginCheckpoint, and the milliseconds the caller spent inside this save's calls (for the manifest's save cost). */
  startedAt: number;
  blockedMs: number;
}

/** What each rank reports at commit. */
interface CommitReport {
  files: Record<string, ManifestFile>;
  sharded: ManifestShardedTensor[];
}

/**
 * The saving transaction of a manager: files go to `step_<N>.tmp/`, every step of a save is agreed
 * on by all ranks (a failure anywhere drops the checkpoint everywhere), and the commit publishes
 * it. A background checkpoint copies what it is given and writes it behind the caller's back.
 */
export class CheckpointWriter {
  private open: OpenCheckpoint | undefined;
  readonly pending = new PendingSave();
  private readonly arena = new SnapshotArena();
  /** Digests of scratch files written for consolidation, until they are shared. */
  private readonly scratchDigests = new Map<string, ManifestFile>();

  constructor(private readonly context: ManagerContext) {}

  async begin(stepNr: number, options: BeginOptions): Promise<void> {
    const calledAt = performance.now(); // waiting for an earlier background save is part of this save's cost
    await this.context.exclusive(async () => {
      if (this.open !== undefined) {
        throw new CheckpointSaveError(stepNr, `beginCheckpoint(${stepNr}) called while checkpoint ${this.open.stepNr} is open: call commitCheckpoint() or abortCheckpoint() first`);
      }
      if (options.whenBusy === "fail" && this.pending.busy) {
        throw new CheckpointSaveError(stepNr, `checkpoint ${this.pending.stepNr} is still being written in the background: await waitForPendingSave() first, or pass whenBusy: "wait"`);
      }
      await this.pending.settle();
      this.arena.reset(); // nothing is being written from it any more
      const checkpoint: OpenCheckpoint = {
        stepNr,
        background: options.background ?? false,
        chain: Promise.resolve(),
        tmpDir: undefined,
        files: {},
        sharded: [],
        stateSaved: false,
        lowerBetter: undefined,
        startedAt: calledAt,
        blockedMs: 0,
      };
      this.open = checkpoint;
      // Rank 0 chooses where the files go and tells the others (on object storage, a new place each save).
      let staging: string | undefined;
      // A failed begin opens nothing, in background mode too (drop keeps a background checkpoint
      // open for the calls that follow a failure, but after begin none were made): the next begin works.
      const forgetOnFailure = (error: unknown): never => {
        if (this.open === checkpoint) this.open = undefined;
        throw error;
      };
      await this.saveStep(checkpoint, "beginCheckpoint", async () => {
        if (!isRoot(this.context)) return;
        await this.context.owner.own();
        staging = await this.context.commit.prepareStaging(this.context.checkpointDir, stepNr);
        checkpoint.tmpDir = staging;
      }, (shared) => {
        const chosen = shared[0] ?? this.context.commit.fixedStaging(this.context.checkpointDir, stepNr);
        if (typeof chosen !== "string") throw new CheckpointSaveError(stepNr, "beginCheckpoint: rank 0 named no directory for the checkpoint's files (a rank played by a FakeGang cannot save on object storage)");
        checkpoint.tmpDir = chosen;
      }, () => staging ?? null).catch(forgetOnFailure);
    });
  }

  async saveState(state: StateDict, options: SaveStateOptions): Promise<void> {
    const checkpoint = this.requireOpen("saveState");
    if (checkpoint.stateSaved) {
      throw new CheckpointSaveError(checkpoint.stepNr, `saveState was already called for checkpoint ${checkpoint.stepNr}: pass the whole state in one call`);
    }
    if (!isPlainDict(state)) throw new InvalidArgumentError("saveState needs a plain object mapping keys to state values");
    const modelKey = options.modelKey ?? "model";
    if (typeof modelKey !== "string" || modelKey === "") throw new InvalidArgumentError("modelKey must be a non-empty string");
    if (modelKey === MODEL_KEY_ENTRY || Object.hasOwn(state, MODEL_KEY_ENTRY)) {
      throw new InvalidArgumentError(`"${MODEL_KEY_ENTRY}" is reserved: the checkpoint files record the model's key under it (fairseq2's layout) and loading removes it; rename that key`);
    }
    const given = options.replicatedKeys ?? [];
    // A string is iterable too: "epoch" would silently mean the keys "e", "p", "o", "c" and "h".
    if (typeof given === "string" || typeof (given as Partial<Iterable<string>>)[Symbol.iterator] !== "function") {
      throw new InvalidArgumentError(`replicatedKeys must be an array of key names, got ${typeof given === "string" ? JSON.stringify(given) : String(given)}`);
    }
    const replicatedKeys = new Set(given);
    for (const key of replicatedKeys) if (typeof key !== "string") throw new InvalidArgumentError("replicatedKeys must be strings");
    // One walk checks the state and sums its storages' bytes. Synchronous: no call may slip in before this one's step.
    const { unsaveable, storageBytes: stateBytes, objectKeys, totalsByKey } = inspectState(state, "state");
    if (unsaveable !== undefined) return this.refuse(checkpoint, "saveState", unsaveable);

    const source = checkpoint.background ? snapshotState(state, this.arena) : state;
    checkpoint.stateSaved = true;
    await this.runStep(checkpoint, "saveState", async () => {
      const { dp, tp } = this.context.gangs;
      const parts = splitState(source, modelKey, replicatedKeys, dp.size, dp.rank);
      // The leader writes every value of the state; other dp ranks leave the replicated keys to it.
      const needed = dp.rank === 0 ? stateBytes : storageBytes([parts.modelFile, parts.replicated, parts.rank]);
      await ensureFreeSpace(this.context.fileSystem, stagingDir(checkpoint), needed);
      // The parts hold the values of `state`, checked above by inspectState: the dumper need not
      // walk them again, nor list the keys of their large objects (the snapshot's are its own).
      // The rank file (often a few numbers) first: after a large file, in a process's first save,
      // its file system calls wait for a core V8's compiler holds (design.md, "The rank file first").
      const rankFile = rankFileName(dp.rank, tp.rank, tp.size);
      const checked = (part: StateDict): TensorDumpOptions => ({ stateChecked: true, checkedKeys: objectKeys, checkedTotals: partTotals(part, totalsByKey) });
      await this.writePart(checkpoint, rankFile, parts.rank, true, checked(parts.rank));
      if (parts.modelFile !== undefined) await this.writePart(checkpoint, modelFileName(tp.rank, tp.size), parts.modelFile, true, checked(parts.modelFile));
      if (parts.replicated !== undefined) await this.writePart(checkpoint, replicatedFileName(tp.rank, tp.size), parts.replicated, true, checked(parts.replicated));
      checkpoint.sharded.push(...describeShards(rankFile, tp.rank, findShardedTensors(parts.rank)));
    });
  }

  async saveMetadata(metadata: StateValue): Promise<void> {
    const checkpoint = this.requireOpen("saveMetadata");
    const unsaveable = findUnsaveable(metadata, "metadata"); // synchronous: no call may slip in before this one's step
    if (unsaveable !== undefined) return this.refuse(checkpoint, "saveMetadata", unsaveable);
    const source = checkpoint.background ? snapshotState({ metadata }, this.arena).metadata! : metadata;
    await this.runStep(checkpoint, "saveMetadata", async () => {
      if (isRoot(this.context)) await this.writePart(checkpoint, METADATA_FILE, source);
    });
  }

  async saveScore(score: number, options: SaveScoreOptions): Promise<void> {
    const checkpoint = this.requireOpen("saveScore");
    if (typeof score !== "number" || !Number.isFinite(score)) throw new InvalidArgumentError(`a score must be a finite number, got ${String(score)}`);
    if (options.lowerBetter !== undefined && typeof options.lowerBetter !== "boolean") {
      throw new InvalidArgumentError(`lowerBetter must be true or false, got ${String(options.lowerBetter)}`);
    }
    await this.runStep(checkpoint, "saveScore", async () => {
      if (!isRoot(this.context)) return;
      const lowerBetter = options.lowerBetter ?? false;
      await this.writeBytes(checkpoint, SCORE_FILE, new TextEncoder().encode(formatScore(score, lowerBetter)));
      checkpoint.lowerBetter = lowerBetter;
    });
  }

  /**
   * Writes one full `model.pt` (per tp rank) from every data-parallel rank's `model`. Sharded
   * tensors are assembled through the storage: each rank writes its shards to a scratch file in the
   * checkpoint, dp rank 0 reads them all, copies them into full tensors, writes the model file and
   * removes the scratch files. A model without ShardedTensors is written as it is by dp rank 0.
   */
  async saveConsolidatedFsdpModel(model: StateDict): Promise<void> {
    const checkpoint = this.requireOpen("saveConsolidatedFsdpModel");
    if (!isPlainDict(model) && !((model as unknown) instanceof Map)) throw new InvalidArgumentError("saveConsolidatedFsdpModel needs the model's state dict");
    const unsaveable = findUnsaveable(model, "model"); // synchronous: no call may slip in before this one's step
    if (unsaveable !== undefined) return this.refuse(checkpoint, "saveConsolidatedFsdpModel", unsaveable);
    const source = checkpoint.background ? snapshotState({ model }, this.arena).model! : model;
    const { dp, tp } = this.context.gangs;
    const name = modelFileName(tp.rank, tp.size);
    const scratch = (dpRank: number): string => `.fsdp-shards.${dpRank}.${tp.rank}.pt`;
    const reportedShards: (ManifestFile | null)[] = [];
    await this.runStep(checkpoint, "saveConsolidatedFsdpModel:shards", async () => {
      if (name in checkpoint.files) throw new Error(`${name} was already written by saveState (the model is replicated)`);
      const shards = findShardedTensors(source).map((entry) => entry.tensor);
      if (shards.length > 0 && dp.rank !== 0) await this.writePart(checkpoint, scratch(dp.rank), shards, false);
    }, (shared) => void reportedShards.push(...(shared as unknown as (ManifestFile | null)[])), () => this.scratchDigest(checkpoint, scratch(dp.rank)));
    await this.runStep(checkpoint, "saveConsolidatedFsdpModel", async () => {
      if (dp.rank !== 0) return;
      const own = findShardedTensors(source).map((entry) => entry.tensor);
      let full: StateValue = source;
      if (own.length > 0) {
        const shardsByRank: ShardedTensor[][] = [own];
        for (let rank = 1; rank < dp.size; rank++) shardsByRank.push(await this.readScratch(checkpoint, scratch(rank), reportedShards[rank * tp.size + tp.rank]));
        full = assembleModel(source, shardsByRank);
        for (let rank = 1; rank < dp.size; rank++) await this.context.fileSystem.remove(joinPath(stagingDir(checkpoint), scratch(rank)));
      }
      // Always under "model", as fairseq2 writes its consolidated model: the rank files name the
      // state's own key, so a loader never takes this copy for the (sharded) model of the state.
      await this.writePart(checkpoint, name, modelFileContent("model", full));
    });
  }

  async commit(): Promise<void> {
    const checkpoint = this.requireOpen("commitCheckpoint");
    // A background commit returns before publishing: only the calls before it blocked the caller.
    const commitCalledAt = checkpoint.background ? 0 : performance.now();
    const commit = async (): Promise<void> => {
      const report: CommitReport = { files: checkpoint.files, sharded: checkpoint.sharded };
      const { shared } = await agree(this.context.gangs.root, "commitCheckpoint:files", checkpoint.stepNr, async () => undefined, () => report as unknown as JsonValue);
      if (!isRoot(this.context)) return;
      const reports = shared as unknown as CommitReport[];
      await publishCheckpoint(this.context, {
        stepNr: checkpoint.stepNr,
        tmpDir: stagingDir(checkpoint),
        reported: reports.map((r) => r.files),
        sharded: mergeShardDescriptions(reports.map((r) => r.sharded)),
        lowerBetter: checkpoint.lowerBetter,
        timing: { startedAt: checkpoint.startedAt, blockedMs: checkpoint.blockedMs, commitCalledAt },
      });
    };
    if (!checkpoint.background) {
      await this.context.exclusive(() => this.saveStep(checkpoint, "commitCheckpoint", commit));
      this.open = undefined;
      return;
    }
    await this.runStep(checkpoint, "commitCheckpoint", commit);
    this.open = undefined;
    this.pending.track(checkpoint.stepNr, checkpoint.chain);
  }

  async abort(): Promise<void> {
    const checkpoint = this.open;
    if (checkpoint === undefined) return;
    await this.context.exclusive(async () => {
      await checkpoint.chain.catch(() => undefined); // its queued steps finish (or fail) first
      try {
        await agree(this.context.gangs.root, "abortCheckpoint", checkpoint.stepNr, async () => undefined);
      } catch (error) {
        throw new CheckpointSaveError(checkpoint.stepNr, `abortCheckpoint failed for checkpoint ${checkpoint.stepNr}, which was dropped: ${(error as Error).message}`, { cause: error });
      } finally {
        await this.drop(checkpoint, true); // closed, background or not: the next begin may start
      }
    });
  }

  /** Drops an open checkpoint (after its queued steps) and waits for a background one to finish. */
  async close(): Promise<void> {
    const checkpoint = this.open;
    if (checkpoint !== undefined) {
      await checkpoint.chain.catch(() => undefined);
      await this.drop(checkpoint, true);
    }
    try {
      await this.pending.settle();
    } finally {
      this.arena.clear();
    }
  }

  /** Runs one of the caller's calls of the open save, counting the time it blocked the caller (for the manifest's save cost). */
  async blocking<T>(call: () => Promise<T>): Promise<T> {
    const since = performance.now();
    try {
      return await call();
    } finally {
      if (this.open !== undefined) this.open.blockedMs += performance.now() - since;
    }
  }

  private requireOpen(method: string): OpenCheckpoint {
    if (this.open === undefined) throw new CheckpointSaveError(undefined, `${method}() needs an open checkpoint: call beginCheckpoint(stepNr) first`);
    return this.open;
  }

  /** Runs one step of a save on every rank; if any rank fails, the checkpoint is dropped everywhere. */
  private async saveStep(checkpoint: OpenCheckpoint, op: string, action: () => Promise<void>, onShared?: (shared: JsonValue[]) => void, share?: () => JsonValue): Promise<void> {
    try {
      const { shared } = await agree(this.context.gangs.root, op, checkpoint.stepNr, action, share);
      onShared?.(shared);
    } catch (error) {
      await this.drop(checkpoint);
      if (error instanceof CheckpointError) throw error;
      throw new CheckpointSaveError(checkpoint.stepNr, `${op} failed for checkpoint ${checkpoint.stepNr}, which was dropped: ${(error as Error).message}`, { cause: error });
    }
  }

  /**
   * Refuses a value that cannot be saved (found before any of it is queued or written): the step
   * fails on every rank like any save error, so the checkpoint is dropped everywhere; in
   * background mode the caller hears it from this call, not later.
   */
  private async refuse(checkpoint: OpenCheckpoint, op: string, error: Error): Promise<never> {
    await this.runStep(checkpoint, op, () => Promise.reject(error)); // foreground: throws here
    throw new CheckpointSaveError(checkpoint.stepNr, `${op} failed for checkpoint ${checkpoint.stepNr}, which was dropped: ${error.message}`, { cause: error });
  }

  /**
   * Runs a save step now, or for a background checkpoint queues it behind the earlier ones and
   * returns (a failure skips the rest of the queue and is reported after commitCheckpoint).
   */
  private async runStep(checkpoint: OpenCheckpoint, op: string, action: () => Promise<void>, onShared?: (shared: JsonValue[]) => void, share?: () => JsonValue): Promise<void> {
    if (!checkpoint.background) {
      await this.context.exclusive(() => this.saveStep(checkpoint, op, action, onShared, share));
      return;
    }
    checkpoint.chain = checkpoint.chain.then(() => this.saveStep(checkpoint, op, action, onShared, share));
    checkpoint.chain.catch(() => undefined); // observed later, by commit's bookkeeping or abort
  }

  /**
   * Forgets a failed or aborted checkpoint and removes its files. A background checkpoint stays
   * open for the caller's remaining calls (which are then skipped) until commit or abort.
   */
  private async drop(checkpoint: OpenCheckpoint, force = false): Promise<void> {
    if (this.open === checkpoint && (force || !checkpoint.background)) this.open = undefined;
    // Only the lock holder's: without the lock, a step_N.tmp there is another manager's save.
    const tmpDir = checkpoint.tmpDir;
    if (tmpDir !== undefined && isRoot(this.context) && this.context.owner.holdsLock) {
      await this.context.commit.discard(this.context.checkpointDir, checkpoint.stepNr, tmpDir).catch(() => undefined);
    }
  }

  /**
   * Writes one file of the checkpoint; `listed` files go into the manifest (scratch files do not).
   * `checked`: what inspectState found of the value (see TensorDumpOptions.stateChecked).
   */
  private async writePart(checkpoint: OpenCheckpoint, name: string, value: StateValue, listed = true, checked: TensorDumpOptions = {}): Promise<void> {
    const path = joinPath(stagingDir(checkpoint), name);
    const onProgress = fileProgress(this.context, "save", checkpoint.stepNr, name);
    const options = onProgress === undefined ? checked : { ...checked, onProgress };
    const digest = (await this.context.dumper.dump(value, path, options)) ?? (await digestFile(this.context.fileSystem, path));
    if (listed) checkpoint.files[name] = manifestFile(digest);
    else this.scratchDigests.set(name, manifestFile(digest));
  }

  /** The digest of a scratch file this rank wrote, shared with dp rank 0, which reads it. */
  private scratchDigest(_checkpoint: OpenCheckpoint, name: string): JsonValue {
    const digest = this.scratchDigests.get(name);
    this.scratchDigests.delete(name);
    return digest === undefined ? null : (digest as unknown as JsonValue);
  }

  /** Reads another rank's scratch file of shards, checked against the digest it reported. */
  private async readScratch(checkpoint: OpenCheckpoint, name: string, digest: ManifestFile | null | undefined): Promise<ShardedTensor[]> {
    if (digest === undefined || digest === null) throw new Error(`no rank reported writing ${name}`);
    const expectedDigest = { size: digest.size, crc32: Number.parseInt(digest.crc32, 16) };
    const shards = await this.context.loader.load(joinPath(stagingDir(checkpoint), name), this.context.loader.verifiesDigest === true ? { expectedDigest } : {});
    if (!Array.isArray(shards) || !shards.every((shard) => shard instanceof ShardedTensor)) throw new Error(`${name} does not hold a list of sharded tensors`);
    return shards as ShardedTensor[];
  }

  private async writeBytes(checkpoint: OpenCheckpoint, name: string, bytes: Uint8Array): Promise<void> {
    await this.context.fileSystem.writeFile(joinPath(stagingDir(checkpoint), name), bytes);
    checkpoint.files[name] = manifestFile({ size: bytes.byteLength, crc32: crc32(bytes) });
  }
}

/** The directory of an open checkpoint's files, which beginCheckpoint settled on every rank. */
function stagingDir(checkpoint: OpenCheckpoint): string {
  if (checkpoint.tmpDir === undefined) throw new Error(`checkpoint ${checkpoint.stepNr} has no directory for its files: beginCheckpoint did not finish`);
  return checkpoint.tmpDir;
}
