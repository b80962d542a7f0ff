// How the benchmark's worker reads a process's time, memory and event-loop delay around one operation.
import { readFileSync, statSync, writeFileSync } from "node:fs";

/**
 * Runs a 1 ms interval timer until `work` resolves: the worst and the 99th-percentile lateness of
 * its callbacks (time between two callbacks beyond the 1 ms asked for, and from the last one to the end).
 */
export async function timerLateness(work: () => Promise<unknown>): Promise<{ seconds: number; worst: number; p99: number; ticks: number }> {
  const start = performance.now();
  let last = start;
  const late: number[] = [];
  const timer = setInterval(() => {
    const now = performance.now();
    late.push(Math.max(0, now - last - 1));
    last = now;
  }, 1);
  try {
    await work();
  } finally {
    clearInterval(timer);
  }
  const end = performance.now();
  const ticks = late.length;
  late.push(Math.max(0, end - last - 1));
  late.sort((a, b) => a - b);
  const p99 = late[Math.min(late.length - 1, Math.floor(0.99 * late.length))]!;
  return { seconds: (end - start) / 1000, worst: late.at(-1)! / 1000, p99: p99 / 1000, ticks };
}

/** Resets the kernel's peak-RSS mark to the current RSS, so maxRSS afterwards is this operation's peak. */
export function resetPeakMemory(): void {
  try {
    writeFileSync("/proc/self/clear_refs", "5");
  } catch {
    // Not Linux, or not allowed: the peak may then include an earlier one (startup, building).
  }
}

/** User + system CPU time of every thread of this process since `start`. */
export function cpuSecondsSince(start: NodeJS.CpuUsage): number {
  const { user, system } = process.cpuUsage(start);
  return (user + system) / 1e6;
}

export const collectGarbage = (globalThis as { gc?: () => void }).gc ?? (() => undefined);

/**
 * Write requests the disk holding `path` has completed so far (Linux: /proc/diskstats), or
 * undefined where they cannot be read. A write of one size can take 2-5x as many requests as
 * another when the pages of the memory it is written from are scattered (docs/design.md, "Write
 * requests and the pages they come from").
 */
export function diskWriteRequests(path: string): number | undefined {
  try {
    const dev = statSync(path).dev;
    // Linux's encoding of a device number: minor in bits 0-7 and 20-31, major in bits 8-19.
    const major = (dev >> 8) & 0xfff;
    const minor = (dev & 0xff) | ((dev >> 12) & 0xfff00);
    for (const line of readFileSync("/proc/diskstats", "utf8").split("\n")) {
      const fields = line.trim().split(/\s+/);
      if (Number(fields[0]) === major && Number(fields[1]) === minor) return Number(fields[7]);
    }
  } catch {
    // Not Linux, or not allowed.
  }
  return undefined;
}
