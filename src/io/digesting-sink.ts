import { crc32 } from "../formats/crc32.js";
import type { ByteSink } from "../formats/byte-io.js";
import type { FileDigest } from "./tensor-io.js";
import { keepShape } from "../keep-shapes.js";

/** Passes bytes on to a sink while computing their size and CRC-32, so no second pass is needed. */
export class DigestingSink implements ByteSink {
  private size = 0;
  private crc = 0;

  constructor(private readonly sink: ByteSink) {}

  async write(chunk: Uint8Array): Promise<void> {
    this.crc = crc32(chunk, this.crc);
    this.size += chunk.byteLength;
    await this.sink.write(chunk);
  }

  expectBytes(total: number): void {
    this.sink.expectBytes?.(total);
  }

  get digest(): FileDigest {
    return { size: this.size, crc32: this.crc };
  }

  static {
    // The size and CRC pass 2^31 (a CRC-32 does half the time): doubles from the start (keep-shapes.ts).
    const kept = new DigestingSink({ write: async () => undefined });
    kept.size = kept.crc = 0.5;
    keepShape(kept);
  }
}
