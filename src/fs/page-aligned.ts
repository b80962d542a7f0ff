/** The part of WebAssembly's API used here: the TypeScript libraries this project builds with lack it. */
declare const WebAssembly: { Memory: new (descriptor: { initial: number; maximum: number }) => { buffer: ArrayBuffer } };

/** WebAssembly's page: its memory is mapped in whole pages of this size. */
const WASM_PAGE_BYTES = 65536;

/**
 * A buffer of `bytes` whose memory starts on a page boundary where that can be had. An O_DIRECT
 * write from memory aligned to 512 bytes but not to a page took 5.5× as long as from page-aligned
 * memory on the VM this was built on (docs/design.md, "Saving around the page cache"). Node.js
 * cannot align a buffer, and glibc starts large allocations 16 bytes past a page; WebAssembly
 * memory is mapped a page at a time, so it starts on one. Where that memory cannot be had (an
 * address-space limit: V8 reserves several GiB of addresses for each), an ordinary buffer.
 */
export function pageAlignedBuffer(bytes: number): Buffer {
  return pageAlignedMemory(bytes) ?? Buffer.allocUnsafeSlow(bytes);
}

/** As pageAlignedBuffer, but undefined where page-aligned memory cannot be had. */
export function pageAlignedMemory(bytes: number): Buffer | undefined {
  const pages = Math.ceil(bytes / WASM_PAGE_BYTES);
  if (wasmMemoryRefused) return undefined;
  try {
    return Buffer.from(new WebAssembly.Memory({ initial: pages, maximum: pages }).buffer, 0, bytes);
  } catch {
    // Not tried again: a refusal costs V8 up to three full garbage collections, on every block.
    wasmMemoryRefused = true;
    return undefined;
  }
}

/** Set once WebAssembly memory was refused (an address-space limit, or `--no-expose-wasm`). */
let wasmMemoryRefused = false;
