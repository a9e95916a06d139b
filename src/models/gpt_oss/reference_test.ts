/**
 * The CPU reference of gpt-oss: MXFP4 dequantization and one expert against values derived by hand,
 * then the whole model against transformers' logits, routing and greedy ids on the tiny fixture (which
 * checks the layout conventions — nibble order, gate/up interleave, YaRN, sinks, the window — against
 * the oracle, not against this file's reading of it).
 */
import assert from "node:assert/strict";
import { SafetensorsFile } from "../../checkpoint/safetensors.ts";
import { Checkpoint } from "../../checkpoint/shards.ts";
import { assertLogitsClose, FIXTURES } from "../../../tests/support/hostile.ts";
import { parseGptOssConfig } from "./config.ts";
import { gptOssNames } from "./names.ts";
import {
  bf16ToF32,
  clampedSwiglu,
  CpuGptOss,
  dequantizeMxfp4,
  E2M1,
  e8m0,
  expertForward,
  type ExpertWeights,
  readExpert,
} from "./reference.ts";

const FIXTURE = `${FIXTURES}tiny-gpt-oss`;
const SWIGLU = { limit: 7, alpha: 1.702 };

Deno.test("mxfp4: e2m1 codes and e8m0 scales", () => {
  // code = sign · 2 exponent bits · 1 mantissa bit: 0b0101 = 1.1₂ × 2¹ = 3, 0b1011 = −1.1₂ × 2⁰ = −1.5
  assert.equal(E2M1[0b0101], 3);
  assert.equal(E2M1[0b1011], -1.5);
  assert.equal(E2M1[0b0001], 0.5); // subnormal: 0.1₂
  assert.ok(Object.is(E2M1[0b1000], -0));
  assert.deepEqual([e8m0(127), e8m0(128), e8m0(120), e8m0(0)], [1, 2, 2 ** -7, 2 ** -127]);
});

Deno.test("mxfp4: the low nibble is the even element, each block times its own scale", () => {
  // one row of two blocks (64 values): block 0 scale 2¹, block 1 scale 2⁻³
  const blocks = new Uint8Array(32);
  blocks[0] = 0x21; // elements 0 (low nibble: 1 → 0.5) and 1 (high nibble: 2 → 1.0)
  blocks[1] = 0xf8; // elements 2 (8 → −0) and 3 (15 → −6)
  blocks[15] = 0x7a; // elements 30 (10 → −1) and 31 (7 → 6)
  blocks[16] = 0x05; // elements 32 (5 → 3) and 33 (0 → 0)
  const w = dequantizeMxfp4(blocks, new Uint8Array([128, 124]), 1, 64);
  assert.deepEqual([...w.subarray(0, 4)], [1, 2, -0, -12]);
  assert.deepEqual([w[30], w[31], w[32], w[33]], [-2, 12, 0.375, 0]);
  assert.equal(w.filter((v) => v !== 0).length, 6); // the rest of both blocks is code 0
  // rows are independent: the second row's scale is its own
  const two = dequantizeMxfp4(new Uint8Array(32).fill(0x22), new Uint8Array([127, 129]), 2, 32);
  assert.deepEqual([two[0], two[31], two[32], two[63]], [1, 1, 4, 4]);
  assert.throws(() => dequantizeMxfp4(new Uint8Array(16), new Uint8Array(2), 1, 32), RangeError);
});

Deno.test("clamped SwiGLU: values by hand (gate clamped above only, up on both sides, up + 1)", () => {
  // 1 · σ(1.702) = 0.8457957…, times (0 + 1)
  assert.ok(Math.abs(clampedSwiglu(1, 0, SWIGLU) - 0.8457957659328212) < 1e-15);
  // gate 10 → 7, up −9 → −7: (−7 + 1) · 7 · σ(11.914) = −41.99971876…
  assert.ok(Math.abs(clampedSwiglu(10, -9, SWIGLU) - -41.99971876981991) < 1e-12);
  // gate −10 stays −10, up 20 → 7: 8 · (−10) · σ(−17.02) = −3.24637e−6
  assert.ok(Math.abs(clampedSwiglu(-10, 20, SWIGLU) - -3.2463690358842494e-6) < 1e-18);
  // 2.5 · 2 · σ(3.404) = 4.83914655…
  assert.ok(Math.abs(clampedSwiglu(2, 1.5, SWIGLU) - 4.839146557860521) < 1e-14);
});

Deno.test("expert: interleaved gate/up rows, biases, and the down projection, by hand", () => {
  // D = I = 32: gate_up is 64 rows of one block, down 32 rows of one block. x = e₀, so gate_up · x is
  // column 0 of each row, the low nibble of its byte 0; down is the identity (code 2 = 1.0 on its
  // diagonal), so y[j] = act(gate_j, up_j) + down_bias[j].
  const D = 32;
  const I = 32;
  const guBlocks = new Uint8Array(2 * I * 16);
  const guScales = new Uint8Array(2 * I);
  for (let j = 0; j < I; j++) {
    guBlocks[2 * j * 16] = j % 16; // gate j: E2M1[j mod 16] × 2 (up to 12: clamped to 7)
    guScales[2 * j] = 128;
    guBlocks[(2 * j + 1) * 16] = (5 * j) % 16; // up j: E2M1[5j mod 16] × 2 (±12: clamped to ±7)
    guScales[2 * j + 1] = 128;
  }
  const downBlocks = new Uint8Array(D * 16);
  for (let d = 0; d < D; d++) downBlocks[d * 16 + (d >> 1)] = (d & 1) ? 0x20 : 0x02; // W[d][d] = 1.0
  const w: ExpertWeights = {
    gateUp: dequantizeMxfp4(guBlocks, guScales, 2 * I, D),
    gateUpBias: Float32Array.from({ length: 2 * I }, (_, r) => (r % 2 ? -0.25 : 0.5)), // gate +0.5, up −0.25
    down: dequantizeMxfp4(downBlocks, new Uint8Array(D).fill(127), D, I),
    downBias: Float32Array.from({ length: D }, (_, d) => d / 8),
  };
  const x = new Float32Array(D);
  x[0] = 1;
  const y = expertForward(x, w, SWIGLU);
  for (let j = 0; j < I; j++) {
    const gate = 2 * E2M1[j % 16]! + 0.5;
    const up = 2 * E2M1[(5 * j) % 16]! - 0.25;
    const g = Math.min(gate, 7);
    const u = Math.max(-7, Math.min(7, up));
    const want = (u + 1) * g / (1 + Math.exp(-1.702 * g)) + j / 8;
    assert.ok(Math.abs(y[j]! - want) < 1e-12, `y[${j}] = ${y[j]}, want ${want}`);
  }
  // j = 1 by hand: gate 2·0.5 + 0.5 = 1.5, up 2·3 − 0.25 = 5.75 → 6.75 · 1.5 · σ(2.553) + 1/8
  assert.ok(Math.abs(y[1]! - (6.75 * 1.5 / (1 + Math.exp(-2.553)) + 0.125)) < 1e-12);
});

Deno.test("expert: readExpert cuts expert e from the fused tensors", () => {
  const spec = parseGptOssConfig(JSON.parse(Deno.readTextFileSync(`${FIXTURE}/config.json`)));
  const names = gptOssNames(spec);
  using ckpt = Checkpoint.open(FIXTURE);
  const e = 5;
  const w = readExpert((n) => ckpt.bytes(n), spec, names, 1, e);
  const x = names.layers[1]!.experts;
  // the whole layer dequantized, then expert 5's slice: [E, 2I, D] → [2I, D]
  const all = dequantizeMxfp4(ckpt.bytes(x.gateUp.blocks), ckpt.bytes(x.gateUp.scales), 8 * 128, 64);
  assert.deepEqual(w.gateUp, all.slice(e * 128 * 64, (e + 1) * 128 * 64));
  const down = dequantizeMxfp4(ckpt.bytes(x.down.blocks), ckpt.bytes(x.down.scales), 8 * 64, 64);
  assert.deepEqual(w.down, down.slice(e * 64 * 64, (e + 1) * 64 * 64));
  assert.deepEqual(w.downBias, bf16ToF32(ckpt.bytes(x.downBias)).slice(e * 64, (e + 1) * 64));
  assert.equal(w.gateUpBias.length, 128);
});

/** reference.json of the fixture (the parts used here). */
interface Reference {
  masked_routing: { allowed: number[][] };
  prompts: { ids: number[]; greedy: number[]; masked_greedy: number[]; router_topk: number[][][] }[];
}

Deno.test("cpu reference: transformers' logits, routing and greedy ids on tiny-gpt-oss, full and masked", () => {
  const spec = parseGptOssConfig(JSON.parse(Deno.readTextFileSync(`${FIXTURE}/config.json`)));
  const ref: Reference = JSON.parse(Deno.readTextFileSync(`${FIXTURE}/reference.json`));
  using ckpt = Checkpoint.open(FIXTURE);
  using file = SafetensorsFile.open(`${FIXTURE}/reference.safetensors`);
  const model = new CpuGptOss(spec, gptOssNames(spec), (n) => ckpt.bytes(n), 128);
  const allowed = ref.masked_routing.allowed;
  const logits = (name: string) => new Float32Array(file.bytes(name).slice().buffer);
  for (const [i, p] of ref.prompts.entries()) {
    assert.ok(p.ids.length > spec.slidingWindow!, "the window is shorter than the prompt");
    const full = model.forward(p.ids);
    assertLogitsClose(full.logits, logits(`p${i}.logits`), `prompt ${i}`);
    assert.deepEqual(full.topk, p.router_topk, `prompt ${i}: router choices`);
    assertLogitsClose(
      model.forward(p.ids, { allowed }).logits,
      logits(`p${i}.masked_logits`),
      `prompt ${i} masked`,
    );
  }
  for (const p of ref.prompts.slice(0, 2)) {
    assert.deepEqual(model.greedy(p.ids, p.greedy.length), p.greedy);
    assert.deepEqual(model.greedy(p.ids, p.masked_greedy.length, { allowed }), p.masked_greedy);
  }
});
