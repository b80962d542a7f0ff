import { build } from "esbuild";
import { rmSync } from "node:fs";
import { basename, join } from "node:path";

/** Where bundles go: inside the checkout, so packages they leave external resolve from its node_modules. */
const BUNDLE_DIR = join(import.meta.dirname, "..", "..", "node_modules", ".cache", "ckpt-children");

/**
 * Bundles a TypeScript child script, with the library source it imports, into one JavaScript
 * file that plain `node` runs. A test that starts a child per kill point starts it hundreds of
 * times: with tsx's loader a start took 0.7–1.7 s on the CI machine, bundled 0.2 s. Packages stay
 * external (loaded from node_modules as the library loads them).
 */
async function bundleChild(entry: string): Promise<string> {
  const path = join(BUNDLE_DIR, `${basename(entry, ".ts")}-${process.pid}.mjs`);
  await build({ entryPoints: [entry], outfile: path, bundle: true, platform: "node", format: "esm", target: "node20", packages: "external", logLevel: "error" });
  process.once("exit", () => rmSync(path, { force: true }));
  return path;
}

/** Each script bundled once per process, its bundle removed when the process exits. */
const bundles = new Map<string, Promise<string>>();

/** The path of `entry` bundled (bundleChild), made on the first call for it in this process. */
export function bundledOnce(entry: string): Promise<string> {
  let path = bundles.get(entry);
  if (path === undefined) {
    path = bundleChild(entry);
    bundles.set(entry, path);
  }
  return path;
}
