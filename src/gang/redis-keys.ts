import { InvalidArgumentError } from "../errors.js";

/**
 * Names of the keys and channels of a job on the rendezvous server. Everything lives under
 * `ckpt:<jobId>:`; each run of the job (a "generation", a random id drawn by rank 0 when it
 * starts) under `ckpt:<jobId>:g:<generation>:`, so a run never reads what an earlier run with the
 * same job id left behind. See docs/design.md, "Redis rendezvous".
 */

/** Job ids are part of key names, so they are kept to characters that need no quoting. */
const JOB_ID_PATTERN = /^[A-Za-z0-9._-]{1,128}$/;

/** How long the records of a run (who joined, the abort record) outlive their last write. */
export const RUN_RECORD_TTL_MS = 24 * 60 * 60 * 1000;

/** How long a round outlives its exchange's timeout when not every member read it. */
export const ROUND_TTL_MARGIN_MS = 60 * 1000;

export class JobKeys {
  private readonly prefix: string;

  constructor(readonly jobId: string) {
    if (!JOB_ID_PATTERN.test(jobId)) {
      throw new InvalidArgumentError(`job id ${JSON.stringify(jobId)} must be 1 to 128 letters, digits, '.', '_' or '-'`);
    }
    this.prefix = `ckpt:${jobId}:`;
  }

  /** The generation id of the job's latest run. */
  get current(): string {
    return `${this.prefix}current`;
  }

  /** Channel on which joining ranks and rank 0 wake each other during the rendezvous. */
  get joinChannel(): string {
    return `${this.prefix}join`;
  }

  generation(id: string): GenerationKeys {
    return new GenerationKeys(`${this.prefix}g:${id}:`, id);
  }
}

export class GenerationKeys {
  constructor(
    private readonly prefix: string,
    readonly id: string,
  ) {}

  /** Hash: rank → member record of every rank that joined this run. */
  get joined(): string {
    return `${this.prefix}joined`;
  }

  /** Set by rank 0 once every rank joined: the JSON of `joined`; the run has started. */
  get sealed(): string {
    return `${this.prefix}sealed`;
  }

  /** The first abort record `{rank, reason}`; also the channel it is published on. */
  get abort(): string {
    return `${this.prefix}abort`;
  }

  /** Expires `deadAfterMs` after the rank's last heartbeat. */
  alive(rank: number): string {
    return `${this.prefix}alive:${rank}`;
  }

  /** Channel prefix of the per-rank inboxes that announce completed rounds. */
  get inboxPrefix(): string {
    return `${this.prefix}inbox:`;
  }

  inbox(rank: number): string {
    return `${this.inboxPrefix}${rank}`;
  }

  /** Hash: member rank → JSON value of round `seq` of `group`. */
  round(group: string, seq: number): string {
    return `${this.prefix}round:${encodeURIComponent(group)}:${seq}`;
  }

  /** Set of the members that have read the round; the last reader deletes both keys. */
  readers(group: string, seq: number): string {
    return `${this.round(group, seq)}:readers`;
  }
}

/**
 * Reads a completed round and counts the caller among its readers; the last reader deletes it.
 * Returns the flat HGETALL reply, or nil when the round is not complete.
 * KEYS: round, readers. ARGV: rank, member count, ttl ms.
 */
const TAKE = `
local values = redis.call('HGETALL', KEYS[1])
if #values < 2 * tonumber(ARGV[2]) then return false end
redis.call('SADD', KEYS[2], ARGV[1])
if redis.call('SCARD', KEYS[2]) >= tonumber(ARGV[2]) then
  redis.call('DEL', KEYS[1], KEYS[2])
else
  redis.call('PEXPIRE', KEYS[2], ARGV[3])
end
return values
`;

export const TAKE_ROUND_SCRIPT = TAKE;

/**
 * Contributes a value; when it completes the round, tells the other members through their inboxes
 * and takes the round (so the last writer needs one command, not two).
 * KEYS: round, readers. ARGV: rank, member count, ttl ms, value, inbox prefix, members...
 */
export const WRITE_ROUND_SCRIPT = `
redis.call('HSET', KEYS[1], ARGV[1], ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
if redis.call('HLEN', KEYS[1]) < tonumber(ARGV[2]) then return false end
for i = 6, #ARGV do
  if ARGV[i] ~= ARGV[1] then redis.call('PUBLISH', ARGV[5] .. ARGV[i], KEYS[1]) end
end
${TAKE}`;

/**
 * Records the first abort of a run and publishes it; returns the record that stands.
 * KEYS: abort. ARGV: record, ttl ms.
 */
export const ABORT_SCRIPT = `
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  redis.call('PUBLISH', KEYS[1], ARGV[1])
  return ARGV[1]
end
local standing = redis.call('GET', KEYS[1])
redis.call('PUBLISH', KEYS[1], standing)
return standing
`;
