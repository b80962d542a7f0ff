import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { createConnection, createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { TestContext } from "node:test";

/**
 * A real `redis-server` (Debian's) on a free loopback port, for the tests: no fixed port, nothing
 * saved to disk, stopped by its PID afterwards. Under CI (CI=true) a missing redis-server fails
 * the test; elsewhere the test is skipped with a loud message.
 */

const REDIS_SERVER = process.env.CKPT_REDIS_SERVER ?? "redis-server";
/** Attempts at finding a port: another process may take the one we picked before redis binds it. */
const PORT_ATTEMPTS = 5;
const START_TIMEOUT_MS = 10_000;

let available: boolean | undefined;

export function redisServerAvailable(): boolean {
  available ??= spawnSync(REDIS_SERVER, ["--version"], { encoding: "utf8" }).status === 0;
  return available;
}

/** True when the test may use redis-server; skips the test (fails it under CI) when it is missing. */
export function requireRedisServer(t: TestContext): boolean {
  if (redisServerAvailable()) return true;
  const message = "redis-server is not installed (apt-get install -y redis-server, or set CKPT_REDIS_SERVER)";
  if (process.env.CI === "true") throw new Error(`${message}: required under CI`);
  console.warn(`\n*** SKIPPING: ${message} ***\n`);
  t.skip(message);
  return false;
}

export class RedisServer {
  private constructor(
    private readonly child: ChildProcess,
    readonly port: number,
    private readonly dir: string,
    private readonly exited: Promise<void>,
  ) {}

  get url(): string {
    return `redis://127.0.0.1:${this.port}`;
  }

  get pid(): number {
    return this.child.pid!;
  }

  /** Starts a server; `extraArgs` are added to its command line (e.g. `--requirepass`). */
  static async start(extraArgs: string[] = []): Promise<RedisServer> {
    let lastError: unknown;
    for (let attempt = 0; attempt < PORT_ATTEMPTS; attempt++) {
      const port = await freePort();
      const dir = mkdtempSync(join(tmpdir(), "ckpt-redis-"));
      const child = spawn(REDIS_SERVER, ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", dir, ...extraArgs], {
        stdio: ["ignore", "pipe", "pipe"],
      });
      let output = "";
      child.stdout!.on("data", (chunk: Buffer) => (output += chunk.toString()));
      child.stderr!.on("data", (chunk: Buffer) => (output += chunk.toString()));
      const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
      let hasExited = false;
      void exited.then(() => (hasExited = true));
      const server = new RedisServer(child, port, dir, exited);
      try {
        await waitForPong(port, () => hasExited);
        return server;
      } catch (error) {
        await server.stop();
        lastError = new Error(`redis-server on port ${port} did not start: ${(error as Error).message}\n${output}`);
      }
    }
    throw lastError;
  }

  /** Kills the server abruptly (as a crash or a lost machine would) and waits for it to exit. */
  async kill(): Promise<void> {
    if (this.child.exitCode === null && this.child.signalCode === null) this.child.kill("SIGKILL");
    await this.exited;
  }

  async stop(): Promise<void> {
    await this.kill();
    rmSync(this.dir, { recursive: true, force: true });
  }
}

/** A port that was free a moment ago: the kernel's pick for port 0 on loopback. */
function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const address = server.address();
      server.close(() => (typeof address === "object" && address !== null ? resolve(address.port) : reject(new Error("no port"))));
    });
  });
}

async function waitForPong(port: number, exited: () => boolean): Promise<void> {
  const deadline = Date.now() + START_TIMEOUT_MS;
  for (;;) {
    if (exited()) throw new Error("redis-server exited");
    try {
      const reply = await ping(port);
      // A server with a password answers NOAUTH: it is up all the same.
      if (reply.startsWith("+PONG") || reply.startsWith("-NOAUTH")) return;
    } catch {
      // not listening yet
    }
    if (Date.now() > deadline) throw new Error(`no PONG within ${START_TIMEOUT_MS} ms`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

/** PING over a fresh socket, in RESP; resolves with the first reply line. */
function ping(port: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = createConnection({ port, host: "127.0.0.1" });
    let reply = "";
    socket.setTimeout(2000, () => socket.destroy(new Error("no reply")));
    socket.once("error", reject);
    socket.on("data", (chunk) => {
      reply += chunk.toString();
      if (reply.includes("\r\n")) {
        socket.end();
        resolve(reply);
      }
    });
    socket.write("*1\r\n$4\r\nPING\r\n");
  });
}
