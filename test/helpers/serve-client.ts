import { request } from "node:http";
import { connect } from "node:net";

export interface Answer {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: string;
}

/** An HTTP request to 127.0.0.1:port with the headers given (Host included: fetch would not let a test set it). */
export function httpRequest(port: number, method: string, path: string, options: { headers?: Record<string, string>; body?: string } = {}): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const req = request({ host: "127.0.0.1", port, method, path, headers: { host: `127.0.0.1:${port}`, ...options.headers } }, (res) => {
      const chunks: Buffer[] = [];
      res.on("data", (chunk: Buffer) => chunks.push(chunk));
      res.on("end", () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks).toString("utf8") }));
      res.on("error", reject);
    });
    req.on("error", reject);
    req.end(options.body);
  });
}

export async function getJson(port: number, path: string): Promise<{ status: number; json: any }> {
  const answer = await httpRequest(port, "GET", path);
  return { status: answer.status, json: JSON.parse(answer.body) };
}

/** Sends bytes as they are on a raw socket (a client would normalise `..` and `%2e` away) and returns the whole answer. */
export function rawRequest(port: number, text: string): Promise<{ status: number; text: string }> {
  return new Promise((resolve, reject) => {
    const socket = connect(port, "127.0.0.1", () => socket.end(text));
    const chunks: Buffer[] = [];
    socket.on("data", (chunk: Buffer) => chunks.push(chunk));
    socket.on("error", reject);
    socket.on("close", () => {
      const answer = Buffer.concat(chunks).toString("utf8");
      const match = /^HTTP\/1\.[01] (\d{3})/.exec(answer);
      resolve({ status: match === null ? 0 : Number(match[1]), text: answer });
    });
  });
}

export interface SseEvent {
  event: string;
  data: any;
}

/**
 * Reads a server-sent events stream; `next(name)` waits for the next event of that name. The
 * connection stays open until `close()`.
 */
export function openEvents(port: number, path: string): Promise<{ next(name: string): Promise<SseEvent>; all(): Promise<SseEvent[]>; close(): void }> {
  return new Promise((resolve, reject) => {
    const events: SseEvent[] = [];
    const waiting: { name: string; resolve: (event: SseEvent) => void }[] = [];
    let ended = false;
    const endWaiters: (() => void)[] = [];
    const req = request({ host: "127.0.0.1", port, path, headers: { host: `127.0.0.1:${port}`, accept: "text/event-stream" } }, (res) => {
      if (res.statusCode !== 200) {
        reject(new Error(`${path}: HTTP ${res.statusCode}`));
        res.resume();
        return;
      }
      let buffer = "";
      res.setEncoding("utf8");
      res.on("data", (chunk: string) => {
        buffer += chunk;
        let end: number;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          const name = /^event: (.*)$/m.exec(block)?.[1];
          const data = /^data: (.*)$/m.exec(block)?.[1];
          if (name === undefined || data === undefined) continue;
          const event = { event: name, data: JSON.parse(data) };
          events.push(event);
          const index = waiting.findIndex((w) => w.name === name);
          if (index >= 0) waiting.splice(index, 1)[0]!.resolve(event);
        }
      });
      res.on("end", () => {
        ended = true;
        for (const done of endWaiters) done();
      });
      let read = 0;
      resolve({
        next(name) {
          const found = events.findIndex((e, i) => i >= read && e.event === name);
          if (found >= 0) {
            read = found + 1;
            return Promise.resolve(events[found]!);
          }
          return new Promise((done) => waiting.push({ name, resolve: (e) => {
            read = events.indexOf(e) + 1;
            done(e);
          } }));
        },
        all() {
          return ended ? Promise.resolve(events) : new Promise((done) => endWaiters.push(() => done(events)));
        },
        close() {
          req.destroy();
        },
      });
    });
    req.on("error", (error) => {
      if (!ended) reject(error);
    });
    req.end();
  });
}
