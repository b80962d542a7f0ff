import { createHash } from "node:crypto";
import { readFile, readdir } from "node:fs/promises";
import { join } from "node:path";

/**
 * Every entry under `dir` (files with a hash of their bytes, directories as such): two equal
 * snapshots mean nothing on disk changed. The lock file is left out: a live manager holds it.
 */
export async function diskSnapshot(dir: string): Promise<Map<string, string>> {
  const snapshot = new Map<string, string>();
  const walk = async (relative: string): Promise<void> => {
    for (const entry of await readdir(join(dir, relative), { withFileTypes: true })) {
      const name = relative === "" ? entry.name : `${relative}/${entry.name}`;
      if (name === ".ckpt.lock") continue;
      if (entry.isDirectory()) {
        snapshot.set(`${name}/`, "directory");
        await walk(name);
      } else snapshot.set(name, createHash("sha256").update(await readFile(join(dir, name))).digest("hex"));
    }
  };
  await walk("");
  return snapshot;
}

/** How two snapshots differ, one line per entry; empty when they are equal. */
export function snapshotDifference(before: Map<string, string>, after: Map<string, string>): string[] {
  const problems: string[] = [];
  for (const [name, hash] of after) {
    if (!before.has(name)) problems.push(`${name} appeared`);
    else if (before.get(name) !== hash) problems.push(`${name} changed`);
  }
  for (const name of before.keys()) if (!after.has(name)) problems.push(`${name} vanished`);
  return problems;
}
