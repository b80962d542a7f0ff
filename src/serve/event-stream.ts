import type { ServerResponse } from "node:http";

/** A server-sent events response: `send` writes one event, the browser's EventSource reads it. */
export interface EventStream {
  send(event: string, data: unknown): void;
  end(): void;
  /** True once the client went away. */
  readonly closed: boolean;
}

export function openEventStream(res: ServerResponse): EventStream {
  res.writeHead(200, { "content-type": "text/event-stream; charset=utf-8", "cache-control": "no-store", connection: "keep-alive", "x-accel-buffering": "no" });
  let closed = false;
  res.on("close", () => (closed = true));
  // A comment line: the browser knows at once the stream is open.
  res.write(": ckpt serve\n\n");
  return {
    send(event, data) {
      if (!closed) res.write(`event: ${event}\ndata: ${JSON.stringify(data)}\n\n`);
    },
    end() {
      if (!closed) res.end();
      closed = true;
    },
    get closed() {
      return closed;
    },
  };
}
