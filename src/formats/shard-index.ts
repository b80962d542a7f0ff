import { FormatError } from "../errors.js";
import { parseHeaderJson, type JsonNode } from "./safetensors/header-json.js";

/**
 * The index of a model published in shards (Hugging Face's `model.safetensors.index.json`,
 * `pytorch_model.bin.index.json`): `{"metadata": {...}, "weight_map": {<tensor name>: <shard file>}}`,
 * shard files named relative to the index's directory.
 */
export interface ShardIndex {
  /** Tensor name → shard file, in the index's order. */
  weightMap: Map<string, string>;
  /** The shard files, each once, in the order the weight map first names them. */
  shards: string[];
  /** `metadata`'s entries as text (e.g. `total_size`); empty without one. */
  metadata: Map<string, string>;
}

/**
 * An index lists names and file names only: a few megabytes for the largest models published. More
 * than this is not an index; it is refused before it is read.
 */
export const MAX_INDEX_BYTES = 100_000_000;

/** Whether a path names a shard index (`*.index.json`) rather than a tensor file. */
export function isShardIndexPath(path: string): boolean {
  return path.endsWith(".index.json");
}

/**
 * Parses an index strictly: the JSON reader of safetensors headers (a key given twice — a tensor
 * listed for two shards — is an error, not silently the last one), a `weight_map` of strings, and
 * shard names that stay inside the index's directory.
 */
export function parseShardIndex(bytes: Uint8Array): ShardIndex {
  let text: string;
  try {
    text = new TextDecoder("utf-8", { fatal: true }).decode(bytes);
  } catch (error) {
    throw new FormatError("INDEX_JSON", "the index is not valid UTF-8", { cause: error });
  }
  let root: JsonNode;
  try {
    root = parseHeaderJson(text, { name: "the index", codePrefix: "INDEX" });
  } catch (error) {
    if (error instanceof FormatError && error.code === "INDEX_DUPLICATE") {
      throw new FormatError("INDEX_DUPLICATE", `${error.message}: a tensor can be in one shard only`, { cause: error });
    }
    throw error;
  }
  if (root.kind !== "object") throw new FormatError("INDEX_JSON", "the index is not a JSON object");
  const weightMapNode = root.entries.find(([key]) => key === "weight_map")?.[1];
  if (weightMapNode?.kind !== "object") throw new FormatError("INDEX_JSON", 'the index has no "weight_map" object mapping tensor names to shard files');
  const weightMap = new Map<string, string>();
  const shards = new Set<string>();
  for (const [name, shard] of weightMapNode.entries) {
    if (shard.kind !== "string") throw new FormatError("INDEX_JSON", `the weight map gives tensor ${JSON.stringify(name)} a shard that is not a file name`);
    if (!shards.has(shard.value)) checkShardName(shard.value);
    weightMap.set(name, shard.value);
    shards.add(shard.value);
  }
  const metadata = new Map<string, string>();
  const metadataNode = root.entries.find(([key]) => key === "metadata")?.[1];
  if (metadataNode?.kind === "object") {
    for (const [key, value] of metadataNode.entries) {
      if (value.kind === "string") metadata.set(key, value.value);
      else if (value.kind === "number") metadata.set(key, value.text);
    }
  }
  return { weightMap, shards: [...shards], metadata };
}

/** A shard is a file beside the index (or below it): never an absolute path or one with "..". */
function checkShardName(name: string): void {
  const parts = name.split("/");
  if (name === "" || name.startsWith("/") || name.includes("\\") || name.includes("\0") || parts.some((part) => part === ".." || part === "." || part === "")) {
    throw new FormatError("INDEX_SHARD_NAME", `the shard name ${JSON.stringify(name)} does not name a file inside the index's directory`);
  }
  // A shard that is itself an index would be followed, and could lead back here.
  if (isShardIndexPath(name)) throw new FormatError("INDEX_SHARD_NAME", `the shard name ${JSON.stringify(name)} names another index, not a tensor file`);
}
