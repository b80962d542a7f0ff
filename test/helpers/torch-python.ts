import { spawnSync } from "node:child_process";
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

/** Runs a Python script with PyTorch; throws with its stderr when it fails. Returns stdout. */
export function runPython(python: string, script: string, args: string[] = [], input?: string): string {
  const result = spawnSync(python, ["-c", script, ...args], { encoding: "utf8", input, maxBuffer: 256 << 20 });
  if (result.status !== 0) throw new Error(`python failed (${result.status}):\n${result.stderr}`);
  return result.stdout;
}
