/**
 * A small seeded generator (mulberry32): every random choice of the campaign comes from one, so a
 * printed seed replays the same choices. Not for anything secret.
 */
export class Random {
  private state: number;

  constructor(seed: number) {
    this.state = seed >>> 0;
  }

  /** A float in [0, 1). */
  next(): number {
    this.state = (this.state + 0x6d2b79f5) >>> 0;
    let t = this.state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }

  /** An integer in [0, n). */
  int(n: number): number {
    return Math.floor(this.next() * n);
  }

  /** An integer in [low, high]. */
  between(low: number, high: number): number {
    return low + this.int(high - low + 1);
  }

  pick<T>(items: readonly T[]): T {
    if (items.length === 0) throw new Error("pick from an empty list");
    return items[this.int(items.length)]!;
  }

  chance(p: number): boolean {
    return this.next() < p;
  }

  /** A seed for a sub-task, so each case can be replayed on its own. */
  fork(): number {
    return Math.floor(this.next() * 2 ** 31);
  }
}

/** A class's own seed, derived from the campaign's seed and the class's name. */
export function deriveSeed(seed: number, name: string): number {
  let hash = seed >>> 0;
  for (let i = 0; i < name.length; i++) hash = Math.imul(hash ^ name.charCodeAt(i), 0x01000193) >>> 0;
  return hash;
}

/** A counter of cases by kind, as ClassResult.cases wants it. */
export function countCase(cases: Record<string, number>, kind: string): void {
  cases[kind] = (cases[kind] ?? 0) + 1;
}
