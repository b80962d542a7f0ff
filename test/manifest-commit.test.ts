import { manifestCommitCases } from "./helpers/manifest-commit-cases.js";
import { localDiskWithoutRename } from "./helpers/storages-without-rename.js";

// The same cases run against S3 in s3-checkpoints.test.ts.
manifestCommitCases(localDiskWithoutRename());
