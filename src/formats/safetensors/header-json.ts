import { FormatError } from "../../errors.js";

/**
 * A strict JSON reader for safetensors headers. `JSON.parse` is not used because it keeps the last
 * of two equal keys silently and lists integer-like keys ("0", "10") first, and a header must be
 * read exactly as written: a duplicate key is an error, and key order is the file's.
 */
export type JsonNode =
  | { kind: "object"; entries: [string, JsonNode][] }
  | { kind: "array"; items: JsonNode[] }
  | { kind: "string"; value: string }
  /** The number's text as written: offsets may exceed 2^53, so the caller decides how to read it. */
  | { kind: "number"; text: string }
  | { kind: "literal"; value: boolean | null };

/** A header has three levels (tensors, their fields, shapes); deeper nesting is refused, not recursed into. */
const MAX_DEPTH = 16;

const NUMBER = /-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?/y;

/** How errors name the document and start their codes: a safetensors header by default. */
export interface JsonSubject {
  /** e.g. "the header", "the index". */
  name: string;
  /** e.g. "SAFETENSORS" gives SAFETENSORS_JSON and SAFETENSORS_DUPLICATE. */
  codePrefix: string;
}

export function parseHeaderJson(text: string, subject: JsonSubject = { name: "the header", codePrefix: "SAFETENSORS" }): JsonNode {
  let position = 0;

  const fail = (what: string): never => {
    throw new FormatError(`${subject.codePrefix}_JSON`, `${subject.name} is not valid JSON: ${what} at character ${position}`);
  };
  const skipSpace = (): void => {
    while (position < text.length) {
      const c = text.charCodeAt(position);
      if (c !== 0x20 && c !== 0x0a && c !== 0x0d && c !== 0x09) break;
      position++;
    }
  };

  const parseString = (): string => {
    // position is at the opening quote
    position++;
    let out = "";
    let start = position;
    for (;;) {
      if (position >= text.length) fail("unterminated string");
      const c = text.charCodeAt(position);
      if (c === 0x22) break;
      if (c < 0x20) fail("control character in a string");
      if (c !== 0x5c) {
        position++;
        continue;
      }
      out += text.slice(start, position);
      const escape = text[position + 1];
      position += 2;
      switch (escape) {
        case '"': out += '"'; break;
        case "\\": out += "\\"; break;
        case "/": out += "/"; break;
        case "b": out += "\b"; break;
        case "f": out += "\f"; break;
        case "n": out += "\n"; break;
        case "r": out += "\r"; break;
        case "t": out += "\t"; break;
        case "u": {
          const hex = text.slice(position, position + 4);
          if (!/^[0-9a-fA-F]{4}$/.test(hex)) fail("bad \\u escape");
          out += String.fromCharCode(Number.parseInt(hex, 16));
          position += 4;
          break;
        }
        default:
          fail("bad escape in a string");
      }
      start = position;
    }
    out += text.slice(start, position);
    position++; // closing quote
    return out;
  };

  const parseValue = (depth: number): JsonNode => {
    if (depth > MAX_DEPTH) fail(`nesting deeper than ${MAX_DEPTH} levels`);
    skipSpace();
    const c = text[position];
    if (c === "{") {
      position++;
      const entries: [string, JsonNode][] = [];
      const seen = new Set<string>();
      skipSpace();
      if (text[position] === "}") {
        position++;
        return { kind: "object", entries };
      }
      for (;;) {
        skipSpace();
        if (text[position] !== '"') fail("expected a key");
        const key = parseString();
        if (seen.has(key)) throw new FormatError(`${subject.codePrefix}_DUPLICATE`, `${subject.name} has the key ${JSON.stringify(key)} twice`);
        seen.add(key);
        skipSpace();
        if (text[position] !== ":") fail("expected ':'");
        position++;
        entries.push([key, parseValue(depth + 1)]);
        skipSpace();
        if (text[position] === ",") {
          position++;
          continue;
        }
        if (text[position] === "}") {
          position++;
          return { kind: "object", entries };
        }
        fail("expected ',' or '}'");
      }
    }
    if (c === "[") {
      position++;
      const items: JsonNode[] = [];
      skipSpace();
      if (text[position] === "]") {
        position++;
        return { kind: "array", items };
      }
      for (;;) {
        items.push(parseValue(depth + 1));
        skipSpace();
        if (text[position] === ",") {
          position++;
          continue;
        }
        if (text[position] === "]") {
          position++;
          return { kind: "array", items };
        }
        fail("expected ',' or ']'");
      }
    }
    if (c === '"') return { kind: "string", value: parseString() };
    for (const [word, value] of [["true", true], ["false", false], ["null", null]] as const) {
      if (text.startsWith(word, position)) {
        position += word.length;
        return { kind: "literal", value };
      }
    }
    NUMBER.lastIndex = position;
    const match = NUMBER.exec(text);
    if (match === null) return fail("unexpected character");
    position += match[0].length;
    return { kind: "number", text: match[0] };
  };

  const root = parseValue(0);
  skipSpace();
  if (position !== text.length) fail(`unexpected text after ${subject.name}'s value`);
  return root;
}
