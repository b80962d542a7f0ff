import type { FaultClass } from "../types.js";
import { diskFull } from "./disk-full.js";
import { hostileInput } from "./hostile-input.js";
import { powerLoss } from "./power-loss.js";

/** The fault classes `npm run torture` runs, in order. */
export const FAULT_CLASSES: FaultClass[] = [powerLoss, diskFull, hostileInput];
