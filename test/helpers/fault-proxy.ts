import { createServer, request, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { AddressInfo, Socket } from "node:net";
import { setTimeout as sleep } from "node:timers/promises";
import { xmlError } from "./s3-server.js";

/** What a request looks like to a rule. */
export interface ProxiedRequest {
  method: string;
  /** The path without the query, e.g. `/bucket/key`. */
  path: string;
  query: URLSearchParams;
  /** The Range header of a GET, e.g. `bytes=0-8388607`. */
  range: string | undefined;
  /** The status answered (by the server or a fault), once the answer started. */
  status?: number;
}

/** What the proxy does to a request a rule matches. */
export type Fault =
  /** Close the connection at once, answering nothing (the client sees a hang-up). */
  | { kind: "drop" }
  /** Forward, then reset the connection once `afterBytes` of the request body went upstream (mid-upload). */
  | { kind: "reset-request"; afterBytes: number }
  /** Forward, send the response headers and `afterBytes` of its body, then reset (mid-download). */
  | { kind: "reset-response"; afterBytes: number }
  /** Answer with an S3 error, e.g. 500 InternalError or 503 SlowDown, without forwarding. */
  | { kind: "error"; status: number; code: string }
  /** Wait `ms`, then forward. */
  | { kind: "delay"; ms: number };

export interface FaultRule {
  method?: string;
  /** Matches the path (a string: the path contains it). */
  path?: string | RegExp;
  /** A query parameter that must be present (`uploadId`, `partNumber`, `uploads`, ...). */
  query?: string;
  /** Which matching requests get the fault: 1-based occurrences; all when omitted. */
  occurrences?: number[];
  fault: Fault;
  /** How many matching requests were seen, and how many got the fault. */
  seen: number;
  fired: number;
}

/**
 * An HTTP proxy on 127.0.0.1 between an S3 client and a server, whose faults a test programs per
 * request, and which counts what it did (faults fired, requests in flight), so a test can assert
 * that a fault really happened.
 */
export class FaultProxy {
  readonly rules: FaultRule[] = [];
  /** Every request seen, in order. */
  readonly log: ProxiedRequest[] = [];
  private readonly inFlightByKind = new Map<string, { now: number; max: number }>();
  private readonly sockets = new Set<Socket>();

  private constructor(
    private readonly server: Server,
    private readonly upstream: URL,
  ) {}

  static async start(upstreamEndpoint: string): Promise<FaultProxy> {
    const server = createServer();
    const proxy = new FaultProxy(server, new URL(upstreamEndpoint));
    server.on("request", (req, res) => void proxy.handle(req, res));
    server.on("connection", (socket) => {
      proxy.sockets.add(socket);
      socket.on("close", () => proxy.sockets.delete(socket));
    });
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    return proxy;
  }

  get endpoint(): string {
    return `http://127.0.0.1:${(this.server.address() as AddressInfo).port}`;
  }

  /** Adds a rule; the returned object's `seen`/`fired` count as requests pass. */
  add(rule: Omit<FaultRule, "seen" | "fired">): FaultRule {
    const added = { ...rule, seen: 0, fired: 0 };
    this.rules.push(added);
    return added;
  }

  /** Forgets the rules, the log and the in-flight maxima (a new test starts). */
  clear(): void {
    this.rules.length = 0;
    this.log.length = 0;
    for (const counter of this.inFlightByKind.values()) counter.max = counter.now;
  }

  /** The most requests of a kind (`kindOf` below) that were in flight at once. */
  maxInFlight(kind: string): number {
    return this.inFlightByKind.get(kind)?.max ?? 0;
  }

  count(predicate: (request: ProxiedRequest) => boolean): number {
    return this.log.filter(predicate).length;
  }

  async stop(): Promise<void> {
    for (const socket of this.sockets) socket.destroy();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const url = new URL(req.url ?? "/", "http://proxy");
    const range = req.headers.range;
    const seen: ProxiedRequest = { method: req.method ?? "GET", path: url.pathname, query: url.searchParams, range };
    this.log.push(seen);
    const fault = this.faultFor(seen);
    const kind = kindOf(seen);
    const counter = this.inFlightByKind.get(kind) ?? { now: 0, max: 0 };
    this.inFlightByKind.set(kind, counter);
    counter.now++;
    counter.max = Math.max(counter.max, counter.now);
    // Done when the answer is handed to the socket ("finish"), before the client can see it, or
    // when the connection dies first ("close"): a client never sees more in flight than counted.
    let done = false;
    const finished = (): void => {
      if (!done) counter.now--;
      done = true;
    };
    res.on("finish", finished);
    res.on("close", finished);

    if (fault?.kind === "drop") {
      req.socket.destroy();
      return;
    }
    res.on("finish", () => (seen.status = res.statusCode));
    if (fault?.kind === "error") {
      req.resume();
      const body = xmlError(fault.code, `injected by the test proxy: ${fault.code}`);
      res.writeHead(fault.status, { "content-type": "application/xml", "content-length": Buffer.byteLength(body) });
      res.end(body);
      return;
    }
    if (fault?.kind === "delay") await sleep(fault.ms);
    this.forward(req, res, fault);
  }

  private forward(req: IncomingMessage, res: ServerResponse, fault: Fault | undefined): void {
    const upstream = request(
      { host: this.upstream.hostname, port: this.upstream.port, method: req.method, path: req.url, headers: req.headers },
      (answer) => {
        res.writeHead(answer.statusCode ?? 502, answer.headers);
        if (fault?.kind !== "reset-response") {
          answer.pipe(res);
          return;
        }
        let sent = 0;
        answer.on("data", (chunk: Buffer) => {
          if (sent >= fault.afterBytes) return;
          const room = fault.afterBytes - sent;
          res.write(chunk.subarray(0, room));
          sent += Math.min(room, chunk.byteLength);
          if (sent >= fault.afterBytes) {
            answer.destroy();
            // Let the bytes reach the client, then cut the connection.
            setImmediate(() => res.socket?.resetAndDestroy?.() ?? res.destroy());
          }
        });
        answer.on("end", () => res.end());
      },
    );
    upstream.on("error", () => res.destroy());
    if (fault?.kind !== "reset-request") {
      req.pipe(upstream);
      return;
    }
    let forwarded = 0;
    req.on("data", (chunk: Buffer) => {
      if (forwarded >= fault.afterBytes) return;
      const room = fault.afterBytes - forwarded;
      upstream.write(chunk.subarray(0, room));
      forwarded += Math.min(room, chunk.byteLength);
      if (forwarded >= fault.afterBytes) {
        upstream.destroy();
        req.socket.resetAndDestroy();
      }
    });
    req.on("end", () => upstream.end());
  }

  private faultFor(seen: ProxiedRequest): Fault | undefined {
    for (const rule of this.rules) {
      if (rule.method !== undefined && rule.method !== seen.method) continue;
      if (rule.path !== undefined && !(typeof rule.path === "string" ? seen.path.includes(rule.path) : rule.path.test(seen.path))) continue;
      if (rule.query !== undefined && !seen.query.has(rule.query)) continue;
      rule.seen++;
      if (rule.occurrences !== undefined && !rule.occurrences.includes(rule.seen)) continue;
      rule.fired++;
      return rule.fault;
    }
    return undefined;
  }
}

/** A request's kind for the in-flight counters: "UploadPart", "GetObject", "PutObject", ... */
export function kindOf({ method, query }: ProxiedRequest): string {
  if (method === "PUT" && query.has("partNumber")) return "UploadPart";
  if (method === "PUT") return "PutObject";
  if (method === "GET" && query.has("list-type")) return "ListObjectsV2";
  if (method === "GET") return "GetObject";
  if (method === "HEAD") return "HeadObject";
  if (method === "POST" && query.has("uploads")) return "CreateMultipartUpload";
  if (method === "POST" && query.has("uploadId")) return "CompleteMultipartUpload";
  if (method === "POST" && query.has("delete")) return "DeleteObjects";
  if (method === "DELETE" && query.has("uploadId")) return "AbortMultipartUpload";
  return method;
}
