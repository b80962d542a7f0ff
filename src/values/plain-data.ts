import { InvalidArgumentError } from "../errors.js";
import { describeValue, formatKeyPath, type KeySegment } from "./key-path.js";
import { MAX_NESTING } from "./state-check.js";

/**
 * Checks that `value` is plain data that YAML (and JSON) can hold and give back: null, booleans,
 * numbers, bigints, strings, arrays and plain objects, nested at most `MAX_NESTING` deep and
 * without cycles. An object property whose value is `undefined` is left out when written, as
 * `JSON.stringify` does, so it is allowed; anything else (a function, a symbol, `undefined` in an
 * array, a Map, a Date, a class instance, a tensor) is an InvalidArgumentError naming its key path,
 * e.g. `config.layers[2].activation is a function, …`. Iterative: no input can overflow the stack.
 *
 * @example
 * checkPlainData({ dim: 512, act: Math.tanh }, "config"); // throws: config.act is a function, …
 */
export function checkPlainData(value: unknown, root = "config"): void {
  interface Frame {
    container: object;
    segment: KeySegment;
    children: [KeySegment, unknown][];
    index: number;
  }
  const frames: Frame[] = [];
  const onPath = new Set<object>();
  const fail = (segment: KeySegment | undefined, problem: string): never => {
    const path = frames.slice(1).map((frame) => frame.segment); // the root frame has no segment
    if (segment !== undefined) path.push(segment);
    throw new InvalidArgumentError(`${formatKeyPath(root, path)} ${problem}`);
  };
  const visit = (item: unknown, segment: KeySegment | undefined, inArray: boolean): void => {
    switch (typeof item) {
      case "number":
      case "bigint":
      case "boolean":
      case "string":
        return;
      case "undefined":
        if (inArray) fail(segment, "is undefined, which YAML cannot hold (use null)");
        return; // an object property: left out, like JSON.stringify
      case "object":
        if (item === null) return;
        break;
      default:
        fail(segment, `is ${describeValue(item)}, which is not plain data (null, a boolean, number, string, array or plain object)`);
    }
    const object = item as object;
    const isArray = Array.isArray(object);
    const prototype = Object.getPrototypeOf(object) as object | null;
    if (!isArray && prototype !== Object.prototype && prototype !== null) {
      const hint = object instanceof Map ? ": use a plain object" : object instanceof Date ? ": use a string, e.g. date.toISOString()" : ": copy its fields into a plain object ({ ...value })";
      fail(segment, `is ${describeValue(object)}, which is not plain data${hint}`);
    }
    if (onPath.has(object)) fail(segment, "contains itself, which YAML cannot hold as plain data");
    if (frames.length >= MAX_NESTING) fail(segment, `is nested deeper than ${MAX_NESTING} levels`);
    onPath.add(object);
    const children: [KeySegment, unknown][] = [];
    if (isArray) for (let i = 0; i < (object as unknown[]).length; i++) children.push([i, (object as unknown[])[i]]); // holes too
    else for (const key of Object.keys(object)) children.push([key, (object as Record<string, unknown>)[key]]);
    frames.push({ container: object, segment, children, index: 0 });
  };

  visit(value, undefined, false);
  while (frames.length > 0) {
    const frame = frames[frames.length - 1]!;
    if (frame.index >= frame.children.length) {
      frames.pop();
      onPath.delete(frame.container);
      continue;
    }
    const [segment, child] = frame.children[frame.index++]!;
    visit(child, segment, Array.isArray(frame.container));
  }
}
