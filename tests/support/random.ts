/**
 * What the kernel tests draw their inputs from: a seeded uniform source in [−0.5, 0.5) and bf16
 * rounding (to nearest even, as torch rounds).
 *
 * @module
 */

/** A seeded linear congruential source of numbers in [−0.5, 0.5). */
export function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s * 1664525 + 1013904223) >>> 0;
    return s / 2 ** 32 - 0.5;
  };
}

/** bf16 bits of x (round to nearest even) and the value they hold. */
export function bf16(x: number): [number, number] {
  const f = new Float32Array([x]);
  const u = new Uint32Array(f.buffer);
  const bits = ((u[0]! + 0x7fff + ((u[0]! >>> 16) & 1)) >>> 16) & 0xffff;
  u[0] = bits << 16;
  return [bits, f[0]!];
}
