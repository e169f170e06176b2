/**
 * Deterministic task sampling and workflow identities: pure functions of (seed, iteration), so a
 * replayed or resumed run samples exactly the same tasks.
 *
 * @module
 */

/** A 32-bit seeded PRNG (mulberry32); returns floats in [0, 1). */
export function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function mix(seed: number, iteration: number): number {
  let h = (seed ^ 0x9e3779b9) >>> 0;
  h = Math.imul(h ^ (iteration + 0x85ebca6b), 0xc2b2ae35) >>> 0;
  return (h ^ (h >>> 16)) >>> 0;
}

/**
 * Picks `k` record indices out of `n` for one iteration: an epoch-style shuffle, so every record is
 * used once before any repeats. Pure in (seed, iteration, n, k).
 *
 * @example
 * ```ts
 * sampleTasks(0, 3, 10, 2); // the same two indices every time
 * ```
 */
export function sampleTasks(seed: number, iteration: number, n: number, k: number): number[] {
  if (n <= 0) throw new Error(`Cannot sample tasks from an empty dataset (n = ${n})`);
  const out: number[] = [];
  for (let pos = iteration * k; out.length < k; pos++) {
    const epoch = Math.floor(pos / n);
    out.push(permutation(mix(seed, epoch), n)[pos % n]!);
  }
  return out;
}

/** A Fisher–Yates permutation of 0..n-1 from a seed. */
export function permutation(seed: number, n: number): number[] {
  const rand = prng(seed);
  const p = Array.from({ length: n }, (_, i) => i);
  for (let i = n - 1; i > 0; i--) {
    const j = Math.floor(rand() * (i + 1));
    [p[i], p[j]] = [p[j]!, p[i]!];
  }
  return p;
}
