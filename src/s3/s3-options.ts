import type { S3Client, S3ClientConfig } from "@aws-sdk/client-s3";
import { InvalidArgumentError } from "../errors.js";
import type { S3Sdk } from "./sdk-loader.js";

export interface S3FileSystemOptions {
  /** The S3 endpoint (e.g. `http://127.0.0.1:9000`); default `AWS_ENDPOINT_URL_S3`, `AWS_ENDPOINT_URL`, or AWS. */
  endpoint?: string;
  /** Default `AWS_REGION`, `AWS_DEFAULT_REGION`, else `us-east-1`. */
  region?: string;
  /** Default: the SDK's credential chain (environment, profiles, instance roles, ...). */
  credentials?: { accessKeyId: string; secretAccessKey: string; sessionToken?: string };
  /** Path-style URLs (`endpoint/bucket/key`); default when `CKPT_S3_FORCE_PATH_STYLE=1` or the endpoint is loopback. */
  forcePathStyle?: boolean;
  /** A client to use instead of one made from the options above (its own retries are then its business). */
  client?: S3Client;
  /** Bytes per uploaded part (default 16 MiB, at least 5 MiB); parts grow for very large files. */
  partSize?: number;
  /** Parts uploaded, or ranges downloaded, at once per file (default 8). */
  concurrency?: number;
  /** Attempts per request, the first included (default 5). */
  maxAttempts?: number;
  /** The first retry's backoff in ms (default 200); each further one doubles, with jitter. */
  retryBaseDelayMs?: number;
  /** A connection silent this long (no byte either way) is given up and the request retried (default 60 s). */
  socketTimeoutMs?: number;
  /** How long a lock lease lasts without renewal (default `CKPT_S3_LEASE_MS` or 60 s). */
  leaseMs?: number;
}

/** S3's smallest part (all but the last); 10,000 parts at most. */
export const MIN_PART_SIZE = 5 * 1024 * 1024;
export const MAX_PARTS = 10_000;
const DEFAULT_PART_SIZE = 16 * 1024 * 1024;
const DEFAULT_CONCURRENCY = 8;
const DEFAULT_MAX_ATTEMPTS = 5;
const DEFAULT_RETRY_BASE_DELAY_MS = 200;
const DEFAULT_LEASE_MS = 60_000;
const DEFAULT_SOCKET_TIMEOUT_MS = 60_000;
const CONNECTION_TIMEOUT_MS = 10_000;

/** The options with every default applied. */
export interface ResolvedS3Settings {
  partSize: number;
  concurrency: number;
  maxAttempts: number;
  retryBaseDelayMs: number;
  leaseMs: number;
}

export function resolveSettings(options: S3FileSystemOptions, env: NodeJS.ProcessEnv = process.env): ResolvedS3Settings {
  const partSize = options.partSize ?? DEFAULT_PART_SIZE;
  if (!Number.isSafeInteger(partSize) || partSize < MIN_PART_SIZE) throw new InvalidArgumentError(`partSize must be an integer of at least ${MIN_PART_SIZE} bytes (S3's smallest part), got ${partSize}`);
  const envLease = env.CKPT_S3_LEASE_MS === undefined ? undefined : Number(env.CKPT_S3_LEASE_MS);
  const settings = {
    partSize,
    concurrency: options.concurrency ?? DEFAULT_CONCURRENCY,
    maxAttempts: options.maxAttempts ?? DEFAULT_MAX_ATTEMPTS,
    retryBaseDelayMs: options.retryBaseDelayMs ?? DEFAULT_RETRY_BASE_DELAY_MS,
    leaseMs: options.leaseMs ?? envLease ?? DEFAULT_LEASE_MS,
  };
  for (const [name, value, min] of [["concurrency", settings.concurrency, 1], ["maxAttempts", settings.maxAttempts, 1], ["retryBaseDelayMs", settings.retryBaseDelayMs, 0], ["leaseMs", settings.leaseMs, 1]] as const) {
    if (!Number.isSafeInteger(value) || value < min) throw new InvalidArgumentError(`${name} must be an integer of at least ${min}, got ${value}${name === "leaseMs" && options.leaseMs === undefined ? " (from CKPT_S3_LEASE_MS)" : ""}`);
  }
  return settings;
}

/** True for 127.x.x.x, localhost and ::1: a local test server, which cannot have bucket subdomains. */
export function isLoopbackEndpoint(endpoint: string): boolean {
  let host: string;
  try {
    host = new URL(endpoint).hostname.replace(/^\[|\]$/g, "").toLowerCase();
  } catch {
    throw new InvalidArgumentError(`S3 endpoint ${endpoint} is not a URL`);
  }
  return host === "localhost" || host.endsWith(".localhost") || host === "::1" || /^127\.\d+\.\d+\.\d+$/.test(host);
}

/** The client configuration from the options and the standard AWS environment. */
export function clientConfig(options: S3FileSystemOptions, env: NodeJS.ProcessEnv = process.env): S3ClientConfig {
  const endpoint = options.endpoint ?? env.AWS_ENDPOINT_URL_S3 ?? env.AWS_ENDPOINT_URL;
  const forcePathStyle = options.forcePathStyle ?? (env.CKPT_S3_FORCE_PATH_STYLE === "1" || (endpoint !== undefined && isLoopbackEndpoint(endpoint)));
  return {
    region: options.region ?? env.AWS_REGION ?? env.AWS_DEFAULT_REGION ?? "us-east-1",
    ...(endpoint === undefined ? {} : { endpoint }),
    ...(options.credentials === undefined ? {} : { credentials: options.credentials }),
    forcePathStyle,
    // A hung server fails the attempt (then retried) instead of hanging the save.
    requestHandler: { connectionTimeout: CONNECTION_TIMEOUT_MS, socketTimeout: options.socketTimeoutMs ?? DEFAULT_SOCKET_TIMEOUT_MS },
    // One retry policy, ours (retry.ts): the SDK's own would multiply the attempts.
    maxAttempts: 1,
    // Checksums only where S3 demands them: S3-compatible servers often reject the newer ones.
    requestChecksumCalculation: "WHEN_REQUIRED",
    responseChecksumValidation: "WHEN_REQUIRED",
  };
}

/**
 * Makes the client. The SDK warns on Node.js 20 at construction that its releases after January
 * 2027 need Node.js 22; ckpt supports Node.js 20 with the releases that do, so unless the user
 * set AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED themselves, it is set for that one call.
 */
export function createClient(sdk: S3Sdk, options: S3FileSystemOptions, env: NodeJS.ProcessEnv = process.env): S3Client {
  const config = clientConfig(options, env);
  const name = "AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED";
  if (process.env[name] !== undefined) return new sdk.S3Client(config);
  process.env[name] = "true";
  try {
    return new sdk.S3Client(config);
  } finally {
    delete process.env[name];
  }
}
