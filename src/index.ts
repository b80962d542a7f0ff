// The public API: everything a user imports from "ckpt" is listed here, and nothing else is.
export {
  CkptError,
  FormatError,
  TensorLoadError,
  TensorDumpError,
  InvalidArgumentError,
  CheckpointError,
  CheckpointNotFoundError,
  CheckpointSaveError,
  CheckpointLoadError,
  CheckpointDeleteError,
  GangError,
  isCkptError,
} from "./errors.js";

export { DTYPES, isDType, type DType, type DTypeInfo, type TypedArray } from "./tensor/dtype.js";
export { Storage } from "./tensor/storage.js";
export { Tensor, type TensorOptions, type TensorViewParts } from "./tensor/tensor.js";
export { ShardedTensor } from "./tensor/sharded-tensor.js";

export {
  PyFloat,
  PyDType,
  tuple,
  markTuple,
  isTuple,
  tupleKind,
  orderedDict,
  isOrderedDict,
  getOrderedDictAttributes,
  markFloatSlot,
  isFloatSlot,
  type StateValue,
  type StateDict,
  type StateKey,
  type TupleKind,
} from "./values/py-values.js";

export type { RandomAccessReader, ByteSink } from "./formats/byte-io.js";
export type { FileSystem, FileReader, FileWriter, DirectoryEntry } from "./fs/file-system.js";
export { LocalFileSystem, type LocalFileSystemOptions } from "./fs/local-file-system.js";

export type { TensorLoader, TensorDumper } from "./io/tensor-io.js";
export {
  TorchTensorLoader,
  TorchTensorDumper,
  type TorchTensorLoaderOptions,
  type TorchTensorDumperOptions,
} from "./io/torch-tensor-io.js";

export type { Gang, Gangs, JsonValue } from "./gang/gang.js";
export { FakeGang, fakeGangs, type FakeGangsOptions } from "./gang/fake-gang.js";
export { InProcessGang } from "./gang/in-process-gang.js";
export { MAX_ALL_REDUCE_ELEMENTS } from "./gang/all-reduce.js";
export { GANG_ABORTED, GANG_MEMBER_LEFT, GANG_TIMEOUT, type Transport } from "./gang/transport.js";
export { TransportGang, DEFAULT_COLLECTIVE_TIMEOUT_MS, type TransportGangOptions } from "./gang/transport-gang.js";
export { initGangs, closeGangs, type InitGangsOptions } from "./gang/init-gangs.js";
export { planLaunch, DEFAULT_GRACE_PERIOD_MS, type LaunchFlags, type LaunchPlan } from "./launch/launch-plan.js";
export { launchWorkers, Launch, type LaunchOptions, type LaunchResult, type WorkerFailure } from "./launch/launcher.js";

export type { FileDigest, TensorLoadOptions, TensorDumpOptions } from "./io/tensor-io.js";
export type {
  BeginOptions,
  CheckpointManager,
  SaveStateOptions,
  SaveScoreOptions,
  DeleteOptions,
  RetentionOptions,
  ListOptions,
  LoadModelOptions,
  LoadOptions,
  RetentionResult,
  RetentionReport,
  RetainOptions,
  ModelMetadata,
  ReshardOptions,
  ReshardPlanEntry,
  PerRankPolicy,
} from "./checkpoint/checkpoint-manager.js";
export type { CheckpointInfo } from "./checkpoint/checkpoint-directory.js";
export type { Manifest, ManifestFile } from "./checkpoint/manifest.js";
export { FileCheckpointManager, type FileCheckpointManagerOptions, type CheckpointProgress } from "./checkpoint/file-checkpoint-manager.js";
export { reshardCheckpoint, loadConsolidatedModel, type ReshardCheckpointOptions } from "./checkpoint/offline-reshard.js";
export { unwrapModelFile, type ModelFileParts } from "./checkpoint/state-split.js";
export {
  keepLastN,
  keepBestN,
  keepEveryN,
  keepOnePerInterval,
  combineRetention,
  parseDuration,
  bestStep,
  type RetentionCandidate,
  type RetentionRules,
} from "./checkpoint/retention.js";

// safetensors, reading either format, and the helpers behind the `ckpt` command line.
export {
  SafetensorsLoader,
  SafetensorsDumper,
  type SafetensorsLoaderOptions,
  type SafetensorsDumperOptions,
} from "./io/safetensors-io.js";
export { STATE_LAYOUT_KEY } from "./io/safetensors-state.js";
export { AutoTensorLoader, detectTensorFormat, type AutoTensorLoaderOptions, type LoadedTensorFile, type TensorFileFormat } from "./io/auto-tensor-io.js";
export { loadIndexedState, type IndexedState, type LoadedShard } from "./io/shard-index-io.js";
export { verifyShardIndex, type ShardCheck, type ShardIndexVerification } from "./io/shard-index-check.js";
export { isShardIndexPath, parseShardIndex, MAX_INDEX_BYTES, type ShardIndex } from "./formats/shard-index.js";
export {
  readTensorFileOutline,
  checkTensorFile,
  type TensorFileOutline,
  type TensorFileOutlineOptions,
  type TensorFileCheckOptions,
} from "./io/tensor-file-outline.js";
export {
  readSafetensors,
  readSafetensorsHeader,
  MAX_HEADER_SIZE as SAFETENSORS_MAX_HEADER_SIZE,
  type SafetensorsEntry,
  type SafetensorsHeader,
  type SafetensorsReadOptions,
} from "./formats/safetensors/safetensors-reader.js";
export { writeSafetensors } from "./formats/safetensors/safetensors-writer.js";
export {
  tensorStats,
  tensorToNumbers,
  tensorDifference,
  float16ToNumber,
  bfloat16ToNumber,
  MAX_READS_PER_STORED_ELEMENT,
  type TensorStats,
  type TensorDifference,
} from "./tensor/tensor-stats.js";
export {
  listCheckpointDirectory,
  type CheckpointSummary,
  type CheckpointDirectoryListing,
} from "./checkpoint/checkpoint-listing.js";
export { planRetention, type RetentionPlan, type RetentionPlanOptions, type RetentionDecision } from "./checkpoint/retention-plan.js";
export {
  verifyCheckpoints,
  type VerificationReport,
  type CheckpointVerification,
  type FileProblem,
  type VerifyOptions,
} from "./checkpoint/verify-checkpoints.js";
