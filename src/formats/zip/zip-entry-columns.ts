import { keepShape } from "../../keep-shapes.js";

/**
 * The entries written, column by column in typed arrays: no object per entry, and nothing the
 * garbage collector copies as the columns grow (archives hold tens of thousands of entries).
 */
export class EntryColumns {
  count = 0;
  /** The number of a numbered entry, or -1 for one named by a string (in `named`). */
  numbers = new Float64Array(256);
  crcs = new Uint32Array(256);
  sizes = new Float64Array(256);
  offsets = new Float64Array(256);
  readonly named = new Map<number, string>();

  push(name: string | number, crc: number, size: number, offset: number): void {
    if (this.count === this.crcs.length) this.grow();
    const i = this.count++;
    if (typeof name === "number") {
      this.numbers[i] = name;
    } else {
      this.numbers[i] = -1;
      this.named.set(i, name);
    }
    this.crcs[i] = crc;
    this.sizes[i] = size;
    this.offsets[i] = offset;
  }

  private grow(): void {
    const grown = <T extends Float64Array | Uint32Array>(column: T, make: (n: number) => T): T => {
      const next = make(column.length * 2);
      next.set(column);
      return next;
    };
    this.numbers = grown(this.numbers, (n) => new Float64Array(n));
    this.crcs = grown(this.crcs, (n) => new Uint32Array(n));
    this.sizes = grown(this.sizes, (n) => new Float64Array(n));
    this.offsets = grown(this.offsets, (n) => new Float64Array(n));
  }

  static {
    keepShape(new EntryColumns());
  }
}
