import type { Readable, Writable } from "node:stream";
import { StringDecoder } from "node:string_decoder";

/**
 * A line longer than this is passed on in pieces, each with the prefix: a worker that writes
 * without newlines (a progress bar with \r) must not make the launcher buffer without bound.
 */
const MAX_LINE_LENGTH = 64 * 1024;

/**
 * Copies the lines of several sources to one target, each line prefixed (`[rank 3] `), whole
 * lines only so lines of different workers never mix. A slow target pauses every source.
 */
export class PrefixedOutput {
  private readonly paused = new Set<Readable>();

  constructor(private readonly target: Writable) {}

  /** Resolves when `source` has ended (its last, unterminated line is written with a newline). */
  add(source: Readable, prefix: string): Promise<void> {
    const decoder = new StringDecoder("utf8");
    let partial = "";
    const write = (text: string): void => {
      partial += text;
      let newline: number;
      while ((newline = partial.indexOf("\n")) >= 0 || partial.length >= MAX_LINE_LENGTH) {
        const end = newline >= 0 ? newline : MAX_LINE_LENGTH;
        this.emit(source, `${prefix}${partial.slice(0, end)}\n`);
        partial = partial.slice(newline >= 0 ? end + 1 : end);
      }
    };
    source.on("data", (chunk: Buffer) => write(decoder.write(chunk)));
    return new Promise((resolve) => {
      const finish = (): void => {
        write(decoder.end());
        if (partial !== "") this.emit(source, `${prefix}${partial}\n`);
        partial = "";
        resolve();
      };
      source.once("end", finish);
      // A destroyed stream (the launcher giving up on a worker's pipes) never emits "end".
      source.once("close", () => {
        if (partial !== "") finish();
        else resolve();
      });
    });
  }

  private emit(source: Readable, text: string): void {
    if (this.target.write(text)) return;
    source.pause();
    this.paused.add(source);
    if (this.paused.size === 1) {
      this.target.once("drain", () => {
        for (const s of this.paused) s.resume();
        this.paused.clear();
      });
    }
  }
}
