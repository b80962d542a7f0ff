/**
 * Byte mutations of a valid file, drawn from a seeded generator: bit flips, byte inserts and
 * deletions, chunk splices (from the file itself or another seed), truncation, and boundary values
 * written over fields that look like lengths or offsets (a little-endian number no larger than the
 * file, the kind a reader trusts to allocate or seek).
 */
export const MUTATION_KINDS = ["bit flips", "byte insert", "byte delete", "chunk splice", "truncate", "length field boundary"] as const;
export type MutationKind = (typeof MUTATION_KINDS)[number];

const BOUNDARIES_32 = [0, 1, 0x7f, 0x80, 0xff, 0x7fff, 0x8000, 0xffff, 0x7fffffff, 0x80000000, 0xffffffff, 0xfffffffe];

export function mutate(bytes: Uint8Array, kind: MutationKind, random: () => number, other: Uint8Array): { bytes: Uint8Array; what: string } {
  const at = (n: number): number => Math.floor(random() * n);
  const out = Buffer.from(bytes);
  switch (kind) {
    case "bit flips": {
      const flips = 1 + at(4);
      const where: number[] = [];
      for (let i = 0; i < flips && out.length > 0; i++) {
        const byte = at(out.length);
        out[byte]! ^= 1 << at(8);
        where.push(byte);
      }
      return { bytes: out, what: `bits flipped at ${where.join(",")}` };
    }
    case "byte insert": {
      const position = at(out.length + 1);
      const inserted = Buffer.from(Array.from({ length: 1 + at(8) }, () => at(256)));
      return { bytes: Buffer.concat([out.subarray(0, position), inserted, out.subarray(position)]), what: `${inserted.length} bytes inserted at ${position}` };
    }
    case "byte delete": {
      const position = at(out.length);
      const count = 1 + at(16);
      return { bytes: Buffer.concat([out.subarray(0, position), out.subarray(position + count)]), what: `${count} bytes deleted at ${position}` };
    }
    case "chunk splice": {
      const source = random() < 0.5 ? out : Buffer.from(other);
      const from = at(source.length);
      const length = 1 + at(Math.min(256, source.length - from));
      const to = at(out.length);
      const chunk = Buffer.from(source.subarray(from, from + length));
      const replace = random() < 0.5;
      const spliced = Buffer.concat([out.subarray(0, to), chunk, out.subarray(replace ? to + length : to)]);
      return { bytes: spliced, what: `${length} bytes from ${source === out ? "itself" : "another seed"} at ${from} ${replace ? "written over" : "inserted at"} ${to}` };
    }
    case "truncate": {
      const length = at(out.length);
      return { bytes: out.subarray(0, length), what: `truncated to ${length} bytes` };
    }
    case "length field boundary": {
      // Fields whose current value could be a length or offset into this file.
      const candidates: { offset: number; width: 2 | 4 | 8 }[] = [];
      for (let i = 0; i + 8 <= out.length; i++) {
        const v32 = out.readUInt32LE(i);
        if (v32 > 0 && v32 <= out.length) candidates.push({ offset: i, width: 4 });
        if (i % 2 === 0 && out.readUInt16LE(i) > 8 && out.readUInt16LE(i) <= out.length) candidates.push({ offset: i, width: 2 });
        if (out.readBigUInt64LE(i) > 0n && out.readBigUInt64LE(i) <= BigInt(out.length)) candidates.push({ offset: i, width: 8 });
      }
      const field = candidates.length > 0 ? candidates[at(candidates.length)]! : { offset: at(Math.max(1, out.length - 8)), width: 4 as const };
      const value = BOUNDARIES_32[at(BOUNDARIES_32.length)]!;
      if (field.offset + field.width > out.length) return { bytes: out, what: "file too short for a field" };
      if (field.width === 2) out.writeUInt16LE(value & 0xffff, field.offset);
      else if (field.width === 4) out.writeUInt32LE(value >>> 0, field.offset);
      else out.writeBigUInt64LE(random() < 0.5 ? BigInt(value) : 0xffffffffffffffffn - BigInt(at(2)), field.offset);
      return { bytes: out, what: `${field.width * 8}-bit field at ${field.offset} set to ${value}` };
    }
  }
}
