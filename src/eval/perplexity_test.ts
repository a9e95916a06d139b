import assert from "node:assert/strict";
import { NonFiniteError } from "../errors.ts";
import { nextTokenNll, windowsOf } from "./perplexity.ts";

Deno.test("windowsOf: non-overlapping windows, the partial last one dropped, at most maxWindows", () => {
  const ids = Array.from({ length: 10 }, (_, i) => i);
  assert.deepEqual(windowsOf(ids, 4), [[0, 1, 2, 3], [4, 5, 6, 7]]);
  assert.deepEqual(windowsOf(ids, 3, 2), [[0, 1, 2], [3, 4, 5]]);
  assert.deepEqual(windowsOf(ids, 11), []);
  assert.throws(() => windowsOf(ids, 1), RangeError);
});

Deno.test("nextTokenNll: cross-entropy of rows 0..T-2 against ids 1..T-1, as a naive log-softmax", () => {
  const V = 5;
  const ids = [1, 3, 0, 4];
  const logits = Float32Array.from({ length: ids.length * V }, (_, i) => Math.sin(i * 1.7) * 3 + (i % 3));
  let naive = 0;
  for (let r = 0; r < ids.length - 1; r++) {
    const row = Array.from(logits.subarray(r * V, (r + 1) * V));
    const z = row.reduce((a, x) => a + Math.exp(x), 0);
    naive += -Math.log(Math.exp(row[ids[r + 1]!]!) / z);
  }
  assert.ok(Math.abs(nextTokenNll(logits, ids, V) - naive) < 1e-9);
  // uniform logits: log V per scored token, the last row is not scored
  assert.ok(Math.abs(nextTokenNll(new Float32Array(4 * V), ids, V) - 3 * Math.log(V)) < 1e-12);
  // large logits do not overflow
  const big = new Float32Array(2 * V).fill(1e4);
  assert.ok(Math.abs(nextTokenNll(big, [0, 1], V) - Math.log(V)) < 1e-9);
  assert.throws(() => nextTokenNll(new Float32Array(3), ids, V), RangeError);
});

Deno.test("nextTokenNll: a NaN or an infinity in a scored row is a NonFiniteError naming its position", () => {
  const V = 4;
  const ids = [0, 1, 2];
  for (const bad of [NaN, Infinity, -Infinity]) {
    const logits = new Float32Array(3 * V);
    logits[1 * V + (bad === -Infinity ? 2 : 3)] = bad; // row 1; -inf only hurts as the target's logit
    assert.throws(() => nextTokenNll(logits, ids, V, 10), (e: Error) => {
      assert.ok(e instanceof NonFiniteError, String(e));
      assert.match(e.message, /^Non-finite logits \(NaN or infinity\) at position 11 of the ids/);
      return true;
    });
  }
  // the last row is not scored, and -inf elsewhere than the target is a probability of 0
  const logits = new Float32Array(3 * V);
  logits[2 * V] = NaN;
  logits[0 * V + 3] = -Infinity;
  assert.ok(Number.isFinite(nextTokenNll(logits, ids, V)));
});
