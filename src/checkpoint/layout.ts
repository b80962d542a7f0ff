/**
 * Names of the files and directories of a checkpoint directory (fairseq2's layout, plus
 * `manifest.json`). Only `step_<N>` names are committed checkpoints; the suffixes mark work in
 * progress or being removed, which listing ignores and recovery cleans up.
 */
export const MODEL_CARD_FILE = "model.yaml";
export const CARBON_COPY_DIR = "cc";
export const LOCK_FILE = ".ckpt.lock";
export const MANIFEST_FILE = "manifest.json";
export const SCORE_FILE = "score.txt";
export const METADATA_FILE = "metadata.pt";

export const TMP_SUFFIX = ".tmp";
/** A committed checkpoint moved aside while its replacement (same step) is renamed in. */
export const REPLACED_SUFFIX = ".replaced";
/** A checkpoint being deleted: renamed first, so it disappears from listings at once. */
export const DELETING_SUFFIX = ".deleting";

/**
 * On object storage (no rename), each save of a step writes its files under `step_N/save-<id>/`
 * and the step's `manifest.json` names the one that is committed (see manifest-commit).
 */
const SAVE_DIR = /^save-[0-9a-z]{1,16}-[0-9a-f]{8}$/;

export function isSaveDirName(name: string): boolean {
  return SAVE_DIR.test(name);
}

// Step numbers as stepDirName writes them (no leading zeros), so each step has one name; up to
// 16 digits, as every safe integer the manager accepts, checked with safeStepNr.
const STEP_DIR = /^step_(0|[1-9]\d{0,15})$/;
const LEFTOVER_DIR = /^step_(0|[1-9]\d{0,15})\.(tmp|replaced|deleting)$/;

function safeStepNr(digits: string | undefined): number | undefined {
  const stepNr = Number(digits);
  return Number.isSafeInteger(stepNr) ? stepNr : undefined;
}

export function stepDirName(stepNr: number): string {
  return `step_${stepNr}`;
}

/** The step number of a committed checkpoint's directory name, or undefined for anything else. */
export function parseStepDirName(name: string): number | undefined {
  const match = STEP_DIR.exec(name);
  return match === null ? undefined : safeStepNr(match[1]);
}

/** A directory left by an unfinished save, replace or delete: `{ stepNr, kind }`, or undefined. */
export function parseLeftoverDirName(name: string): { stepNr: number; kind: "tmp" | "replaced" | "deleting" } | undefined {
  const match = LEFTOVER_DIR.exec(name);
  const stepNr = match === null ? undefined : safeStepNr(match[1]);
  return stepNr === undefined ? undefined : { stepNr, kind: match![2] as "tmp" | "replaced" | "deleting" };
}

/** `.<tp_rank>` when the model is split over tensor-parallel ranks, else nothing. */
export function shardSuffix(tpRank: number, tpSize: number): string {
  return tpSize > 1 ? `.${tpRank}` : "";
}

export function modelFileName(tpRank: number, tpSize: number): string {
  return `model${shardSuffix(tpRank, tpSize)}.pt`;
}

export function replicatedFileName(tpRank: number, tpSize: number): string {
  return `replicated${shardSuffix(tpRank, tpSize)}.pt`;
}

export function rankFileName(dpRank: number, tpRank: number, tpSize: number): string {
  return `rank_${dpRank}${shardSuffix(tpRank, tpSize)}.pt`;
}

const MODEL_FILE = /^model(\.\d+)?\.pt$/;
const RANK_FILE = /^rank_\d+(\.\d+)?\.pt$/;

export function isModelFile(name: string): boolean {
  return MODEL_FILE.test(name);
}

const REPLICATED_FILE = /^replicated(\.\d+)?\.pt$/;

export function isReplicatedFile(name: string): boolean {
  return REPLICATED_FILE.test(name);
}

export function isRankFile(name: string): boolean {
  return RANK_FILE.test(name);
}
