import { existsSync } from "node:fs";
import { readFile, realpath } from "node:fs/promises";
import { createServer, type IncomingMessage, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { fileURLToPath } from "node:url";
import { isUrlPath } from "../fs/paths.js";
import { fileSystemForPath } from "../fs/file-system-for-path.js";
import { InvalidArgumentError, listCheckpointDirectory } from "../index.js";
import { DashboardApi, errorStatus, sendJson, type DirectoryChange } from "./dashboard-api.js";
import { DEFAULT_RESCAN_MS, DirectoryWatch } from "./directory-watch.js";
import { RequestRefused, allowedHosts, checkHost, parseTarget } from "./request-guard.js";

export interface DashboardOptions {
  /** The checkpoint directory (a local path; `s3://` once fileSystemForPath knows it). */
  checkpointDir: string;
  /** Default 127.0.0.1: only this machine can connect. */
  host?: string;
  /** Default 0: any free port (the URL says which). */
  port?: number;
  /** Allow POST /api/prune (default false: read-only). */
  allowPrune?: boolean;
  /** How often the directory is listed again besides watching it (default 2 s). */
  rescanMs?: number;
  /** Where the built page is (default: beside this module, or dist/serve/page when run from the sources). */
  pageDir?: string;
}

export interface Dashboard {
  url: string;
  host: string;
  port: number;
  close(): Promise<void>;
}

/** The page's files: nothing else is served outside /api/, so no request path reaches the disk. */
const PAGE_FILES: Record<string, { file: string; type: string }> = {
  "/": { file: "index.html", type: "text/html; charset=utf-8" },
  "/app.js": { file: "app.js", type: "text/javascript; charset=utf-8" },
  "/charts.js": { file: "charts.js", type: "text/javascript; charset=utf-8" },
  "/panels.js": { file: "panels.js", type: "text/javascript; charset=utf-8" },
  "/api-client.js": { file: "api-client.js", type: "text/javascript; charset=utf-8" },
  "/style.css": { file: "style.css", type: "text/css; charset=utf-8" },
};

const SECURITY_HEADERS = {
  "content-security-policy": "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
  "x-content-type-options": "nosniff",
  "referrer-policy": "no-referrer",
  "x-frame-options": "DENY",
};

/**
 * Starts `ckpt serve`'s web server over a checkpoint directory: the page, the JSON API under
 * /api/, and server-sent events when the directory changes.
 *
 * @example
 * const dashboard = await startDashboard({ checkpointDir: "checkpoints" });
 * console.log(dashboard.url); // http://127.0.0.1:41234/
 */
export async function startDashboard(options: DashboardOptions): Promise<Dashboard> {
  const { checkpointDir } = options;
  const fileSystem = fileSystemForPath(checkpointDir);
  const host = options.host ?? "127.0.0.1";
  const local = !isUrlPath(checkpointDir);
  if (local && !existsSync(checkpointDir)) throw new InvalidArgumentError(`${checkpointDir}: no such directory`);
  const rootReal = local ? await realpath(checkpointDir) : undefined;
  const pageDir = options.pageDir ?? defaultPageDir();

  let version = 0;
  const listeners = new Set<(change: DirectoryChange) => void>();
  /** The directories of the listing that made the last change, sent with it. */
  let seen: DirectoryChange["checkpoints"] = [];
  let hosts: ReadonlySet<string> = new Set();
  const api = new DashboardApi({
    checkpointDir,
    fileSystem,
    rootReal,
    allowPrune: options.allowPrune === true,
    get allowedHosts() {
      return hosts;
    },
    onChange: (listener) => {
      listeners.add(listener);
      return () => listeners.delete(listener);
    },
    version: () => version,
  });

  const server = createServer((req, res) => {
    void respond(req, res).catch((error: unknown) => {
      if (res.headersSent) {
        res.destroy();
        return;
      }
      const status = errorStatus(error);
      sendJson(res, { error: { status, message: (error as Error).message } }, status);
    });
  });
  const respond = async (req: IncomingMessage, res: ServerResponse): Promise<void> => {
    for (const [name, value] of Object.entries(SECURITY_HEADERS)) res.setHeader(name, value);
    checkHost(req.headers.host, hosts);
    const { pathname, query } = parseTarget(req.url);
    if (pathname === "/api" || pathname.startsWith("/api/")) return api.handle(req, res, pathname, query);
    const page = PAGE_FILES[pathname];
    if (page === undefined) throw new RequestRefused(404, `no page ${pathname}`);
    if (req.method !== "GET" && req.method !== "HEAD") throw new RequestRefused(405, `${req.method} ${pathname}: the page is read-only`);
    const body = await readFile(`${pageDir}/${page.file}`).catch(() => {
      throw new RequestRefused(500, `the page's ${page.file} is missing from ${pageDir}: run npm run build`);
    });
    res.writeHead(200, { "content-type": page.type, "cache-control": "no-store" });
    res.end(req.method === "HEAD" ? undefined : body);
  };

  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(options.port ?? 0, host, () => resolve());
  });
  const port = (server.address() as AddressInfo).port;
  hosts = allowedHosts(host, port);

  const fingerprint = async (): Promise<string> => {
    const now = await listCheckpointDirectory(checkpointDir, { fileSystem });
    api.observe(now.checkpoints);
    seen = now.checkpoints.map((c) => ({ stepNr: c.stepNr, name: c.name, status: c.status }));
    return JSON.stringify(now.checkpoints.map((c) => [c.name, c.status, c.size, c.files.length, c.modelOnly]));
  };
  const watch = new DirectoryWatch(
    checkpointDir,
    fingerprint,
    () => {
      version++;
      for (const listener of listeners) listener({ version, checkpoints: seen });
    },
    options.rescanMs ?? DEFAULT_RESCAN_MS,
  );
  await watch.start();

  const shownHost = host.includes(":") ? `[${host}]` : host;
  return {
    url: `http://${shownHost}:${port}/`,
    host,
    port,
    async close() {
      watch.close();
      server.closeAllConnections(); // event streams never end on their own
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

/** Beside this module once built (dist/serve/page); from the sources, the built copy in dist/. */
function defaultPageDir(): string {
  const beside = fileURLToPath(new URL("./page", import.meta.url));
  if (existsSync(`${beside}/app.js`)) return beside;
  return fileURLToPath(new URL("../../dist/serve/page", import.meta.url));
}
