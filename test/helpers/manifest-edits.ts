/**
 * Deliberate edits of a committed step's manifest.json, for tests whose point is what the manager
 * makes of the edited fields. The manifest seals itself with a checksum of its bytes, so an edit
 * written back as plain JSON is refused as damaged before any field is looked at: these helpers
 * reseal it (as a writer of this version would have written it), or write it as version 1 did.
 */
import { readFile, writeFile } from "node:fs/promises";
import { encodeManifest, type Manifest } from "../../src/checkpoint/manifest.js";

type ManifestFields = Record<string, unknown>;

/** `fields` as the bytes of a sealed manifest of the current version. */
export function resealManifest(fields: ManifestFields): Uint8Array {
  return encodeManifest(fields as unknown as Manifest);
}

/** `fields` as ckpt wrote a version-1 manifest, before it sealed them: no checksum. */
export function asVersion1Manifest(fields: ManifestFields): string {
  const { checksum: _seal, ...rest } = fields;
  return `${JSON.stringify({ ...rest, version: 1 }, null, 2)}\n`;
}

/** Reads the manifest at `path`, lets `edit` change its fields, and writes it back resealed. */
export async function editManifest(path: string, edit: (fields: ManifestFields) => ManifestFields | void): Promise<void> {
  const fields = JSON.parse(await readFile(path, "utf8")) as ManifestFields;
  await writeFile(path, resealManifest(edit(fields) ?? fields));
}
