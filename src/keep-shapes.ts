// V8 forgets an object shape (a "map") once no object has it any more, and with it every function
// it optimized for that shape (`--trace-deopt` says "weak objects"). The objects of a save or a
// load (readers, the zip directory, the unpickler's state) all die when it ends, so each save and
// load used to start again in V8's baseline tier, recompiling what the last one had optimized:
// about a fifth of a load of many small tensors ran unoptimized even in a process that had
// loaded many times (docs/design.md, "Keeping optimized code between saves and loads"). One
// small instance of each such class, kept here for the life of the process, keeps its shape and
// that code. Functions called from hot code must likewise not be closures made per load: a dead
// closure discards the optimized code that called it the same way.

const kept: object[] = [];

/**
 * Keeps `instance` alive for the life of the process, and so the shape its class's instances
 * share. Give it fields of the kinds real instances hold (a number that may exceed 2^31 as a
 * fraction, so the field is a double from the start), or a real instance's shape would differ.
 */
export function keepShape(instance: object): void {
  kept.push(instance);
}

/** @internal The kept instances (test/kept-shapes.test.ts compares real instances' shapes with them). */
export function keptInstances(): readonly object[] {
  return kept;
}
