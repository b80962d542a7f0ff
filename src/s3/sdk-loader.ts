import { CkptError } from "../errors.js";

/** The AWS SDK's S3 client module, as `import("@aws-sdk/client-s3")` gives it. */
export type S3Sdk = typeof import("@aws-sdk/client-s3");

export const S3_SDK_PACKAGE = "@aws-sdk/client-s3";

/** The SDK is missing: `ckpt` uses it only for s3:// paths, so it is an optional peer dependency. */
export class S3SdkMissingError extends CkptError {
  constructor(specifier: string, cause: unknown) {
    super("S3_SDK_MISSING", `s3:// paths need the AWS SDK for JavaScript, which is not installed (${specifier} cannot be loaded): run \`npm install ${S3_SDK_PACKAGE}\``, { cause });
  }
}

const loaded = new Map<string, Promise<S3Sdk>>();

/**
 * Loads the SDK at first use, so programs that never touch s3:// need not install it. `specifier`
 * is the module to load (the package itself, except in the test that shows the message).
 */
export function loadS3Sdk(specifier: string = S3_SDK_PACKAGE): Promise<S3Sdk> {
  let sdk = loaded.get(specifier);
  if (sdk === undefined) {
    sdk = (import(specifier) as Promise<S3Sdk>).catch((error: unknown) => {
      loaded.delete(specifier);
      const code = (error as { code?: unknown }).code;
      // Only the package itself missing: a broken install (a missing file inside it) keeps its own error.
      const missing = (code === "ERR_MODULE_NOT_FOUND" || code === "MODULE_NOT_FOUND") && String((error as Error).message).includes(`'${specifier}'`);
      if (missing) throw new S3SdkMissingError(specifier, error);
      throw error;
    });
    loaded.set(specifier, sdk);
  }
  return sdk;
}
