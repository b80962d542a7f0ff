import { CheckpointDeleteError, CheckpointError, CheckpointNotFoundError } from "../errors.js";
import type { JsonValue } from "../gang/gang.js";
import { joinPath } from "../fs/paths.js";
import { findCheckpoint, type CheckpointInfo } from "./checkpoint-directory.js";
import type { DeleteOptions, RetentionReport } from "./checkpoint-manager.js";
import { agree } from "./collective.js";
import { isRoot, type ManagerContext } from "./manager-context.js";
import { encodeManifest } from "./manifest.js";
import { BackgroundDeletion } from "./background-deletion.js";
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
 * happens in one place, `prune`); the other ranks learn what it did. Retention may leave the
 * removal of what it pruned to the background (see BackgroundDeletion).
 */
export class CheckpointPruner {
  readonly deletion = new BackgroundDeletion();

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
        await this.deletion.settle(); // inside the step: a failure of earlier deletes reaches every rank
        if (!(await context.owner.own({ create: false }))) {
          found = false;
          return;
        }
        const info = await findCheckpoint(context.fileSystem, context.checkpointDir, stepNr);
        found = info !== undefined;
        if (info !== undefined) await (await this.prune(info, options.preserveModel ?? false))?.();
      },
      () => found,
    );
    if (shared[0] === false && options.missingOk !== true) {
      throw new CheckpointNotFoundError(stepNr, `there is no checkpoint ${stepNr} in ${context.checkpointDir}`);
    }
  }

  /**
   * Applies retention rules (see planRetention); a directory that does not exist stays so. With
   * `background`, the pruned checkpoints are renamed away (or their manifests rewritten) before
   * this returns, and their files are removed in the background.
   */
  async retain(op: string, rule: RetentionPlanOptions, list: () => Promise<CheckpointInfo[]>, background: boolean): Promise<RetentionReport> {
    const { context } = this;
    let result: RetentionReport = { deleted: [], stripped: [], kept: [], decisions: [] };
    await runDirectoryStep(context, op, undefined, async () => {
      if (!isRoot(context)) return;
      // Inside the step: a failure of the previous background deletes reaches every rank here.
      await this.deletion.settle();
      if (!(await context.owner.own({ create: false }))) return;
      const all = await list();
      const plan = planRetention(all, rule);
      const rest: (() => Promise<void>)[] = [];
      for (const info of all) {
        const action = plan.deleted.includes(info.stepNr) ? false : plan.stripped.includes(info.stepNr) ? true : undefined;
        if (action === undefined) continue;
        const remaining = await this.prune(info, action);
        if (remaining !== undefined) rest.push(remaining);
      }
      const removeAll = async (): Promise<void> => {
        for (const remove of rest) await remove();
      };
      if (background && rest.length > 0) this.deletion.start([...plan.deleted, ...plan.stripped].sort((a, b) => a - b), removeAll);
      else await removeAll();
      result = plan;
    });
    const { shared } = await agree(context.gangs.root, `${op}:result`, undefined, async () => undefined, () => result as unknown as JsonValue);
    return shared[0] as unknown as RetentionReport;
  }

  /**
   * Deletes a checkpoint, or with `preserveModel` removes its training state (rank, replicated and
   * metadata files) and keeps the model files, score and carbon copies. Does the part that
   * changes what is listed, and returns the rest (removing files no listing shows any more), for
   * the caller to run now or in the background.
   */
  private async prune(info: CheckpointInfo, preserveModel: boolean): Promise<(() => Promise<void>) | undefined> {
    const { fileSystem, checkpointDir } = this.context;
    const action = pruneAction(info, preserveModel);
    if (action === "delete") {
      return this.context.commit.withdraw(checkpointDir, info);
    }
    if (action === "keep") return undefined;
    const trainingState = trainingStateFiles(info);
    const removeTrainingState = async (): Promise<void> => {
      for (const name of trainingState) await fileSystem.remove(joinPath(info.path, name));
      await fileSystem.syncDirectory(info.path);
    };
    // Without a manifest, listing tells a model-only checkpoint by its files alone: they go now,
    // or a half-stripped one would be listed as resumable.
    if (info.manifest === undefined) {
      await removeTrainingState();
      return undefined;
    }
    // The manifest is rewritten first, so it never lists a file that is gone.
    const files = Object.fromEntries(Object.entries(info.manifest.files).filter(([name]) => !trainingState.includes(name)));
    await fileSystem.writeFile(info.manifestPath, encodeManifest({ ...info.manifest, modelOnly: true, files }));
    return removeTrainingState;
  }
}
