/** The shape of fit-child.ts's run, shared with its tests: 16 batches per epoch, 96 steps in all. */
export const FIT_CHILD = { samples: 64, batchSize: 4, epochs: 6, everyBatches: 5 } as const;
