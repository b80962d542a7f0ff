/**
 * Crafted hostile inputs that must be refused with the library's own error: checkpoint files and
 * step directories that are symbolic links out of the checkpoint, file names with `..` or
 * absolute paths in a manifest, a shard index and zip entries, and pickles calling globals
 * outside the allow-list.
 */
import { cp, mkdir, readFile, rm, symlink, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { FileCheckpointManager, SafetensorsDumper, Tensor } from "../../src/index.js";
import { MemorySink } from "../../src/formats/byte-io.js";
import { ZipWriter } from "../../src/formats/zip/zip-writer.js";
import { resealManifest } from "../../test/helpers/manifest-edits.js";
import type { FuzzCase } from "./fuzz-child.js";

export interface CraftedCase {
  name: string;
  target: FuzzCase["target"];
  path: string;
  /** What the refusal's message must say. */
  expect: RegExp;
}

/**
 * A zip with the entries given. The writer refuses unsafe names, so each is written under a
 * placeholder of the same length and patched in afterwards (local header and central directory).
 */
async function zipWith(entries: [string, Uint8Array][]): Promise<Uint8Array> {
  const sink = new MemorySink();
  const zip = new ZipWriter(sink);
  const placeholder = (name: string, index: number): string => `${String.fromCharCode(97 + index)}`.repeat(name.length);
  for (const [index, [name, bytes]] of entries.entries()) await zip.addEntry(name.includes("..") || name.startsWith("/") ? placeholder(name, index) : name, bytes);
  await zip.finish();
  let out = Buffer.from(sink.toBytes());
  for (const [index, [name]] of entries.entries()) {
    if (!(name.includes("..") || name.startsWith("/"))) continue;
    const from = Buffer.from(placeholder(name, index));
    for (let at = out.indexOf(from); at >= 0; at = out.indexOf(from, at + 1)) out = Buffer.concat([out.subarray(0, at), Buffer.from(name), out.subarray(at + from.length)]);
  }
  return out;
}

const text = (value: string): Uint8Array => new TextEncoder().encode(value);
/** PROTO 2, EMPTY_DICT, STOP: an empty state. */
const EMPTY_PICKLE = Uint8Array.from([0x80, 2, 0x7d, 0x2e]);

/** A protocol-2 pickle calling `module.name("echo pwned")`. */
function callingPickle(module: string, name: string): Uint8Array {
  const argument = text("echo pwned");
  const length = Buffer.alloc(4);
  length.writeUInt32LE(argument.length);
  return Uint8Array.from([0x80, 2, 0x63, ...text(`${module}\n${name}\n`), 0x58, ...length, ...argument, 0x85, 0x52, 0x2e]);
}

export async function craftedCases(dir: string): Promise<CraftedCase[]> {
  const cases: CraftedCase[] = [];
  const outside = join(dir, "outside");
  await mkdir(outside, { recursive: true });

  // A committed checkpoint, then copies of it with links out of it.
  const template = join(dir, "template");
  const manager = new FileCheckpointManager({ checkpointDir: template });
  await manager.beginCheckpoint(1);
  await manager.saveState({ model: { w: Tensor.from(new Float32Array([1, 2])) }, epoch: 1 });
  await manager.commitCheckpoint();
  await manager.close();
  await rm(join(template, ".ckpt.lock"), { force: true });

  const linkedFile = join(dir, "linked-file");
  await cp(template, linkedFile, { recursive: true });
  await cp(join(template, "step_1/model.pt"), join(outside, "model.pt"));
  await rm(join(linkedFile, "step_1/model.pt"));
  await symlink(join(outside, "model.pt"), join(linkedFile, "step_1/model.pt"));
  cases.push({ name: "a checkpoint's model.pt is a symbolic link to a file outside it", target: "load step 1", path: linkedFile, expect: /symbolic link/ });

  const linkedManifest = join(dir, "linked-manifest");
  await cp(template, linkedManifest, { recursive: true });
  await cp(join(template, "step_1/manifest.json"), join(outside, "manifest.json"));
  await rm(join(linkedManifest, "step_1/manifest.json"));
  await symlink(join(outside, "manifest.json"), join(linkedManifest, "step_1/manifest.json"));
  cases.push({ name: "a checkpoint's manifest.json is a symbolic link to a file outside it", target: "load step 1", path: linkedManifest, expect: /symbolic link/ });

  const linkedStep = join(dir, "linked-step");
  await mkdir(linkedStep);
  await cp(join(template, "step_1"), join(outside, "step_1"), { recursive: true });
  await symlink(join(outside, "step_1"), join(linkedStep, "step_1"));
  cases.push({ name: "a step directory is a symbolic link to a directory outside the checkpoint directory", target: "load step 1", path: linkedStep, expect: /no checkpoint 1|symbolic link/ });

  for (const [label, name] of [["..", "../outside/model.pt"], ["an absolute path", join(outside, "model.pt")]] as const) {
    const bad = join(dir, `manifest-${label === ".." ? "dotdot" : "absolute"}`);
    await cp(template, bad, { recursive: true });
    const manifest = JSON.parse(await readFile(join(bad, "step_1/manifest.json"), "utf8")) as { files: Record<string, unknown> };
    manifest.files[name] = manifest.files["model.pt"];
    // Resealed: the point is the unsafe name, not the broken seal (manifest-seal.test.ts has that).
    await writeFile(join(bad, "step_1/manifest.json"), resealManifest(manifest));
    cases.push({ name: `a manifest names a file with ${label}`, target: "load step 1", path: bad, expect: /unsafe/ });
  }

  const indexDir = join(dir, "index");
  await mkdir(indexDir);
  await new SafetensorsDumper().dump({ w: Tensor.from(new Float32Array([1])) }, join(outside, "shard.safetensors"));
  for (const [label, shard] of [["dotdot", "../outside/shard.safetensors"], ["absolute", join(outside, "shard.safetensors")]] as const) {
    const path = join(indexDir, `${label}.safetensors.index.json`);
    await writeFile(path, JSON.stringify({ weight_map: { w: shard } }));
    cases.push({ name: `a shard index names a shard with ${label === "dotdot" ? ".." : "an absolute path"}`, target: "tensor file", path, expect: /does not name a file inside/ });
  }

  const zips: [string, [string, Uint8Array][]][] = [
    ["a zip entry named with ..", [["../data.pkl", EMPTY_PICKLE], ["../version", text("3\n")]]],
    ["a zip entry named with ..", [["archive/data.pkl", EMPTY_PICKLE], ["archive/../../evil", text("x")], ["archive/version", text("3\n")]]],
    ["a zip entry named with an absolute path", [["archive/data.pkl", EMPTY_PICKLE], ["/etc/evil", text("x")], ["archive/version", text("3\n")]]],
  ];
  for (const [index, [name, entries]] of zips.entries()) {
    const path = join(dir, `zip-names-${index}.pt`);
    await writeFile(path, await zipWith(entries));
    cases.push({ name, target: "tensor file", path, expect: /unsafe/ });
  }

  for (const [module, name] of [["os", "system"], ["posix", "system"], ["builtins", "eval"], ["subprocess", "Popen"], ["torch", "load"], ["__builtin__", "getattr"]] as const) {
    const path = join(dir, `global-${module}-${name}.pt`);
    await writeFile(path, await zipWith([["archive/data.pkl", callingPickle(module, name)], ["archive/version", text("3\n")]]));
    cases.push({ name: `a pickle calling ${module}.${name}`, target: "tensor file", path, expect: new RegExp(`${module}\\.${name}`) });
  }
  return cases;
}
