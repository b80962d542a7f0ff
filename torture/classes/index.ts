/**
 * Every fault class `npm run torture` and test/torture-quick.test.ts run, in order.
 * A class is added here by one import and one entry (no directory scanning: the list is explicit).
 */
import type { FaultClass } from "../types.js";
import { badCalls } from "./bad-calls.js";
import { concurrency } from "./concurrency.js";
import { corruption } from "./corruption.js";
import { corruptionS3 } from "./corruption-s3.js";
import { crashAnywhere } from "./crash-anywhere.js";
import { crashS3 } from "./crash-s3.js";
import { diskFull } from "./disk-full.js";
import { hostileInput } from "./hostile-input.js";
import { powerLoss } from "./power-loss.js";

export interface RegisteredClass {
  /** The name `--only` accepts, and the class's file name in torture/classes/. */
  id: string;
  run: FaultClass;
  /** Its share of the time budget relative to the others (default 1): process-heavy classes get more. */
  weight?: number;
}

/** In the order (1 to 7). */
export const faultClasses: RegisteredClass[] = [
  { id: "crash-anywhere", run: crashAnywhere, weight: 3 },
  { id: "crash-s3", run: crashS3, weight: 1 },
  { id: "power-loss", run: powerLoss },
  { id: "disk-full", run: diskFull },
  { id: "corruption", run: corruption },
  { id: "corruption-s3", run: corruptionS3, weight: 0.5 },
  { id: "hostile-input", run: hostileInput },
  { id: "concurrency", run: concurrency },
  { id: "bad-calls", run: badCalls, weight: 0.5 },
];

/** The classes alone, in the same order. */
export const FAULT_CLASSES: FaultClass[] = faultClasses.map((entry) => entry.run);
