/**
 * Every fault class `npm run torture` and test/torture-quick.test.ts run, in order.
 * A class is added here by one import and one entry (no directory scanning: the list is explicit).
 */
import type { FaultClass } from "../types.js";
import { badCalls } from "./bad-calls.js";
import { corruption } from "./corruption.js";
import { concurrency } from "./concurrency.js";
import { crashAnywhere } from "./crash-anywhere.js";

export interface RegisteredClass {
  /** The name `--only` accepts, and the class's file name in torture/classes/. */
  id: string;
  run: FaultClass;
  /** Its share of the time budget relative to the others (default 1): process-heavy classes get more. */
  weight?: number;
}

export const faultClasses: RegisteredClass[] = [
  { id: "crash-anywhere", run: crashAnywhere, weight: 3 },
  { id: "corruption", run: corruption },
  { id: "concurrency", run: concurrency },
  { id: "bad-calls", run: badCalls, weight: 0.5 },
];
