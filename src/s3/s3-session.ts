import type { S3Client } from "@aws-sdk/client-s3";
import type { RetryPolicy } from "./retry.js";
import type { ResolvedS3Settings } from "./s3-options.js";
import type { S3Sdk } from "./sdk-loader.js";

/** What every operation on the store needs: the SDK's commands, a client, and the settings. */
export interface S3Session {
  sdk: S3Sdk;
  client: S3Client;
  settings: ResolvedS3Settings;
  retry: RetryPolicy;
}

/** Runs `tasks` with at most `limit` in flight; the first failure is thrown once all have settled. */
export async function runBounded(count: number, limit: number, task: (index: number) => Promise<void>): Promise<void> {
  let next = 0;
  let failure: { error: unknown } | undefined;
  const worker = async (): Promise<void> => {
    while (failure === undefined && next < count) {
      const index = next++;
      try {
        await task(index);
      } catch (error) {
        failure ??= { error };
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, count) }, worker));
  if (failure !== undefined) throw failure.error;
}
