/**
 * manifest.json seals itself (version 2): its last field is a CRC-32 of its own bytes. The torture
 * campaign found digit flips in createdAt and save.durableMs that still parsed and were accepted;
 * here every byte of a real manifest is flipped, cut and extended, and each must be refused.
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { existsSync } from "node:fs";
import { readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { before, describe, test } from "node:test";

import { CheckpointLoadError, FileCheckpointManager, listCheckpointDirectory, verifyCheckpoints } from "../src/index.js";
import { assertSameState, saveStep, trainingState, useTempDirs } from "./helpers/checkpoint-helpers.js";
import { asVersion1Manifest, resealManifest } from "./helpers/manifest-edits.js";

const tempDir = useTempDirs("manifest-seal");
const CLI = join(import.meta.dirname, "..", "dist", "cli", "main.js");

/** A checkpoint directory with steps 1 and 2 saved by the manager; returns it and step 2's manifest path. */
async function savedDir(): Promise<{ dir: string; path: string; original: Buffer }> {
  const dir = await tempDir();
  const manager = new FileCheckpointManager({ checkpointDir: dir });
  await saveStep(manager, 1);
  await saveStep(manager, 2, { score: 0.25, metadata: { note: "the seal" } });
  await manager.close();
  const path = join(dir, "step_2", "manifest.json");
  return { dir, path, original: await readFile(path) };
}

/** Asserts that loading step 2 is refused with a CheckpointLoadError naming manifest.json; returns its message. */
async function assertRefused(reader: FileCheckpointManager, what: string): Promise<string> {
  let message = "";
  await assert.rejects(reader.loadCheckpoint(2), (error: unknown) => {
    assert.ok(error instanceof CheckpointLoadError, `${what}: a CheckpointLoadError, got ${String(error)}`);
    assert.match(error.message, /manifest\.json of step 2/, `${what}: the error names manifest.json`);
    message = error.message;
    return true;
  }, `${what}: refused`);
  return message;
}

/** A small deterministic generator (mulberry32), so a failing case can be replayed. */
function random(seed: number): () => number {
  return () => {
    seed = (seed + 0x6d2b79f5) >>> 0;
    let t = seed;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 2 ** 32;
  };
}

describe("a version-2 manifest.json is sealed with a checksum of its own bytes", () => {
  test("the manager writes version 2, ending with the checksum, and loads it back", async () => {
    const { dir, original } = await savedDir();
    const text = original.toString("utf8");
    assert.match(text, /^\{\n {2}"format": "ckpt-manifest",\n {2}"version": 2,\n/);
    assert.match(text, /,\n {2}"checksum": "crc32:[0-9a-f]{8}"\n\}\n$/);
    const reader = new FileCheckpointManager({ checkpointDir: dir });
    assertSameState(await reader.loadCheckpoint(2), trainingState(2));
    await reader.close();
  });

  test("every single-byte flip, at every offset and with random masks, is refused at load naming manifest.json", async () => {
    const { dir, path, original } = await savedDir();
    const reader = new FileCheckpointManager({ checkpointDir: dir });
    const next = random(16);
    const cases: [offset: number, mask: number][] = [];
    for (let offset = 0; offset < original.length; offset++) cases.push([offset, 0x01]);
    for (let i = 0; i < 300; i++) cases.push([Math.floor(next() * original.length), 1 + Math.floor(next() * 255)]);
    for (const [offset, mask] of cases) {
      const bytes = Buffer.from(original);
      bytes[offset]! ^= mask;
      await writeFile(path, bytes);
      await assertRefused(reader, `byte ${offset} of ${original.length} ^ 0x${mask.toString(16)}`);
    }
    // The other step was never touched, and the original bytes load again.
    assertSameState(await reader.loadCheckpoint(1), trainingState(1));
    await writeFile(path, original);
    assertSameState(await reader.loadCheckpoint(2), trainingState(2));
    await reader.close();
  });

  test("a digit flipped in createdAt or save.durableMs (still valid, still plausible) is refused by the checksum", async () => {
    const { dir, path, original } = await savedDir();
    const reader = new FileCheckpointManager({ checkpointDir: dir });
    const text = original.toString("utf8");
    for (const field of [/"createdAt": "\d{3}/, /"durableMs": \d/, /"bytesWritten": \d/]) {
      const at = text.search(field) + text.match(field)![0].length - 1;
      const bytes = Buffer.from(original);
      bytes[at] = bytes[at] === 0x31 ? 0x32 : 0x31; // another digit
      await writeFile(path, bytes);
      JSON.parse(bytes.toString("utf8")); // still a valid manifest to a parser
      const message = await assertRefused(reader, `a digit of ${String(field)}`);
      assert.match(message, /manifest\.json of step 2 is damaged: its checksum does not match its contents \(crc32:[0-9a-f]{8} recorded, crc32:[0-9a-f]{8} computed\)/);
    }
    await reader.close();
  });

  test("every truncation and an extension of any kind are refused", async () => {
    const { dir, path, original } = await savedDir();
    const reader = new FileCheckpointManager({ checkpointDir: dir });
    for (let length = 0; length < original.length; length++) {
      await writeFile(path, original.subarray(0, length));
      await assertRefused(reader, `cut to ${length} bytes`);
    }
    for (const tail of ["\n", " ", "\0", "x", "{}", original.toString("utf8")]) {
      await writeFile(path, Buffer.concat([original, Buffer.from(tail)]));
      await assertRefused(reader, `extended by ${JSON.stringify(tail.slice(0, 8))}`);
    }
    await reader.close();
  });

  test("an edit resealed only partly is refused: a version 2 without its checksum, a version 1 with one, a checksum not at the end", async () => {
    const { dir, path, original } = await savedDir();
    const fields = JSON.parse(original.toString("utf8")) as Record<string, unknown>;
    const { checksum, ...unsealed } = fields;
    const reader = new FileCheckpointManager({ checkpointDir: dir });
    await writeFile(path, `${JSON.stringify(unsealed, null, 2)}\n`);
    assert.match(await assertRefused(reader, "version 2 without checksum"), /does not end with its checksum/);
    await writeFile(path, original.toString("utf8").replace('"version": 2', '"version": 1'));
    assert.match(await assertRefused(reader, "version 2 relabelled 1"), /checksum does not match/);
    await writeFile(path, `${JSON.stringify({ checksum, ...unsealed, version: 1 }, null, 2)}\n`);
    assert.match(await assertRefused(reader, "version 1 with a checksum"), /a version-1 manifest has no checksum/);
    await writeFile(path, `${JSON.stringify({ checksum, ...unsealed }, null, 2)}\n`);
    assert.match(await assertRefused(reader, "checksum first"), /does not end with its checksum/);
    await writeFile(path, `${JSON.stringify({ ...unsealed, version: 0 }, null, 2)}\n`);
    assert.match(await assertRefused(reader, "version 0"), /version 0 is not a manifest version/);
    await writeFile(path, resealManifest(fields));
    assertSameState(await reader.loadCheckpoint(2), trainingState(2));
    await reader.close();
  });

  test("a manifest from a newer ckpt is refused as newer, not as damaged", async () => {
    const { dir, path, original } = await savedDir();
    const { checksum: _, ...fields } = JSON.parse(original.toString("utf8")) as Record<string, unknown>;
    const reader = new FileCheckpointManager({ checkpointDir: dir });
    await writeFile(path, `${JSON.stringify({ ...fields, version: 3, checksum: "sha256:…" }, null, 2)}\n`);
    assert.match(await assertRefused(reader, "version 3"), /version 3 is newer than this library understands \(2\); upgrade ckpt$/);
    await reader.close();
  });
});

describe("a version-1 manifest (no checksum, written before ckpt sealed them) is still read", () => {
  test("it lists, loads and verifies; retention rewriting it writes version 2, sealed", async () => {
    const { dir, path, original } = await savedDir();
    await writeFile(path, asVersion1Manifest(JSON.parse(original.toString("utf8")) as Record<string, unknown>));
    const listed = (await listCheckpointDirectory(dir)).checkpoints.find((c) => c.stepNr === 2);
    assert.equal(listed?.status, "committed", listed?.problem);
    assert.equal((await verifyCheckpoints(dir, { stepNr: 2 })).sound, true);
    const manager = new FileCheckpointManager({ checkpointDir: dir });
    assertSameState(await manager.loadCheckpoint(2), trainingState(2));
    await manager.deleteCheckpoint(2, { preserveModel: true });
    const rewritten = await readFile(path, "utf8");
    assert.match(rewritten, /"version": 2,/);
    assert.match(rewritten, /,\n {2}"checksum": "crc32:[0-9a-f]{8}"\n\}\n$/);
    assert.deepEqual(Object.keys(await manager.loadModel(2)), Object.keys(trainingState(2).model as object));
    await manager.close();
  });

  test("its field checks still apply: a createdAt that is no time is refused", async () => {
    const { dir, path, original } = await savedDir();
    const fields = JSON.parse(original.toString("utf8")) as Record<string, unknown>;
    await writeFile(path, asVersion1Manifest({ ...fields, createdAt: String(fields.createdAt).replace(/^2/, "e") }));
    const reader = new FileCheckpointManager({ checkpointDir: dir });
    assert.match(await assertRefused(reader, "version 1, createdAt damaged"), /createdAt "e\d{3}-/);
    await reader.close();
  });
});

describe("ckpt verify", () => {
  before(() => {
    assert.ok(existsSync(CLI), "dist/cli/main.js is missing: run `npm run build` (npm test does) first");
  });

  test("reports a manifest edited after it was sealed as damaged, naming manifest.json", async () => {
    const { dir, path, original } = await savedDir();
    // A plausible edit that keeps the old checksum: a later createdAt (retention by age reads it).
    await writeFile(path, original.toString("utf8").replace(/"createdAt": "(\d{3})\d/, (_, century: string) => `"createdAt": "${century}9`));
    assert.notDeepEqual(await readFile(path), original);
    const run = spawnSync(process.execPath, [CLI, "verify", dir], { encoding: "utf8", env: { ...process.env, CKPT_DEBUG: "" } });
    assert.equal(run.status, 1, run.stdout + run.stderr);
    assert.match(run.stdout, /^step_2: DAMAGED\n {2}manifest\.json: manifest\.json of step 2 is damaged: its checksum does not match its contents \(crc32:[0-9a-f]{8} recorded, crc32:[0-9a-f]{8} computed\); the other files are only parsed$/m);
    assert.match(run.stdout, /^step_1: sound/m);
  });
});
