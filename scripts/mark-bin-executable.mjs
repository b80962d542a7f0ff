// Part of `npm run build`: tsc writes dist/cli/main.js without the executable bit, and `npx ckpt`
// in a clone of this repository runs the bin named in package.json directly ("Permission denied"
// without it). Installs from the registry get the bit from npm; a clone needs this.
import { chmodSync, statSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const bin = join(dirname(fileURLToPath(import.meta.url)), "..", "dist", "cli", "main.js");
chmodSync(bin, statSync(bin).mode | 0o111);
