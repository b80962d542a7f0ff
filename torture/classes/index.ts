/**
 * Every fault class `npm run torture` and test/torture-quick.test.ts run, in order.
 * A class is added here by one import and one entry (no directory scanning: the list is explicit).
 */
import type { FaultClass } from "../types.js";

export interface RegisteredClass {
  /** The name `--only` accepts, and the class's file name in torture/classes/. */
  id: string;
  run: FaultClass;
}

export const faultClasses: RegisteredClass[] = [];
