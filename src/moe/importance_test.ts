import assert from "node:assert/strict";
import { expertNorms, Importance } from "./importance.ts";

/** GPU statistics for one layer of `E` experts: (chosen, Σ‖x‖·G, hits, 0) per expert. */
function stats(rows: [number, number, number][]): Float32Array {
  return Float32Array.from(rows.flatMap(([c, m, h]) => [c, m, h, 0]));
}

Deno.test("importance: mass decays by decay^tokens per batch, usage and hits accumulate", () => {
  const imp = new Importance(1, 3, 0.5, [Float64Array.from([1, 2, 1])]);
  imp.add(stats([[2, 4, 2], [1, 1, 0], [0, 0, 0]]), 1);
  assert.deepEqual([...imp.mass[0]!], [4, 1, 0]);
  imp.add(stats([[0, 0, 0], [1, 2, 1], [1, 8, 1]]), 2); // old mass × 0.5²
  assert.deepEqual([...imp.mass[0]!], [1, 2.25, 8]);
  assert.deepEqual([...imp.usage[0]!], [2, 2, 1]);
  assert.equal(imp.choices, 5);
  assert.equal(imp.hitRate, 4 / 5);
  // score = mass × ‖E‖
  assert.deepEqual([...imp.score(0)], [1, 4.5, 8]);
  assert.deepEqual(imp.scores().map((s) => [...s]), [[1, 4.5, 8]]);
});

Deno.test("importance: hit rate is 1 before any token, decay 1 keeps the plain sum", () => {
  const imp = new Importance(2, 2, 1, [Float64Array.from([1, 1]), Float64Array.from([1, 1])]);
  assert.equal(imp.hitRate, 1);
  imp.add(Float32Array.from([1, 3, 1, 0, 0, 0, 0, 0, 1, 1, 0, 0, 0, 0, 0, 0]), 10);
  imp.add(Float32Array.from([1, 3, 1, 0, 0, 0, 0, 0, 1, 1, 0, 0, 0, 0, 0, 0]), 10);
  assert.deepEqual([...imp.mass[0]!], [6, 0]);
  assert.deepEqual([...imp.mass[1]!], [2, 0]);
  assert.equal(imp.hitRate, 0.5);
});

Deno.test("expertNorms: the Frobenius norm over every matrix of an expert, from bf16 bytes", () => {
  const bf16 = (values: number[]): Uint8Array<ArrayBuffer> => {
    const f = Float32Array.from(values);
    const u = new Uint32Array(f.buffer);
    return new Uint8Array(Uint16Array.from(u, (w) => w >>> 16).buffer);
  };
  // expert 0: a 2×2 matrix of 1s and a 2×2 of 2s: √(4 + 16); expert 1: zeros and one 3: 3
  const whole = (b: Uint8Array<ArrayBuffer>) => [{ at: 0, bytes: b }];
  const store = {
    expert: (_l: number, e: number) =>
      e === 0
        ? [whole(bf16([1, 1, 1, 1])), whole(bf16([2, 2, 2, 2]))]
        : [whole(bf16([0, 0, 0, 0])), whole(bf16([0, 3, 0, 0]))],
  };
  const matrices = [{ name: "a", rows: 2, cols: 2 }, { name: "b", rows: 2, cols: 2 }];
  const [norms] = expertNorms(store, 1, 2, matrices);
  assert.ok(Math.abs(norms![0]! - Math.sqrt(20)) < 1e-9);
  assert.equal(norms![1], 3);
});
