import { spawnSync } from "node:child_process";
import { join } from "node:path";
import { MessageChannel, type MessagePort, Worker, receiveMessageOnPort } from "node:worker_threads";
import type { TestContext } from "node:test";

/**
 * Finds a Python that has PyTorch: $CKPT_PYTHON, else Debian's /usr/bin/python3 (the `python3`
 * first on PATH may be another interpreter). Under CI (CI=true) a missing PyTorch fails the test;
 * elsewhere the test is skipped with a loud message.
 */
const candidates = [process.env.CKPT_PYTHON, "/usr/bin/python3", "python3"].filter((c): c is string => !!c);

let found: string | null | undefined;

export function torchPython(): string | null {
  if (found !== undefined) return found;
  found = null;
  for (const python of candidates) {
    // Found, not imported: importing torch costs 1–2 s of CPU, paid again by the test's own scripts.
    const probe = spawnSync(python, ["-c", "import importlib.util as u, sys; sys.exit(0 if u.find_spec('torch') and u.find_spec('numpy') else 1)"], { encoding: "utf8" });
    if (probe.status === 0) {
      found = python;
      break;
    }
  }
  return found;
}

/** Returns the Python to use, or skips the test (fails it under CI) when PyTorch is missing. */
export function requireTorch(t: TestContext): string | null {
  const python = torchPython();
  if (python !== null) return python;
  const message = "PyTorch is not installed (apt-get install -y python3-torch python3-numpy, or set CKPT_PYTHON)";
  if (process.env.CI === "true") throw new Error(`${message}: required under CI`);
  console.warn(`\n*** SKIPPING: ${message} ***\n`);
  t.skip(message);
  return null;
}

/**
 * Runs a Python script with PyTorch as `python -c script args…` would; throws with its stderr
 * when it fails. Returns stdout. The scripts of one test process run one after the other in one
 * interpreter (torch-server.py), which imports torch once: a process of its own for each cost
 * 1.5–2 s of CPU in torch's import, dozens of times a suite. The server puts back what a script
 * may change for the next (argv, path, working directory, streams, default dtype).
 */
export function runPython(python: string, script: string, args: string[] = [], input?: string): string {
  const reply = serverFor(python).run({ script, args, input: input ?? "" });
  if (reply.status !== 0) throw new Error(`python failed (${reply.status}):\n${reply.stderr}`);
  return reply.stdout;
}

interface ScriptReply {
  status: number;
  stdout: string;
  stderr: string;
}

/** A script that takes longer than this fails its test instead of blocking it for good. */
const SCRIPT_TIMEOUT_MS = 10 * 60_000;

/** The test thread blocks on `signal` while the bridge worker talks to the server; replies come on `port`. */
class TorchServer {
  private readonly port: MessagePort;
  private readonly signal = new Int32Array(new SharedArrayBuffer(4));

  constructor(python: string) {
    const { port1, port2 } = new MessageChannel();
    this.port = port1;
    const worker = new Worker(join(import.meta.dirname, "torch-server-bridge.mjs"), {
      workerData: { python, serverScript: join(import.meta.dirname, "torch-server.py"), port: port2, signal: this.signal },
      transferList: [port2],
      execArgv: [],
    });
    // Neither keeps the test process alive; when it exits, the server reads the end of its input and stops.
    worker.unref();
    port1.unref();
  }

  run(request: { script: string; args: string[]; input: string }): ScriptReply {
    Atomics.store(this.signal, 0, 0);
    this.port.postMessage(request);
    if (Atomics.wait(this.signal, 0, 0, SCRIPT_TIMEOUT_MS) === "timed-out") {
      throw new Error(`the Python script did not finish within ${SCRIPT_TIMEOUT_MS / 60_000} minutes:\n${request.script}`);
    }
    const message = receiveMessageOnPort(this.port)?.message as (ScriptReply & { error?: string }) | undefined;
    if (message === undefined) throw new Error("the Python server signalled a reply but sent none");
    if (message.error !== undefined) throw new Error(message.error);
    return message;
  }
}

const servers = new Map<string, TorchServer>();

function serverFor(python: string): TorchServer {
  let server = servers.get(python);
  if (server === undefined) {
    server = new TorchServer(python);
    servers.set(python, server);
  }
  return server;
}
