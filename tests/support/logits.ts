/** The parity tolerance shared by the tests that compare logits with transformers' references. */
import assert from "node:assert/strict";

/** Largest |a − b| and the tolerance 1e-3 × max(1, max|b|). */
export function logitError(actual: Float32Array, expected: Float32Array): { err: number; tol: number } {
  assert.equal(actual.length, expected.length, "logits length");
  let err = 0;
  let max = 0;
  for (let i = 0; i < expected.length; i++) {
    err = Math.max(err, Math.abs(actual[i]! - expected[i]!));
    max = Math.max(max, Math.abs(expected[i]!));
  }
  return { err, tol: 1e-3 * Math.max(1, max) };
}
