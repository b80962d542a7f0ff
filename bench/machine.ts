// What the numbers were measured on: benchmarks are only comparable on the same machine.
import { spawnSync } from "node:child_process";
import { readFileSync, realpathSync, statfsSync } from "node:fs";
import { CRC32_IMPLEMENTATION } from "../src/formats/crc32.js";
import * as os from "node:os";
import { formatBytes } from "./scenarios.js";

export interface Torch {
  python: string;
  pythonVersion: string;
  torchVersion: string;
}

export interface Machine {
  cpu: string;
  cores: number;
  memory: string;
  /** GLIBC_TUNABLES as every process of the run inherits it: huge pages change load times (docs/design.md). */
  tunables: string;
  os: string;
  node: string;
  /** Which CRC-32 implementation the library loaded (src/formats/crc32.ts). */
  crc32: string;
  torch: string;
  disk: string;
  code: string;
  date: string;
  /** The load average before and after the run: other processes on the machine skew results. */
  load: string;
}

/** Finds a Python with PyTorch: $CKPT_PYTHON, else Debian's /usr/bin/python3; null when there is none. */
export function findTorch(): Torch | null {
  const candidates = [process.env.CKPT_PYTHON, "/usr/bin/python3"].filter((c): c is string => !!c);
  for (const python of candidates) {
    const probe = spawnSync(python, ["-c", "import sys, torch; print(torch.__version__, sys.version.split()[0])"], { encoding: "utf8" });
    if (probe.status !== 0) continue;
    const [torchVersion = "?", pythonVersion = "?"] = probe.stdout.trim().split(" ");
    return { python, pythonVersion, torchVersion };
  }
  return null;
}

/** The file system holding `dir`: the longest mount point that contains it, from /proc/mounts. */
function fileSystemOf(dir: string): string {
  try {
    const real = realpathSync(dir);
    let best: { point: string; text: string } | undefined;
    for (const line of readFileSync("/proc/mounts", "utf8").split("\n")) {
      const [device, point, type] = line.split(" ");
      if (device === undefined || point === undefined || type === undefined) continue;
      const inside = real === point || real.startsWith(point.endsWith("/") ? point : `${point}/`);
      if (inside && (best === undefined || point.length > best.point.length)) best = { point, text: `${type} on ${device}` };
    }
    return best?.text ?? "unknown file system";
  } catch {
    return "unknown file system";
  }
}

/** Which code was measured: the commit, and whether src/ differs from it. */
function describeCode(root: string): string {
  const git = (...args: string[]) => spawnSync("git", ["-C", root, ...args], { encoding: "utf8" });
  const head = git("rev-parse", "--short", "HEAD");
  if (head.status !== 0) return "not a git checkout";
  const changed = git("status", "--porcelain", "--", "src").stdout.split("\n").filter((l) => l !== "").length;
  const library = process.env.CKPT_BENCH_SOURCE === "1" ? "src/ run through tsx (CKPT_BENCH_SOURCE=1)" : "the build in dist/";
  return `commit ${head.stdout.trim()}, ${changed === 0 ? "src/ as committed" : `with uncommitted changes to ${changed} files in src/`}; measured: ${library}`;
}


export function describeMachine(root: string, tmpDir: string, torch: Torch | null, torchNote: string): Machine {
  const cpus = os.cpus();
  const stats = statfsSync(tmpDir);
  return {
    cpu: cpus[0]?.model.trim() ?? "unknown",
    cores: os.availableParallelism(),
    memory: formatBytes(os.totalmem()),
    tunables: process.env.GLIBC_TUNABLES === undefined || process.env.GLIBC_TUNABLES === "" ? "none (glibc defaults: large buffers are fresh 4 KiB pages)" : `GLIBC_TUNABLES=${process.env.GLIBC_TUNABLES}`,
    os: `${os.type()} ${os.release()} (${os.arch()})`,
    node: process.version,
    crc32: CRC32_IMPLEMENTATION,
    torch: torch === null ? `none (${torchNote})` : `PyTorch ${torch.torchVersion}, Python ${torch.pythonVersion} (${torch.python})`,
    disk: `${tmpDir}: ${fileSystemOf(tmpDir)}, ${formatBytes(stats.bavail * stats.bsize)} free`,
    code: describeCode(root),
    date: new Date().toISOString(),
    load: `${loadAverage()} at the start`,
  };
}

/** The 1-minute load average. */
export function loadAverage(): string {
  return os.loadavg()[0]!.toFixed(1);
}

/** Completes `machine.load` once the run is over. */
export function finishLoad(machine: Machine): void {
  const cores = os.availableParallelism();
  machine.load += `, ${loadAverage()} at the end (1-minute load average on ${cores} cores; above ${cores}, other processes competed for them)`;
}

export function machineLines(machine: Machine): string[] {
  return [
    `CPU:     ${machine.cpu}, ${machine.cores} cores`,
    `Memory:  ${machine.memory}; glibc tunables: ${machine.tunables}`,
    `OS:      ${machine.os}`,
    `Node:    ${machine.node}`,
    `CRC-32:  ${machine.crc32}`,
    `PyTorch: ${machine.torch}`,
    `Disk:    ${machine.disk}`,
    `Code:    ${machine.code}`,
    `Date:    ${machine.date}`,
    `Load:    ${machine.load}`,
  ];
}
