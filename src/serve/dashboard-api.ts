import type { IncomingMessage, ServerResponse } from "node:http";
import {
  CheckpointNotFoundError,
  FileCheckpointManager,
  isCkptError,
  listCheckpointDirectory,
  readTensorFileOutline,
  verifyCheckpoints,
  type CheckpointDirectoryListing,
  type CheckpointSummary,
  type FileSystem,
} from "../index.js";
import { compareSides, loadSide } from "../cli/commands/diff.js";
import { joinPath } from "../fs/paths.js";
import { describeFile, tensorStatistics, type NamedFile } from "../cli/commands/inspect.js";
import { TRAINING_STATE } from "../cli/commands/prune.js";
import { tensorFilesOf } from "../cli/inputs.js";
import { CliError } from "../cli/output.js";
import { openEventStream } from "./event-stream.js";
import { RequestRefused, checkInside, checkRelativeName, checkSameOrigin } from "./request-guard.js";
import { DEFAULT_MTBF_SECONDS, costReport, type SaveRecord } from "./save-cost.js";
import { SessionHistory } from "./session-history.js";

/** Changes a diff answers with at most; the count of all of them is sent too. */
export const MAX_DIFF_CHANGES = 2000;
/** A POST body larger than this is refused: the prune request is a few rules. */
const MAX_BODY_BYTES = 16 * 1024;
const MODEL_FILE = /^model(\.\d+)?\.(pt|safetensors)$/;

export interface ApiContext {
  checkpointDir: string;
  fileSystem: FileSystem;
  /** The checkpoint directory's real path (symlinks resolved), for the local "inside" checks; undefined on an object store. */
  rootReal: string | undefined;
  allowPrune: boolean;
  allowedHosts: ReadonlySet<string>;
  /** Subscribes to "the directory changed"; returns the unsubscribe. */
  onChange(listener: (change: DirectoryChange) => void): () => void;
  /** Counts changes seen, so a client can tell it missed none. */
  version(): number;
}

type Query = URLSearchParams;

/** What a `changed` event says: the count of changes, and the directories the server saw. */
export interface DirectoryChange {
  version: number;
  checkpoints: { stepNr: number; name: string; status: string }[];
}

/** The JSON API under /api/ (README, "ckpt serve", lists every route). */
export class DashboardApi {
  private readonly history = new SessionHistory();

  constructor(private readonly context: ApiContext) {}

  async handle(req: IncomingMessage, res: ServerResponse, pathname: string, query: Query): Promise<void> {
    const parts = pathname.split("/").filter((part) => part !== "").slice(1); // after "api"
    const method = req.method ?? "GET";
    if (parts[0] === "prune") {
      if (method !== "POST") throw new RequestRefused(405, "POST /api/prune only");
      return sendJson(res, await this.prune(req));
    }
    if (method !== "GET" && method !== "HEAD") throw new RequestRefused(405, `${method} ${pathname}: this route is read-only (GET)`);
    const [route, step, sub, ...rest] = parts;
    if (route === "checkpoints" && step === undefined) return sendJson(res, await this.checkpoints());
    if (route === "checkpoints" && step !== undefined && sub === undefined) return sendJson(res, await this.checkpoint(parseStep(step)));
    if (route === "checkpoints" && step !== undefined && sub === "tensor" && rest.length === 0) return sendJson(res, await this.tensor(parseStep(step), query));
    if (parts.length !== 1) throw new RequestRefused(404, `no route ${pathname}`);
    switch (route) {
      case "disk":
        return sendJson(res, await this.disk());
      case "costs":
        return sendJson(res, await this.costs(query));
      case "diff":
        return sendJson(res, await this.diff(query));
      case "verify":
        return this.verify(res, query);
      case "events":
        return this.events(res);
    }
    throw new RequestRefused(404, `no route ${pathname}`);
  }

  /** Takes in a listing made outside a request (the watch's), so a checkpoint that comes and goes between two page loads is still seen. */
  observe(checkpoints: readonly CheckpointSummary[]): void {
    this.history.update(checkpoints);
  }

  private listing(): Promise<CheckpointDirectoryListing> {
    return listCheckpointDirectory(this.context.checkpointDir, { fileSystem: this.context.fileSystem });
  }

  /** The checkpoints table, and every checkpoint this session has seen with its fate (for the chart). */
  private async checkpoints(): Promise<unknown> {
    const listing = await this.listing();
    const records = await this.saveRecords(listing.checkpoints);
    const history = this.history.update(listing.checkpoints);
    return {
      checkpointDir: listing.checkpointDir,
      version: this.context.version(),
      allowPrune: this.context.allowPrune,
      lastStepNr: listing.lastStepNr ?? null,
      bestStepNr: listing.bestStepNr ?? null,
      checkpoints: listing.checkpoints.map((c) => ({
        stepNr: c.stepNr,
        name: c.name,
        status: c.status,
        problem: c.problem ?? null,
        warning: c.warning ?? null,
        score: c.score ?? null,
        scoreAsSaved: c.scoreAsSaved ?? null,
        lowerBetter: c.lowerBetter ?? null,
        size: c.size,
        fileCount: c.files.length,
        kind: c.status !== "committed" ? null : c.modelOnly ? "model-only" : "resumable",
        isLast: c.isLast,
        isBest: c.isBest,
        createdAt: records.get(c.stepNr)?.createdAt ?? null,
        save: records.get(c.stepNr)?.save ?? null,
      })),
      history,
    };
  }

  /** One checkpoint's files and the tensor tree of each tensor file (read from the files' headers only). */
  private async checkpoint(stepNr: number): Promise<unknown> {
    const summary = await this.committed(stepNr);
    const files = [];
    for (const name of tensorFilesOf(summary.files)) {
      try {
        files.push(describeFile(await this.outline(summary, name)));
      } catch (error) {
        if (error instanceof RequestRefused) throw error;
        files.push({ name, error: (error as Error).message });
      }
    }
    return {
      stepNr,
      name: summary.name,
      status: summary.status,
      kind: summary.modelOnly ? "model-only" : "resumable",
      size: summary.size,
      files: summary.files.map((name) => ({ name, size: summary.fileSizes[name] ?? 0 })),
      tensorFiles: files,
    };
  }

  /** Statistics of one tensor: only its bytes are read, and only numbers are sent back. */
  private async tensor(stepNr: number, query: Query): Promise<unknown> {
    const summary = await this.committed(stepNr);
    const file = required(query, "file");
    const key = required(query, "key");
    checkRelativeName(file, "file");
    if (!tensorFilesOf(summary.files).includes(file)) throw new RequestRefused(404, `${summary.name} has no tensor file ${JSON.stringify(file)}`);
    const named = await this.outline(summary, file);
    const result = await tensorStatistics(`${summary.name}/${file}`, [named], key);
    return { stepNr, file, key: result.key, ...result.summary, stats: result.stats };
  }

  /** Bytes per checkpoint, split into model files, training state (what pruning to a model frees) and the rest. */
  private async disk(): Promise<unknown> {
    const listing = await this.listing();
    const steps = listing.checkpoints.map((c) => {
      const byKind = { model: 0, trainingState: 0, other: 0 };
      for (const [name, size] of Object.entries(c.fileSizes)) {
        if (MODEL_FILE.test(name)) byKind.model += size;
        else if (TRAINING_STATE.test(name)) byKind.trainingState += size;
        else byKind.other += size;
      }
      return { stepNr: c.stepNr, name: c.name, status: c.status, size: c.size, byKind };
    });
    const total = steps.reduce((sum, s) => sum + s.size, 0);
    const committed = steps.filter((s) => s.status === "committed").reduce((sum, s) => sum + s.size, 0);
    return { total, committed, leftovers: total - committed, steps };
  }

  private async costs(query: Query): Promise<unknown> {
    const mtbf = query.get("mtbf");
    const mtbfSeconds = mtbf === null ? DEFAULT_MTBF_SECONDS : Number(mtbf);
    if (!Number.isFinite(mtbfSeconds) || mtbfSeconds <= 0) throw new RequestRefused(400, `mtbf must be a positive number of seconds, got ${JSON.stringify(mtbf)}`);
    const listing = await this.listing();
    const committed = listing.checkpoints.filter((c) => c.status === "committed");
    const records = await this.saveRecords(committed);
    return costReport(committed.map((c) => ({ stepNr: c.stepNr, ...(records.get(c.stepNr) ?? { createdAt: undefined, save: undefined }) })), mtbfSeconds);
  }

  /** The difference of two steps tensor by tensor, as `ckpt diff` computes it. */
  private async diff(query: Query): Promise<unknown> {
    const [a, b] = [await this.committed(parseStep(required(query, "a"))), await this.committed(parseStep(required(query, "b")))];
    const atolText = query.get("atol");
    const atol = atolText === null ? 0 : Number(atolText);
    if (!Number.isFinite(atol) || atol < 0) throw new RequestRefused(400, `atol must be a non-negative number, got ${JSON.stringify(atolText)}`);
    await this.checkFilesInside(a);
    await this.checkFilesInside(b);
    // By the step's directory: on object storage its files lie in a save directory that loadSide finds.
    const stepDir = (c: CheckpointSummary): string => joinPath(this.context.checkpointDir, c.name);
    const { changes, same } = await compareSides(await loadSide(stepDir(a)), await loadSide(stepDir(b)), a.name, b.name, atol);
    return { a: a.stepNr, b: b.stepNr, atol, identical: changes.length === 0, same, totalChanges: changes.length, changes: changes.slice(0, MAX_DIFF_CHANGES) };
  }

  /** Verifies one step (`?step=N`) or all, as server-sent events: `progress` {done, total} in bytes, then `result` or `failure`. */
  private async verify(res: ServerResponse, query: Query): Promise<void> {
    const stepText = query.get("step");
    const stepNr = stepText === null ? undefined : parseStep(stepText);
    if (stepNr !== undefined) await this.committed(stepNr); // 404 before the stream starts
    const listing = await this.listing();
    for (const c of listing.checkpoints) if ((stepNr === undefined || c.stepNr === stepNr) && c.status === "committed") await this.checkFilesInside(c);
    const stream = openEventStream(res);
    let lastSent = 0;
    try {
      const report = await verifyCheckpoints(this.context.checkpointDir, {
        fileSystem: this.context.fileSystem,
        ...(stepNr === undefined ? {} : { stepNr }),
        onProgress: (done, total) => {
          // At most about a hundred events, whatever the size.
          if (done === total || done - lastSent >= total / 100) {
            lastSent = done;
            stream.send("progress", { done, total });
          }
        },
      });
      stream.send("result", report);
    } catch (error) {
      stream.send("failure", { message: (error as Error).message });
    }
    stream.end();
  }

  /** Server-sent events: `changed` {version, checkpoints: [{stepNr, name, status}]} whenever the directory changed. */
  private events(res: ServerResponse): void {
    const stream = openEventStream(res);
    stream.send("hello", { version: this.context.version() });
    const unsubscribe = this.context.onChange((change) => stream.send("changed", change));
    res.on("close", unsubscribe);
  }

  /** Retention or deletion, only when the server was started with --allow-prune. */
  private async prune(req: IncomingMessage): Promise<unknown> {
    if (!this.context.allowPrune) throw new RequestRefused(403, "ckpt serve is read-only: start it with --allow-prune to prune or delete checkpoints");
    checkSameOrigin(header(req, "origin"), header(req, "content-type"), this.context.allowedHosts);
    const body = await readJsonBody(req);
    const manager = new FileCheckpointManager({ checkpointDir: this.context.checkpointDir, fileSystem: this.context.fileSystem });
    try {
      if (body.delete !== undefined) {
        const stepNr = typeof body.delete === "number" ? body.delete : Number.NaN;
        if (!Number.isSafeInteger(stepNr) || stepNr < 0) throw new RequestRefused(400, "delete must be a step number");
        await manager.deleteCheckpoint(stepNr, { preserveModel: body.preserveModel === true });
        return { deleted: body.preserveModel === true ? [] : [stepNr], stripped: body.preserveModel === true ? [stepNr] : [] };
      }
      const rules: { keepLast?: number; keepBest?: number } = {};
      for (const key of ["keepLast", "keepBest"] as const) {
        const value = body[key];
        if (value === undefined) continue;
        if (typeof value !== "number" || !Number.isSafeInteger(value) || value < 1) throw new RequestRefused(400, `${key} must be a positive integer`);
        rules[key] = value;
      }
      if (Object.keys(rules).length === 0) throw new RequestRefused(400, "give keepLast, keepBest or delete");
      const { deleted, stripped } = await manager.retain({ ...rules, preserveModel: body.preserveModel === true });
      return { deleted, stripped };
    } finally {
      await manager.close();
    }
  }

  /** A committed (or damaged) checkpoint by step; 404 when there is none. */
  private async committed(stepNr: number): Promise<CheckpointSummary> {
    const listing = await this.listing();
    const summary = listing.checkpoints.find((c) => c.stepNr === stepNr && (c.status === "committed" || c.status === "damaged"));
    if (summary === undefined) throw new RequestRefused(404, `there is no checkpoint ${stepNr} in ${this.context.checkpointDir}`);
    return summary;
  }

  private async outline(summary: CheckpointSummary, name: string): Promise<NamedFile> {
    const path = joinPath(summary.path, name);
    if (this.context.rootReal !== undefined) await checkInside(this.context.rootReal, path);
    return { name, outline: await readTensorFileOutline(path, { fileSystem: this.context.fileSystem }) };
  }

  /** Refuses a checkpoint with a file that leads outside the directory before anything reads it. */
  private async checkFilesInside(summary: CheckpointSummary): Promise<void> {
    if (this.context.rootReal === undefined) return;
    await checkInside(this.context.rootReal, summary.path);
    for (const name of summary.files) await checkInside(this.context.rootReal, joinPath(summary.path, name));
  }

  /** When each checkpoint was saved and what the save cost, from its manifest (fairseq2's have none: dated by their directory). */
  private async saveRecords(checkpoints: readonly CheckpointSummary[]): Promise<Map<number, Omit<SaveRecord, "stepNr">>> {
    const records = new Map<number, Omit<SaveRecord, "stepNr">>();
    const { fileSystem } = this.context;
    for (const c of checkpoints) {
      if (c.status !== "committed") continue;
      let createdAt: number | undefined;
      let save: SaveRecord["save"];
      if (c.hasManifest) {
        try {
          const manifest = JSON.parse(new TextDecoder().decode(await fileSystem.readFile(c.manifestPath))) as { createdAt?: unknown; save?: SaveRecord["save"] };
          const time = typeof manifest.createdAt === "string" ? Date.parse(manifest.createdAt) : Number.NaN;
          if (Number.isFinite(time)) createdAt = time;
          save = manifest.save;
        } catch {
          // listed as it is: the table's status says what is wrong with it
        }
      } else {
        createdAt = await fileSystem.modifiedTime?.(c.path);
      }
      records.set(c.stepNr, { createdAt, save });
    }
    return records;
  }
}

function parseStep(text: string): number {
  const n = Number(text);
  if (!/^\d{1,16}$/.test(text) || !Number.isSafeInteger(n)) throw new RequestRefused(400, `${JSON.stringify(text)} is not a step number`);
  return n;
}

function required(query: Query, name: string): string {
  const value = query.get(name);
  if (value === null || value === "") throw new RequestRefused(400, `the query parameter ${name} is missing`);
  return value;
}

function header(req: IncomingMessage, name: string): string | undefined {
  const value = req.headers[name];
  return Array.isArray(value) ? value[0] : value;
}

async function readJsonBody(req: IncomingMessage): Promise<Record<string, unknown>> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req as AsyncIterable<Buffer>) {
    size += chunk.length;
    if (size > MAX_BODY_BYTES) throw new RequestRefused(413, `the request body is larger than ${MAX_BODY_BYTES} bytes`);
    chunks.push(chunk);
  }
  let value: unknown;
  try {
    value = JSON.parse(Buffer.concat(chunks).toString("utf8"));
  } catch {
    throw new RequestRefused(400, "the request body is not JSON");
  }
  if (typeof value !== "object" || value === null || Array.isArray(value)) throw new RequestRefused(400, "the request body must be a JSON object");
  return value as Record<string, unknown>;
}

export function sendJson(res: ServerResponse, value: unknown, status = 200): void {
  const body = JSON.stringify(value, (_key, v: unknown) => (typeof v === "bigint" ? Number(v) : v instanceof Map ? Object.fromEntries(v) : v));
  res.writeHead(status, { "content-type": "application/json; charset=utf-8", "cache-control": "no-store" });
  res.end(body);
}

/** The status and message an error is answered with: refusals as they are, bad input 400, a missing checkpoint 404, anything else 500. */
export function errorStatus(error: unknown): number {
  if (error instanceof RequestRefused) return error.status;
  if (error instanceof CheckpointNotFoundError) return 404;
  if (error instanceof CliError || isCkptError(error)) return 400;
  return 500;
}
