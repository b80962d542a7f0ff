/**
 * Tensor bytes are little-endian on disk and typed arrays use the host's order; every machine Node
 * runs training on is little-endian, so bytes are used as they are and a big-endian host is refused.
 */
export const HOST_IS_LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

/** Reverses each `itemSize`-byte element in place (for files written on big-endian machines). */
export function swapByteOrder(bytes: Uint8Array, itemSize: number): void {
  if (itemSize === 1) return;
  for (let i = 0; i + itemSize <= bytes.length; i += itemSize) {
    for (let a = i, b = i + itemSize - 1; a < b; a++, b--) {
      const t = bytes[a]!;
      bytes[a] = bytes[b]!;
      bytes[b] = t;
    }
  }
}
