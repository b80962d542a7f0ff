/**
 * `ckpt/s3`: checkpoints on object storage (S3 and compatible). Needs `@aws-sdk/client-s3`,
 * loaded at first use.
 */
export { S3FileSystem } from "./s3-file-system.js";
export type { S3FileSystemOptions } from "./s3-options.js";
export { ObjectStoreError } from "./s3-errors.js";
export { S3SdkMissingError } from "./sdk-loader.js";
