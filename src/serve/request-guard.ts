import { realpath } from "node:fs/promises";
import { networkInterfaces } from "node:os";
import { isAbsolute, relative, sep } from "node:path";

/**
 * The checks that keep `ckpt serve` safe by default: only requests addressed to the bound
 * address (a page on another site that rebinds its DNS name to 127.0.0.1 sends its own name as
 * Host), only clean request paths, and nothing read outside the checkpoint directory.
 */

/** A request refused: its status and a message for the JSON error body. */
export class RequestRefused extends Error {
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message);
  }
}

const LOOPBACK = new Set(["127.0.0.1", "::1", "localhost"]);
const WILDCARD = new Set(["0.0.0.0", "::"]);

function hostPort(host: string, port: number): string {
  return `${host.includes(":") ? `[${host}]` : host}:${port}`.toLowerCase();
}

/**
 * The Host header values a request may carry: the bound address with its port; for a loopback
 * address also the other loopback names; for a wildcard address every address of this machine.
 */
export function allowedHosts(boundHost: string, port: number): Set<string> {
  const names = new Set([boundHost]);
  if (LOOPBACK.has(boundHost) || WILDCARD.has(boundHost)) for (const name of LOOPBACK) names.add(name);
  if (WILDCARD.has(boundHost)) {
    for (const addresses of Object.values(networkInterfaces())) for (const a of addresses ?? []) names.add(a.address);
  }
  return new Set([...names].map((name) => hostPort(name, port)));
}

/** Refuses (403) a Host header that is missing or names anything but the bound address. */
export function checkHost(header: string | undefined, allowed: ReadonlySet<string>): void {
  if (header === undefined || !allowed.has(header.toLowerCase())) {
    throw new RequestRefused(403, `Host ${JSON.stringify(header ?? "")} is not this server's address: ckpt serve answers only requests addressed to ${[...allowed][0]}`);
  }
}

/**
 * Refuses (403) a state-changing request sent by a page of another origin: a browser adds Origin
 * to every cross-site POST, and a form cannot send JSON, so both are checked.
 */
export function checkSameOrigin(origin: string | undefined, contentType: string | undefined, allowed: ReadonlySet<string>): void {
  if (origin !== undefined) {
    let host: string;
    try {
      host = new URL(origin).host;
    } catch {
      throw new RequestRefused(403, `Origin ${JSON.stringify(origin)} is not a URL`);
    }
    if (!allowed.has(host.toLowerCase())) throw new RequestRefused(403, `a request from ${origin} may not change anything here`);
  }
  if (!(contentType ?? "").toLowerCase().startsWith("application/json")) throw new RequestRefused(415, "send the request body as application/json");
}

/**
 * The path and query of a request target, refusing (400) anything a client would normalise or
 * that names a place by a detour: `..` or `.` segments, encoded dots or slashes, backslashes,
 * empty segments, NUL, and absolute-form targets (`GET http://host/...`).
 */
export function parseTarget(target: string | undefined): { pathname: string; query: URLSearchParams } {
  if (target === undefined || !target.startsWith("/")) throw new RequestRefused(400, "the request target must be a path starting with /");
  const question = target.indexOf("?");
  const rawPath = question < 0 ? target : target.slice(0, question);
  if (/%2e|%2f|%5c|%00|\\|\0/i.test(rawPath)) throw new RequestRefused(400, `the path ${JSON.stringify(rawPath)} has encoded dots, slashes or backslashes`);
  const segments = rawPath.split("/").slice(1);
  if (segments.some((segment, i) => segment === ".." || segment === "." || (segment === "" && i < segments.length - 1))) {
    throw new RequestRefused(400, `the path ${JSON.stringify(rawPath)} has '..', '.' or empty segments`);
  }
  let pathname: string;
  try {
    pathname = decodeURIComponent(rawPath);
  } catch {
    throw new RequestRefused(400, `the path ${JSON.stringify(rawPath)} is not valid percent-encoding`);
  }
  return { pathname, query: new URLSearchParams(question < 0 ? "" : target.slice(question + 1)) };
}

/**
 * Refuses (400) a name of a file within a step that is absolute or climbs out (`..`), before it
 * is joined to anything. Names come from query strings, which clients send as they are.
 */
export function checkRelativeName(name: string, what: string): void {
  if (name === "" || isAbsolute(name) || name.includes("\\") || name.includes("\0") || name.split("/").some((part) => part === ".." || part === "." || part === "")) {
    throw new RequestRefused(400, `${what} ${JSON.stringify(name)} must be a plain relative name within the checkpoint`);
  }
}

/**
 * Refuses (403) a local path whose real location (symlinks followed) is outside `rootReal`, the
 * real path of the checkpoint directory. Paths of object stores have no symlinks to follow.
 */
export async function checkInside(rootReal: string, path: string): Promise<void> {
  let real: string;
  try {
    real = await realpath(path);
  } catch (error) {
    if ((error as { code?: string }).code === "ENOENT") throw new RequestRefused(404, `${path} does not exist (any more)`);
    throw error;
  }
  const rel = relative(rootReal, real);
  if (rel !== "" && (rel === ".." || rel.startsWith(`..${sep}`) || isAbsolute(rel))) {
    throw new RequestRefused(403, `${path} leads outside the checkpoint directory (a symlink to ${real}): ckpt serve reads nothing outside it`);
  }
}
