import assert from "node:assert/strict";
import { OptionError } from "../errors.ts";
import {
  bf16ToF32,
  dequantizeMatrix,
  GROUP,
  matrixLayout,
  parsePrecision,
  quantizeMatrix,
} from "./formats.ts";

/** A seeded [rows, cols] bf16 matrix (raw bytes) of weights around `scale`. */
function randomBf16(rows: number, cols: number, seed: number, scale = 0.05): Uint8Array {
  let s = seed >>> 0;
  const f = new Float32Array(1);
  const u = new Uint32Array(f.buffer);
  const out = new Uint16Array(rows * cols);
  for (let i = 0; i < out.length; i++) {
    s = (s * 1664525 + 1013904223) >>> 0;
    f[0] = ((s / 2 ** 32) * 2 - 1) * scale * (1 + (i % 7));
    out[i] = u[0]! >>> 16;
  }
  return new Uint8Array(out.buffer);
}

Deno.test("formats: byte layouts of a matrix at each precision", () => {
  assert.deepEqual(matrixLayout("bf16", 3, 64), {
    qBytes: 384,
    scalesAt: 384,
    scaleBytes: 0,
    minsAt: 384,
    minBytes: 0,
    biasAt: 384,
    biasBytes: 0,
    bytes: 384,
  });
  // int8: a byte per weight, an f16 scale per 32
  assert.deepEqual(matrixLayout("int8", 3, 64), {
    qBytes: 192,
    scalesAt: 192,
    scaleBytes: 12,
    minsAt: 204,
    minBytes: 0,
    biasAt: 204,
    biasBytes: 0,
    bytes: 204,
  });
  // int4: a nibble per weight, f16 scale and minimum per 32; odd scale counts pad to a word
  assert.deepEqual(matrixLayout("int4", 3, 32), {
    qBytes: 48,
    scalesAt: 48,
    scaleBytes: 8,
    minsAt: 56,
    minBytes: 8,
    biasAt: 64,
    biasBytes: 0,
    bytes: 64,
  });
  // mxfp4 as gpt-oss publishes it: a nibble per weight, a byte exponent per 32; with its bias
  assert.deepEqual(matrixLayout("mxfp4", 3, 64, true), {
    qBytes: 96,
    scalesAt: 96,
    scaleBytes: 8,
    minsAt: 104,
    minBytes: 0,
    biasAt: 104,
    biasBytes: 8,
    bytes: 112,
  });
  assert.throws(() => matrixLayout("int4", 4, 48), OptionError);
  // an OLMoE expert matrix: int4 is 0.31 of bf16, int8 0.53
  const bf16 = matrixLayout("bf16", 1024, 2048).bytes;
  assert.equal(matrixLayout("int4", 1024, 2048).bytes / bf16, 0.3125);
  assert.equal(matrixLayout("int8", 1024, 2048).bytes / bf16, 0.53125);
});

Deno.test("formats: quantized weights round-trip within half a step of their group", () => {
  const rows = 5;
  const cols = 96;
  const src = randomBf16(rows, cols, 7);
  const exact = dequantizeMatrix("bf16", src, rows, cols);
  for (const p of ["int8", "int4"] as const) {
    const q = quantizeMatrix(p, src, rows, cols);
    assert.equal(q.byteLength, matrixLayout(p, rows, cols).bytes);
    const back = dequantizeMatrix(p, q, rows, cols);
    for (let g = 0; g < (rows * cols) / GROUP; g++) {
      const w = exact.subarray(g * GROUP, (g + 1) * GROUP);
      const lo = Math.min(...w);
      const hi = Math.max(...w);
      // step: 2·max|w|/254 (int8), (max − min)/15 (int4); f16 rounding of scale and min adds a little
      const step = p === "int8" ? Math.max(-lo, hi) / 127 : (hi - lo) / 15;
      for (let j = 0; j < GROUP; j++) {
        const err = Math.abs(back[g * GROUP + j]! - w[j]!);
        assert.ok(err <= 0.5 * step * 1.01 + 1e-6, `${p} group ${g} weight ${j}: error ${err}, step ${step}`);
      }
    }
  }
});

Deno.test("formats: codes and scales sit where the kernels read them", () => {
  // one row of 32: weights 0, 1/15, 2/15, … , 1 at int4 are codes 0 … 15 with scale 1/15, min 0
  const w = Float32Array.from({ length: 32 }, (_, j) => Math.min(j, 15) / 15);
  const u = new Uint32Array(w.buffer);
  const bf16 = new Uint8Array(Uint16Array.from(u, (x) => x >>> 16).buffer);
  const q = quantizeMatrix("int4", bf16, 1, 32);
  const words = new Uint32Array(q.buffer);
  assert.equal(words[0], 0x76543210, "elements 0 … 7 in nibbles from the low end");
  assert.equal(words[1], 0xfedcba98);
  assert.equal(words[2], 0xffffffff);
  const scales = new Float16Array(q.buffer, 16, 2);
  assert.ok(Math.abs(scales[0]! - bf16ToF32(new Uint16Array(bf16.buffer)[15]!) / 15) < 1e-3);
  assert.equal(new Float16Array(q.buffer, 20, 2)[0], 0, "min");
  // int8: −1 is 0x81 (two's complement of −127), in byte 0
  const m = new Uint8Array(new Uint16Array([0xbf80, 0x3f80, ...Array(30).fill(0)]).buffer); // −1, 1, 0 …
  const q8 = quantizeMatrix("int8", m, 1, 32);
  assert.equal(q8[0], 0x81);
  assert.equal(q8[1], 127);
  assert.equal(
    new Float16Array(q8.buffer, 32, 1)[0],
    new Float16Array([1 / 127])[0],
    "scale max|w| / 127 in f16",
  );
});

/**
 * The formats' definition, element by element (as the module header states it): what the fast loops
 * of quantizeMatrix must reproduce byte for byte.
 */
function quantizeByDefinition(p: "int8" | "int4", bf16: Uint8Array, rows: number, cols: number): Uint8Array {
  const layout = matrixLayout(p, rows, cols);
  const out = new Uint8Array(layout.bytes);
  const src = new Uint16Array(bf16.buffer, bf16.byteOffset, rows * cols);
  const groups = cols / GROUP;
  const scales = new Float16Array(out.buffer, layout.scalesAt, rows * groups);
  const mins = new Float16Array(out.buffer, layout.minsAt, p === "int4" ? rows * groups : 0);
  const f16 = (x: number) => Math.fround(new Float16Array([x])[0]!);
  for (let r = 0; r < rows; r++) {
    for (let g = 0; g < groups; g++) {
      const w = Array.from({ length: GROUP }, (_, j) => bf16ToF32(src[r * cols + g * GROUP + j]!));
      const lo = Math.min(...w.filter((v) => !Number.isNaN(v)), Infinity);
      const hi = Math.max(...w.filter((v) => !Number.isNaN(v)), -Infinity);
      const gi = r * groups + g;
      const min = p === "int4" ? f16(lo) : 0;
      const scale = p === "int8" ? f16(Math.max(Math.abs(lo), Math.abs(hi)) / 127) : f16((hi - min) / 15);
      scales[gi] = scale;
      if (p === "int4") mins[gi] = min;
      w.forEach((v, j) => {
        const e = r * cols + g * GROUP + j;
        const x = Math.round((v - min) * (scale > 0 ? 1 / scale : 0));
        const q = Number.isNaN(x)
          ? 0
          : p === "int8"
          ? Math.max(-127, Math.min(127, x))
          : Math.max(0, Math.min(15, x));
        if (p === "int8") out[e] = q & 0xff;
        else out[e >> 1]! |= q << (4 * (e & 1));
      });
    }
  }
  return out;
}

Deno.test("formats: quantizing gives the bytes of the formats' definition, special values included", () => {
  let s = 11;
  const next = () => (s = (s * 1664525 + 1013904223) >>> 0) / 2 ** 32;
  // zeros, ±0, ±inf, NaN, subnormals, the largest finite, ±1 (codes at the clamps)
  const specials = [0x0000, 0x8000, 0x7f80, 0xff80, 0x7fc0, 0x0001, 0x8001, 0x7f7f, 0x3f80, 0xbf80];
  for (let t = 0; t < 100; t++) {
    const rows = 1 + (t % 4), cols = GROUP * (1 + (t % 5));
    const bits = new Uint16Array(rows * cols).map((_, i) =>
      t % 4 === 0 ? specials[Math.floor(next() * specials.length)]! : t % 4 === 1
        ? Math.floor(next() * 65536) // every bit pattern
        : t % 4 === 2
        ? (i % 3 === 0 ? 0x3f80 : 0xbf80) // ±1
        : new Uint16Array(new Float32Array([(next() * 2 - 1) * 0.05]).buffer)[1]!
    );
    const bytes = new Uint8Array(bits.buffer);
    for (const p of ["int8", "int4"] as const) {
      assert.deepEqual(
        quantizeMatrix(p, bytes, rows, cols),
        quantizeByDefinition(p, bytes, rows, cols),
        `${p} case ${t}`,
      );
    }
  }
});

Deno.test("formats: mxfp4 dequantizes e2m1 codes (even element in the low nibble) times 2^(e − 127)", () => {
  const layout = matrixLayout("mxfp4", 1, 32);
  const bytes = new Uint8Array(layout.bytes);
  bytes[0] = 0x2f; // element 0: code 0xf = −6, element 1: code 0x2 = 1
  bytes[1] = 0x91; // element 2: 0.5, element 3: code 9 = −0.5
  bytes[layout.scalesAt] = 128; // × 2
  const w = dequantizeMatrix("mxfp4", bytes, 1, 32);
  assert.deepEqual([...w.subarray(0, 5)], [-12, 2, 1, -1, 0]);
});

Deno.test("formats: a group of equal weights and a group of zeros quantize exactly", () => {
  const same = new Uint8Array(new Uint16Array(Array(32).fill(0x3e80)).buffer); // 0.25
  for (const p of ["int8", "int4"] as const) {
    const back = dequantizeMatrix(p, quantizeMatrix(p, same, 1, 32), 1, 32);
    assert.ok(back.every((v) => Math.abs(v - 0.25) < 1e-3), `${p}: ${back[0]}`);
    const zeros = dequantizeMatrix(p, quantizeMatrix(p, new Uint8Array(64), 1, 32), 1, 32);
    assert.ok(zeros.every((v) => v === 0), p);
  }
});

Deno.test("parsePrecision: one precision or a high+low pair, named in the error otherwise", () => {
  assert.deepEqual(parsePrecision("bf16"), ["bf16"]);
  assert.deepEqual(parsePrecision("int4"), ["int4"]);
  assert.deepEqual(parsePrecision("bf16+int4"), ["bf16", "int4"]);
  assert.deepEqual(parsePrecision("int8+int4"), ["int8", "int4"]);
  assert.deepEqual(parsePrecision("mxfp4", "mxfp4"), ["mxfp4"]);
  // without a model, any value some model takes: gpt-oss's mxfp4 too (its config decides later)
  assert.deepEqual(parsePrecision("mxfp4"), ["mxfp4"]);
  assert.throws(
    () => parsePrecision("bf16+mxfp4"),
    /Invalid expertPrecision: "bf16\+mxfp4", expected one of .*"mxfp4"/,
  );
  const refused: [unknown, RegExp][] = [
    ["int3", /Invalid expertPrecision: "int3", expected one of "bf16", "int8", "int4", "bf16\+int8"/],
    ["int4+bf16", /the high tier comes first and must hold more bits than the low tier/],
    ["int4+int4", /the high tier comes first/],
    ["bf16+int8+int4", /expected one of/],
    [4, /Invalid expertPrecision: 4/],
  ];
  for (const [v, re] of refused) {
    assert.throws(() => parsePrecision(v), (e: Error) => e instanceof OptionError && re.test(e.message));
  }
  assert.throws(() => parsePrecision("mxfp4", "bf16"), /this model's experts are stored in bf16/);
  assert.throws(() => parsePrecision("int4", "mxfp4"), /stored in mxfp4: expected one of "mxfp4"/);
});
