/**
 * YaRN's rotary table against the formulas of the YaRN paper as transformers' `_compute_yarn_parameters`
 * writes them, recomputed here in f64 (independently of the implementation), for gpt-oss-20b's published
 * parameters and for the tiny fixture's.
 */
import assert from "node:assert/strict";
import { ropeTable, yarnInvFreq, type YarnRope, yarnRopeTable } from "./attention.ts";

/** gpt-oss-20b's `rope_scaling` (config.json as published) with θ = 150000, head_dim 64. */
const GPT_OSS_20B: YarnRope = {
  factor: 32,
  betaFast: 32,
  betaSlow: 1,
  originalMaxPositionEmbeddings: 4096,
  truncate: false,
  attentionFactor: 0.1 * Math.log(32) + 1,
};

/** Inverse frequencies in f64, straight from the formulas. */
function expectedInvFreq(dim: number, base: number, y: YarnRope): number[] {
  const corr = (r: number) =>
    (dim * Math.log(y.originalMaxPositionEmbeddings / (r * 2 * Math.PI))) / (2 * Math.log(base));
  let [low, high] = [corr(y.betaFast), corr(y.betaSlow)];
  if (y.truncate) [low, high] = [Math.floor(low), Math.ceil(high)];
  [low, high] = [Math.max(low, 0), Math.min(high, dim - 1)];
  return Array.from({ length: dim / 2 }, (_, i) => {
    const extrapolated = base ** (-(2 * i) / dim);
    const ramp = Math.min(1, Math.max(0, (i - low) / (high - low)));
    return extrapolated * ramp / y.factor + extrapolated * (1 - ramp);
  });
}

function assertRelClose(got: ArrayLike<number>, want: ArrayLike<number>, tol: number, what: string): void {
  assert.equal(got.length, want.length, `${what}: length`);
  for (let i = 0; i < want.length; i++) {
    const err = Math.abs(got[i]! - want[i]!) / Math.max(Math.abs(want[i]!), 1e-30);
    assert.ok(err <= tol, `${what}[${i}]: ${got[i]} vs ${want[i]} (relative error ${err})`);
  }
}

Deno.test("yarn: gpt-oss-20b's frequencies follow the formulas, and the ramp lies where hand arithmetic puts it", () => {
  // by hand: low = 64·ln(4096 / (32·2π)) / (2·ln 150000) = 8.0928, high = 64·ln(4096 / 2π) / (2·ln 150000) = 17.398
  const inv = yarnInvFreq(64, 150000, GPT_OSS_20B);
  assertRelClose(inv, expectedInvFreq(64, 150000, GPT_OSS_20B), 2e-7, "inv_freq");
  for (let i = 0; i <= 8; i++) {
    assertRelClose([inv[i]!], [150000 ** (-(2 * i) / 64)], 2e-7, `extrapolated dimension ${i}`);
  }
  for (let i = 18; i < 32; i++) {
    assertRelClose([inv[i]!], [150000 ** (-(2 * i) / 64) / 32], 2e-7, `interpolated dimension ${i}`);
  }
  // dimension 12 sits on the ramp: (12 − 8.0928) / (17.398 − 8.0928) = 0.41989 of the way to interpolation
  const ramp = (12 - 8.092779115512402) / (17.39802450158856 - 8.092779115512402);
  const e12 = 150000 ** (-24 / 64);
  assertRelClose([inv[12]!], [e12 * (1 - ramp) + (e12 / 32) * ramp], 2e-7, "ramp dimension 12");
});

Deno.test("yarn: truncate rounds the correction range outwards to whole dimensions", () => {
  const y = { ...GPT_OSS_20B, truncate: true }; // low = floor(8.09) = 8, high = ceil(17.4) = 18
  const inv = yarnInvFreq(64, 150000, y);
  assertRelClose(inv, expectedInvFreq(64, 150000, y), 2e-7, "inv_freq");
  assertRelClose([inv[8]!], [150000 ** (-16 / 64)], 2e-7, "dimension 8 is extrapolated");
  assertRelClose([inv[13]!], [150000 ** (-26 / 64) * (1 - 0.5 + 0.5 / 32)], 2e-7, "dimension 13 is half-way");
  assertRelClose([inv[18]!], [150000 ** (-36 / 64) / 32], 2e-7, "dimension 18 is interpolated");
  // without truncate, dimension 8 already leans towards interpolation (ramp 0 only below 8.09)
  assert.notEqual(yarnInvFreq(64, 150000, GPT_OSS_20B)[9], inv[9]);
});

Deno.test("yarn: the tiny fixture's parameters clamp low to 0 (a negative correction dimension)", () => {
  // tiny-gpt-oss: head_dim 16, factor 4, original 64: low = 16·ln(64 / 64π) / (2·ln 150000) = −0.768 → 0
  const y: YarnRope = {
    factor: 4,
    betaFast: 32,
    betaSlow: 1,
    originalMaxPositionEmbeddings: 64,
    truncate: false,
    attentionFactor: 0.1 * Math.log(4) + 1,
  };
  const inv = yarnInvFreq(16, 150000, y);
  assertRelClose(inv, expectedInvFreq(16, 150000, y), 2e-7, "inv_freq");
  assert.equal(inv[0], 1); // dimension 0 keeps its frequency (150000⁰)
  const ramp = 1 / 1.5579325095742926; // high = 16·ln(64 / 2π) / (2·ln 150000)
  assertRelClose([inv[1]!], [150000 ** -0.125 * (1 - ramp + ramp / 4)], 2e-7, "ramp dimension 1");
});

Deno.test("yarn: the table is cos and sin of position × frequency, both times the attention factor", () => {
  const ctx = 300;
  const table = yarnRopeTable(64, 150000, ctx, GPT_OSS_20B);
  const inv = expectedInvFreq(64, 150000, GPT_OSS_20B);
  const af = 1.3465735902799727; // 0.1·ln 32 + 1
  assert.equal(table.length, 2 * ctx * 32);
  for (const p of [0, 1, 127, 128, 299]) {
    for (const i of [0, 5, 12, 20, 31]) {
      const a = p * inv[i]!;
      assert.ok(
        Math.abs(table[p * 32 + i]! - af * Math.cos(a)) < 2e-6 * af * Math.max(1, a),
        `cos p=${p} i=${i}`,
      );
      assert.ok(
        Math.abs(table[ctx * 32 + p * 32 + i]! - af * Math.sin(a)) < 2e-6 * af * Math.max(1, a),
        `sin p=${p} i=${i}`,
      );
    }
  }
  assert.equal(table[0], Math.fround(af)); // cos 0 · factor
  assert.equal(table[ctx * 32], 0); // sin 0
});

Deno.test("yarn: with factor 1 and attention factor 1 the table is plain RoPE's", () => {
  const y = { ...GPT_OSS_20B, factor: 1, attentionFactor: 1 };
  const a = yarnRopeTable(64, 150000, 50, y);
  const b = ropeTable(64, 150000, 50);
  let err = 0;
  for (let i = 0; i < a.length; i++) err = Math.max(err, Math.abs(a[i]! - b[i]!));
  assert.ok(err < 1e-5, `max difference ${err}`);
});
