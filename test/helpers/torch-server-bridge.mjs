// The worker thread behind runPython (torch-python.ts): it owns the Python server process and
// relays requests to it, so that the test's thread can block on a reply (runPython is
// synchronous, as spawnSync was) while this thread's event loop does the I/O.
import { spawn } from "node:child_process";
import { workerData } from "node:worker_threads";

const { python, serverScript, port, signal } = workerData;
const server = spawn(python, [serverScript], { stdio: ["pipe", "pipe", "pipe"] });
let serverErrors = "";
let failure = null;
let waiting = false;
let received = Buffer.alloc(0);

function reply(message) {
  waiting = false;
  port.postMessage(message);
  Atomics.store(signal, 0, 1);
  Atomics.notify(signal, 0);
}

function fail(reason) {
  failure ??= `${reason}${serverErrors === "" ? "" : `:\n${serverErrors}`}`;
  if (waiting) reply({ error: failure });
}

server.on("error", (error) => fail(`the Python server could not start: ${error.message}`));
server.on("exit", (code, signalName) => fail(`the Python server exited (${signalName ?? `code ${code}`})`));
server.stdin.on("error", (error) => fail(`writing to the Python server failed: ${error.message}`));
server.stderr.setEncoding("utf8");
server.stderr.on("data", (text) => (serverErrors += text));
server.stdout.on("data", (chunk) => {
  received = Buffer.concat([received, chunk]);
  while (received.length >= 4) {
    const length = received.readUInt32BE(0);
    if (received.length < 4 + length) break;
    const message = JSON.parse(received.subarray(4, 4 + length).toString("utf8"));
    received = received.subarray(4 + length);
    reply(message);
  }
});

port.on("message", (request) => {
  waiting = true;
  if (failure !== null) return reply({ error: failure });
  const body = Buffer.from(JSON.stringify(request), "utf8");
  const head = Buffer.alloc(4);
  head.writeUInt32BE(body.length);
  server.stdin.write(Buffer.concat([head, body]));
});
