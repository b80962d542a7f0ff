import { CheckpointDeleteError, CheckpointError, CheckpointNotFoundError } from "../errors.js";
import type { JsonValue } from "../gang/gang.js";
import { joinPath } from "../fs/paths.js";
import { findCheckpoint, type CheckpointInfo } from "./checkpoint-directory.js";
import type { DeleteOptions, RetentionResult } from "./checkpoint-manager.js";
import { agree } from "./collective.js";
import { MANIFEST_FILE } from "./layout.js";
import { isRoot, type ManagerContext } from "./manager-context.js";
import { encodeManifest } from "./manifest.js";
import { removeCheckpointDirectory } from "./rename-commit.js";
import { planRetention, pruneAction, trainingStateFiles, type RetentionPlanOptions } from "./retention-plan.js";

/**
 * Runs a change of the directory outside a save (deleting, pruning, the model card) on every
 * rank: rank 0 acts, and a failure anywhere is a CheckpointDeleteError on every rank.
 */
export async function runDirectoryStep(
  context: ManagerContext,
  op: string,
  stepNr: number | undefined,
  action: () => Promise<void>,
  share?: () => JsonValue,
): Promise<JsonValue[]> {
  try {
    return (await agree(context.gangs.root, op, stepNr, action, share)).shared;
  } catch (error) {
    if (error instanceof CheckpointError) throw error;
    throw new CheckpointDeleteError(stepNr, `${op} failed: ${(error as Error).message}`, { cause: error });
  }
}

/**
 * Deletes checkpoints, whole or down to their model files. Rank 0 decides and deletes (deletion
 * happens in one place, `prune`); the other ranks learn what it did.
 */
export class CheckpointPruner {
  constructor(private readonly context: ManagerContext) {}

  async deleteCheckpoint(stepNr: number, options: DeleteOptions): Promise<void> {
    const { context } = this;
    // Rank 0 alone looks for the checkpoint and tells the others: a rank that looked for itself
    // could arrive after rank 0 deleted it, skip the collective and leave rank 0 waiting.
    let found: boolean | null = null;
    const shared = await runDirectoryStep(
      context,
      "deleteCheckpoint",
      stepNr,
      async () => {
        if (!isRoot(context)) return;
        if (!(await context.owner.own({ create: false }))) {
          found = false;
          return;
        }
        const info = await findCheckpoint(context.fileSystem, context.checkpointDir, stepNr);
        found = info !== undefined;
        if (info !== undefined) await this.prune(info, options.preserveModel ?? false);
      },
      () => found,
    );
    if (shared[0] === false && options.missingOk !== true) {
      throw new CheckpointNotFoundError(stepNr, `there is no checkpoint ${stepNr} in ${context.checkpointDir}`);
    }
  }

  /** Applies a retention rule (see planRetention); a directory that does not exist stays so. */
  async retain(op: string, rule: RetentionPlanOptions, list: () => Promise<CheckpointInfo[]>): Promise<RetentionResult> {
    const { context } = this;
    let result: RetentionResult = { deleted: [], stripped: [] };
    await runDirectoryStep(context, op, undefined, async () => {
      if (!isRoot(context) || !(await context.owner.own({ create: false }))) return;
      const all = await list();
      const { deleted, stripped } = planRetention(all, rule);
      for (const info of all) {
        if (deleted.includes(info.stepNr)) await this.prune(info, false);
        else if (stripped.includes(info.stepNr)) await this.prune(info, true);
      }
      result = { deleted, stripped };
    });
    const { shared } = await agree(context.gangs.root, `${op}:result`, undefined, async () => undefined, () => result as unknown as JsonValue);
    return shared[0] as unknown as RetentionResult;
  }

  /**
   * Deletes a checkpoint, or with `preserveModel` removes its training state (rank, replicated and
   * metadata files) and keeps the model files, score and carbon copies. The manifest is rewritten
   * first, so it never lists a file that is gone.
   */
  private async prune(info: CheckpointInfo, preserveModel: boolean): Promise<void> {
    const { fileSystem, checkpointDir } = this.context;
    const action = pruneAction(info, preserveModel);
    if (action === "delete") {
      await removeCheckpointDirectory(fileSystem, checkpointDir, info.path, info.stepNr);
      return;
    }
    if (action === "keep") return;
    const trainingState = trainingStateFiles(info);
    if (info.manifest !== undefined) {
      const files = Object.fromEntries(Object.entries(info.manifest.files).filter(([name]) => !trainingState.includes(name)));
      await fileSystem.writeFile(joinPath(info.path, MANIFEST_FILE), encodeManifest({ ...info.manifest, modelOnly: true, files }));
    }
    for (const name of trainingState) await fileSystem.remove(joinPath(info.path, name));
    await fileSystem.syncDirectory(info.path);
  }
}
