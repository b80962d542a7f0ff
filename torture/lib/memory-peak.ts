/**
 * The peak growth of ArrayBuffer memory (where tensor bytes and I/O buffers live) while an async
 * operation runs, sampled every millisecond the event loop is free and once at the end: the
 * "peak memory" figures of the torture classes, as a ratio to the bytes the operation handles.
 */
export async function arrayBufferPeak<T>(operation: () => Promise<T>): Promise<{ value: T; peakBytes: number }> {
  const base = process.memoryUsage().arrayBuffers;
  let peak = 0;
  const sample = (): void => {
    peak = Math.max(peak, process.memoryUsage().arrayBuffers - base);
  };
  const timer = setInterval(sample, 1);
  try {
    const value = await operation();
    sample();
    return { value, peakBytes: peak };
  } finally {
    clearInterval(timer);
  }
}
