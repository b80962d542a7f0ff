/**
 * Reads into a caller's buffer through small buffers the process reuses. On the VM measured, the
 * kernel's first write into a page the program had already touched cost as much as a fault
 * (reading 1 GiB into a filled buffer: 2.0 s, 2.0 s of CPU), while a read into a reused 16 MiB
 * buffer and a copy from there took 0.28 s (docs/design.md, "Reading into tensors the process
 * already has"). Where the kernel's write is cheap, the copy costs about 0.1 s of CPU per GiB and
 * runs while the next piece is read.
 */

/** Each read of a large target is cut into pieces of this size. */
export const STAGE_BYTES = 4 << 20;
/** Pieces of one read in flight at once: the copy of one runs while the others are read. */
const STAGES_PER_READ = 3;
/** Stages kept between reads (12 MiB at this size): enough for one read, warm for the next load. */
const KEPT_STAGES = STAGES_PER_READ;

const kept: Buffer[] = [];

function takeStage(): Buffer {
  return kept.pop() ?? Buffer.allocUnsafeSlow(STAGE_BYTES);
}

function returnStage(stage: Buffer): void {
  if (kept.length < KEPT_STAGES) kept.push(stage);
}

/** @internal The stages kept for the next read (test/staged-reads.test.ts: a read went through them). */
export function keptStages(): readonly Buffer[] {
  return kept;
}

/** Reads `length` bytes at `position` into `buffer` at `offset`; resolves with the bytes read (0 at the end). */
export type ReadAt = (buffer: Uint8Array, offset: number, length: number, position: number) => Promise<number>;

/**
 * Fills `target[0, length)` with the bytes at `position`, piece by piece through reused stages,
 * with STAGES_PER_READ pieces in flight. `readAt` may return fewer bytes than asked; a read that
 * returns none before `length` is done throws `ended`'s error.
 */
export async function readThroughStages(readAt: ReadAt, target: Uint8Array, position: number, length: number, ended: (at: number) => Error): Promise<void> {
  const inFlight: { stage: Buffer; offset: number; reading: Promise<number> }[] = [];
  let requested = 0;
  const fill = async (stage: Buffer, offset: number, pieceLength: number): Promise<number> => {
    let done = 0;
    while (done < pieceLength) {
      const bytesRead = await readAt(stage, done, pieceLength - done, position + offset + done);
      if (bytesRead === 0) throw ended(position + offset + done);
      done += bytesRead;
    }
    return done;
  };
  const request = (): void => {
    while (inFlight.length < STAGES_PER_READ && requested < length) {
      const stage = takeStage();
      const pieceLength = Math.min(STAGE_BYTES, length - requested);
      const reading = fill(stage, requested, pieceLength);
      reading.catch(() => undefined); // observed below, in order
      inFlight.push({ stage, offset: requested, reading });
      requested += pieceLength;
    }
  };
  try {
    request();
    while (inFlight.length > 0) {
      const { stage, offset, reading } = inFlight[0]!;
      const pieceLength = await reading;
      inFlight.shift();
      target.set(stage.subarray(0, pieceLength), offset);
      returnStage(stage);
      request();
    }
  } finally {
    // On an error, the reads under way end before their stages are reused or the file closed.
    const outcomes = await Promise.allSettled(inFlight.map((piece) => piece.reading));
    outcomes.forEach((_, i) => returnStage(inFlight[i]!.stage));
  }
}
