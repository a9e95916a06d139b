/**
 * The expert kernels at every format and tier pair against a CPU reference computed in f64 on the
 * dequantized weights (src/quant/formats.ts): gate/up with SiLU, wi with ReLU, gpt-oss's clamped
 * SwiGLU over a fused gate_up with biases (GEMV path), and the weighted down projection into the
 * residual, by both paths: the GEMV kernels (a 3-row call) and the grouped path (an 80-row call: tokens
 * grouped by expert, tiled matmuls, combine), whose grouping is also checked on its own. Shapes whose
 * rows are not a multiple of the workgroup or of a tile's rows and whose columns span several groups or
 * end inside a stage; experts in each tier, one with no resident copy, and (in the grouped call) one
 * with more rows than a tile, one with a single row, one with none.
 *
 * Tolerance: the GPU sums in f32; the error of such a sum is bounded by about n·u·Σ|terms| (u = 2⁻²⁴,
 * n terms), so each output is checked against 2·n·u times the sum of its terms' magnitudes.
 */
import assert from "node:assert/strict";
import { createGpu } from "../gpu/device.ts";
import { kernelContext } from "../gpu/dispatch.ts";
import type { TrackedBuffer } from "../gpu/memory.ts";
import {
  bf16ToF32,
  dequantizeMatrix,
  matrixLayout,
  type Precision,
  quantizeMatrix,
} from "../quant/formats.ts";
import { clampedSwiglu } from "../models/gpt_oss/reference.ts";
import {
  EXPERT_TILE,
  experts,
  expertsGrouped,
  type ExpertsOptions,
  GEMV_MAX_ROWS,
  GROUP_THREADS,
  groupedScratch,
  slotEntry,
  type TileShape,
} from "./experts.ts";
import { packStep } from "./step.ts";
import { runAndRead } from "../../tests/support/gpu_read.ts";
import { rng } from "../../tests/support/random.ts";

/** A random [rows, cols] matrix as bf16 bytes. */
function bf16Matrix(rows: number, cols: number, rand: () => number): Uint8Array {
  const f = Float32Array.from({ length: rows * cols }, () => rand() * 0.5);
  const u = new Uint32Array(f.buffer);
  return new Uint8Array(Uint16Array.from(u, (x) => ((x + 0x7fff + ((x >>> 16) & 1)) >>> 16) & 0xffff).buffer);
}

/** A random mxfp4 matrix (codes and exponents near 2^0) as the published layout holds it. */
function mxfp4Matrix(rows: number, cols: number, rand: () => number): Uint8Array {
  const l = matrixLayout("mxfp4", rows, cols);
  const b = new Uint8Array(l.bytes);
  for (let i = 0; i < l.qBytes; i++) b[i] = Math.floor((rand() + 0.5) * 256) & 255;
  for (let i = 0; i < (rows * cols) / 32; i++) b[l.scalesAt + i] = 124 + Math.floor((rand() + 0.5) * 4);
  return b;
}

const U = 2 ** -24;
const silu = (v: number) => v / (1 + Math.exp(-v));

/** A matrix at `p` (bytes) and its dequantized f32 weights. */
function matrixAt(
  p: Precision,
  rows: number,
  cols: number,
  rand: () => number,
): { bytes: Uint8Array; w: Float32Array } {
  if (p === "mxfp4") {
    const bytes = mxfp4Matrix(rows, cols, rand);
    return { bytes, w: dequantizeMatrix("mxfp4", bytes, rows, cols) };
  }
  const bytes = quantizeMatrix(p, bf16Matrix(rows, cols, rand), rows, cols);
  return { bytes, w: dequantizeMatrix(p, bytes, rows, cols) };
}

interface Case {
  formats: Precision[];
  dim: number;
  inter: number;
  gated: boolean;
}

const CASES: Case[] = [
  { formats: ["bf16"], dim: 96, inter: 70, gated: true }, // rows not a multiple of the workgroup
  // bf16 rows of whole octets (gate_up_bf16, down_sum_bf16): rows not a multiple of the four a
  // workgroup computes, octets per row not a multiple of the threads a row (nor fewer than them)
  { formats: ["bf16"], dim: 104, inter: 72, gated: true },
  { formats: ["bf16"], dim: 2048, inter: 136, gated: true },
  // rows of down and of wi not a multiple of the four a workgroup computes (nor of a tile's rows), and
  // columns not a multiple of the tiled kernels' stage
  { formats: ["bf16"], dim: 98, inter: 70, gated: true },
  { formats: ["bf16"], dim: 98, inter: 70, gated: false },
  { formats: ["int8"], dim: 160, inter: 96, gated: true },
  { formats: ["int4"], dim: 96, inter: 160, gated: true },
  { formats: ["bf16", "int4"], dim: 128, inter: 96, gated: true },
  { formats: ["int8", "int4"], dim: 96, inter: 64, gated: true },
  { formats: ["bf16", "int8"], dim: 64, inter: 96, gated: false }, // ReLU (Switch)
  { formats: ["mxfp4"], dim: 64, inter: 96, gated: true },
  { formats: ["int4", "mxfp4"], dim: 160, inter: 64, gated: false },
  { formats: ["bf16", "int4"], dim: 2048, inter: 64, gated: true }, // more groups per row than threads
  // more words per row than threads, not a multiple of them, and an odd count of groups per row
  { formats: ["int8", "int4"], dim: 1056, inter: 160, gated: true },
  { formats: ["mxfp4"], dim: 1056, inter: 96, gated: true },
];

const K = 2;
const E = 7;
/** Expert 2 has no resident copy; the others alternate between the tiers (all in tier 0 with one). */
const RESIDENT = [0, 1, 3, 4, 5, 6];

/**
 * A call's routing: [T, K] expert ids. Short (3 rows): the GEMV path. Long (80 rows, past
 * GEMV_MAX_ROWS): the grouped path, with expert 0 taking 70 rows (more than a tile), expert 4 one row,
 * expert 5 none, and every fifth token's second choice the non-resident expert 2.
 */
function routing(T: number): Uint32Array<ArrayBuffer> {
  if (T === 3) return Uint32Array.from([0, 1, 3, 2, 4, 1]);
  return Uint32Array.from({ length: T * K }, (_, i) => {
    const t = Math.floor(i / K);
    if (i % K === 0) return t < 70 ? 0 : 3;
    if (t === 7) return 4;
    if (t % 5 === 0) return 2;
    return t % 2 ? 1 : 6;
  });
}

/**
 * One case at T rows: the kernels of `experts()` (both paths recorded, scratch for `maxRows`) against the
 * CPU reference y = y0 + Σ_k w · down · act(gate · x, up · x), a non-resident expert adding nothing.
 */
async function checkCase(
  env: ReturnType<typeof kernelContext> & { device: GPUDevice },
  c: Case,
  ci: number,
  T: number,
  maxRows: number,
  tile?: TileShape,
): Promise<void> {
  const { device, memory, stepBuffer: step, ctx } = env;
  const S = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST | GPUBufferUsage.COPY_SRC;
  const rand = rng(11 + ci);
  const { dim: D, inter: I } = c;
  const tiers = c.formats.length;
  // [tier, slot] of each expert; [-1, -1] for one without a resident copy
  const placement: [number, number][] = Array.from({ length: E }, () => [-1, -1]);
  const capacity = new Array<number>(tiers).fill(0);
  RESIDENT.forEach((e, i) => {
    const tier = i % tiers;
    placement[e] = [tier, capacity[tier]!++];
  });
  const names = c.gated ? ["gate", "up", "down"] : ["wi", "wo"];
  // every expert's matrices at the tier it sits in (the non-resident one at tier 0, unused)
  const weights = placement.map(([tier]) =>
    names.map((n) => n === "down" || n === "wo" ? [D, I] : [I, D]).map(([r, cl]) =>
      matrixAt(c.formats[Math.max(0, tier)]!, r!, cl!, rand)
    )
  );
  const buffers = names.map((_, m) => {
    const sizes = c.formats.map((f) => {
      const [r, cl] = m === names.length - 1 ? [D, I] : [I, D];
      return matrixLayout(f, r, cl).bytes;
    });
    const bytes = new Uint8Array(capacity.reduce((a, n, t) => a + n * sizes[t]!, 0));
    placement.forEach(([tier, slot], e) => {
      if (tier < 0) return;
      const base = (tier === 0 ? 0 : capacity[0]! * sizes[0]!) + slot * sizes[tier]!;
      bytes.set(weights[e]![m]!.bytes, base);
    });
    return bytes;
  });
  const table = Int32Array.from(placement, ([tier, slot]) => (tier < 0 ? -1 : slotEntry(tier, slot)));
  const ids = routing(T);
  const gates = Float32Array.from({ length: T * K }, () => rand() + 0.6);
  const x = Float32Array.from({ length: T * D }, rand);
  const y0 = Float32Array.from({ length: T * D }, rand);

  // reference: h, then y = y0 + Σ_k w · down·h, expert 2 (not resident) contributing nothing
  const want = Float64Array.from(y0);
  const bound = new Float64Array(T * D);
  for (let t = 0; t < T; t++) {
    for (let k = 0; k < K; k++) {
      const e = ids[t * K + k]!;
      if (placement[e]![0] < 0) continue;
      const [w0, w1, w2] = weights[e]!.map((m) => m.w);
      const h = new Float64Array(I);
      const hAbs = new Float64Array(I);
      for (let i = 0; i < I; i++) {
        let a = 0;
        let b = 0;
        let aa = 0;
        for (let d = 0; d < D; d++) {
          a += w0![i * D + d]! * x[t * D + d]!;
          aa += Math.abs(w0![i * D + d]! * x[t * D + d]!);
          if (c.gated) b += w1![i * D + d]! * x[t * D + d]!;
        }
        h[i] = c.gated ? silu(a) * b : Math.max(a, 0);
        hAbs[i] = Math.abs(h[i]!) + aa * 4 * D * U;
      }
      const down = c.gated ? w2! : w1!;
      for (let d = 0; d < D; d++) {
        let v = 0;
        let va = 0;
        for (let i = 0; i < I; i++) {
          v += down[d * I + i]! * h[i]!;
          va += Math.abs(down[d * I + i]!) * hAbs[i]!;
        }
        want[t * D + d] = want[t * D + d]! + gates[t * K + k]! * v;
        bound[t * D + d] = bound[t * D + d]! + Math.abs(gates[t * K + k]!) * va;
      }
    }
  }

  const held: TrackedBuffer[] = [];
  const put = (a: ArrayBufferView<ArrayBuffer>) => {
    const b = memory.alloc("in", a.byteLength, S, "activations");
    device.queue.writeBuffer(b.buffer, 0, a);
    held.push(b);
    return b.buffer;
  };
  ctx.params.reset();
  const mats = buffers.map((b) => put(b as Uint8Array<ArrayBuffer>));
  const yb = put(new Float32Array(y0));
  const scratch = groupedScratch({ rows: maxRows, topK: K, experts: E, dim: D }, tile)!;
  const o: ExpertsOptions = {
    label: `case${ci}`,
    layer: 0,
    dim: D,
    inter: I,
    topK: K,
    experts: E,
    topkIds: put(ids),
    topkW: put(gates),
    slots: put(table),
    x: put(x),
    gate: mats[0]!,
    up: c.gated ? mats[1] : undefined,
    down: mats[mats.length - 1]!,
    // scratch starts as NaN, so a row read before it is written (or a masked row read at all) shows
    h: put(new Float32Array(maxRows * K * I).fill(NaN)),
    y: yb,
    formats: c.formats,
    highSlots: capacity[0]!,
    grouped: {
      yk: put(new Float32Array(scratch.yk).fill(NaN)),
      route: put(new Uint32Array(scratch.route).fill(0xffffffff)),
    },
  };
  const shape = { t: T, headRows: 0, pos0: 0 };
  // the engine's dispatches; or, at another tile shape, the grouped path's alone
  const dispatches = tile ? await expertsGrouped(ctx, o, tile) : await experts(ctx, o);
  if (!tile) {
    // the path this T takes launches, the other does not
    const launched = dispatches.filter((d) => d.workgroups(shape) > 0).map((d) => d.label.split(".").pop());
    assert.deepEqual(
      launched,
      T > GEMV_MAX_ROWS
        ? ["group", c.gated ? "gate_up_tiled" : "wi_relu_tiled", "down_tiled", "combine"]
        : [c.gated ? "gate_up" : "wi_relu", "down"],
    );
  }
  device.queue.writeBuffer(step.buffer, 0, packStep(shape));
  const got = new Float32Array(await runAndRead(device, dispatches, shape, yb, T * D * 4));
  let worst = 0;
  for (let i = 0; i < got.length; i++) {
    const tol = 2 * (D + I) * U * (bound[i]! + Math.abs(y0[i]!)) + 1e-7;
    worst = Math.max(worst, Math.abs(got[i]! - want[i]!) / tol);
  }
  const where = `${c.formats.join("+")} ${D}×${I}, ${T} rows${
    tile ? `, tile ${tile.tokens}×${tile.rows}` : ""
  }`;
  assert.ok(worst <= 1, `${where}: error ${worst.toFixed(2)} × the f32 bound`);
  held.forEach((b) => memory.free(b));
}

for (const [path, T] of [["GEMV", 3], ["grouped", 80]] as const) {
  Deno.test(`experts, ${path} path: every format and tier pair against a CPU reference on the dequantized weights`, async () => {
    const gpu = await createGpu();
    const device = gpu.device;
    const env = { ...kernelContext(device, 64), device };
    try {
      for (const [ci, c] of CASES.entries()) {
        await checkCase(env, c, ci, T, 80);
        gpu.assertAlive(); // a binding the pipeline lacks fails validation without a word otherwise
      }
    } finally {
      env.memory.freeAll();
      device.destroy();
    }
  });
}

Deno.test("experts, grouped path: the other tile shapes bench/kernels.ts times, against the same reference", async () => {
  const gpu = await createGpu();
  const device = gpu.device;
  const env = { ...kernelContext(device, 64), device };
  try {
    // fewer threads than a stage's x quads or octets: the staging loops go round more than once
    for (const tile of [{ tokens: 32, rows: 128 }, { tokens: 64, rows: 64 }, { tokens: 128, rows: 64 }]) {
      for (const ci of [1, 2, 9]) {
        await checkCase(env, CASES[ci]!, ci, 80, 80, tile);
        gpu.assertAlive();
      }
    }
  } finally {
    env.memory.freeAll();
    device.destroy();
  }
});

Deno.test("experts, grouped path: the grouping lists every resident row once, by expert, in tiles", async () => {
  const gpu = await createGpu();
  const device = gpu.device;
  const { memory, stepBuffer: step, ctx } = kernelContext(device, 16);
  const S = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST | GPUBufferUsage.COPY_SRC;
  const TILE = EXPERT_TILE.tokens;
  try {
    // more rows than the workgroup's threads; as many experts as it takes
    for (const [T, K, E] of [[100, 4, 40], [300, 8, GROUP_THREADS]] as const) {
      const rand = rng(T);
      // K distinct experts per token, the low ones far more often (expert 0 gets more than a tile), never
      // expert 2; three experts in four resident, in either tier
      const ids = new Uint32Array(T * K);
      for (let t = 0; t < T; t++) {
        const picked = new Set<number>();
        while (picked.size < K) {
          const e = Math.floor((rand() + 0.5) ** 3 * E) % E;
          if (e !== 2) picked.add(e);
        }
        ids.set([...picked], t * K);
      }
      const table = Int32Array.from({ length: E }, (_, e) => e % 4 === 3 ? -1 : slotEntry(e % 2, e));
      const scratch = groupedScratch({ rows: T, topK: K, experts: E, dim: 8 })!;
      const put = (a: ArrayBufferView<ArrayBuffer>) => {
        const b = memory.alloc("in", a.byteLength, S, "activations").buffer;
        device.queue.writeBuffer(b, 0, a);
        return b;
      };
      const route = put(new Uint32Array(scratch.route).fill(0xffffffff));
      ctx.params.reset();
      const dispatches = await expertsGrouped(ctx, {
        label: "group",
        layer: 0,
        dim: 8,
        inter: 8,
        topK: K,
        experts: E,
        topkIds: put(ids),
        topkW: put(new Float32Array(T * K)),
        slots: put(table),
        x: put(new Float32Array(T * 8)),
        gate: put(new Uint32Array(32)),
        up: put(new Uint32Array(32)),
        down: put(new Uint32Array(32)),
        h: put(new Float32Array(T * K * 8)),
        y: put(new Float32Array(T * 8)),
        formats: ["bf16"],
        highSlots: E,
        grouped: { yk: put(new Float32Array(scratch.yk)), route },
      });
      const shape = { t: T, headRows: 0, pos0: 0 };
      device.queue.writeBuffer(step.buffer, 0, packStep(shape));
      const got = new Uint32Array(
        await runAndRead(
          device,
          dispatches.filter((d) => d.label === "group.group"),
          shape,
          route,
          scratch.route * 4,
        ),
      );
      gpu.assertAlive();

      // the CPU's grouping: each expert's resident rows, and its tiles
      const lists = Array.from({ length: E }, () => [] as number[]);
      ids.forEach((e, tk) => table[e]! >= 0 && lists[e]!.push(tk));
      const tiles: number[][] = [];
      let first = 0;
      for (const [e, rows] of lists.entries()) {
        for (let j = 0; j * TILE < rows.length; j++) {
          tiles.push([table[e]! >>> 0, first + j * TILE, Math.min(TILE, rows.length - j * TILE)]);
        }
        // within an expert the rows are in no fixed order
        const listed = [...got.subarray(1 + first, 1 + first + rows.length)].sort((a, b) => a - b);
        assert.deepEqual(listed, rows, `T ${T}, expert ${e}: its rows`);
        first += rows.length;
      }
      assert.ok(lists.some((l) => l.length > TILE), "an expert has more than a tile of rows");
      assert.ok(lists.some((l, e) => l.length === 0 && table[e]! >= 0), "a resident expert has no rows");
      assert.equal(got[0], tiles.length, `T ${T}: the tile count`);
      assert.ok(tiles.length <= Math.ceil((T * K) / TILE) + E, "within the dispatch's bound");
      const at = 1 + T * K;
      assert.deepEqual(
        Array.from({ length: tiles.length }, (_, i) => [...got.subarray(at + 3 * i, at + 3 * i + 3)]),
        tiles,
        `T ${T}: the tiles`,
      );
    }
  } finally {
    memory.freeAll();
    device.destroy();
  }
});

/** A random matrix at `p` with a bias of `rows` bf16 values after its other regions (matrixLayout's `bias`). */
function biasedMatrixAt(
  p: Precision,
  rows: number,
  cols: number,
  rand: () => number,
): { bytes: Uint8Array; w: Float32Array; b: Float32Array } {
  const { bytes: plain, w } = matrixAt(p, rows, cols, rand);
  const layout = matrixLayout(p, rows, cols, true);
  const bytes = new Uint8Array(layout.bytes);
  bytes.set(plain.subarray(0, layout.biasAt));
  // biases up to ±1: with the small test limit below, many sums land beyond it
  const bias = new Uint8Array(bf16Matrix(1, rows, () => 4 * rand()));
  bytes.set(bias, layout.biasAt);
  const u16 = new Uint16Array(bias.buffer, 0, rows);
  return { bytes, w, b: Float32Array.from(u16, bf16ToF32) };
}

Deno.test("experts: gpt-oss's clamped SwiGLU over the fused, interleaved gate_up with biases, against a CPU reference", async () => {
  const gpu = await createGpu();
  const device = gpu.device;
  const { memory, stepBuffer: step, ctx } = kernelContext(device, 64);
  const S = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST | GPUBufferUsage.COPY_SRC;
  // limit 0.5: the test's sums are about ±1, so both clamps engage often (gpt-oss's own limit is 7)
  const cases: { formats: Precision[]; dim: number; inter: number; limit: number }[] = [
    { formats: ["mxfp4"], dim: 64, inter: 96, limit: 0.5 }, // 3 groups per down row (odd)
    // gate_up rows 2I = 320 past the workgroups' multiple, 33 groups per row (odd), more words than threads
    { formats: ["mxfp4"], dim: 1056, inter: 160, limit: 0.5 },
    { formats: ["mxfp4"], dim: 96, inter: 64, limit: 7 },
    // the bias after each format's regions, and in the low tier's copies
    { formats: ["bf16"], dim: 98, inter: 70, limit: 0.5 }, // rows of down not a multiple of four
    { formats: ["bf16", "int4"], dim: 128, inter: 96, limit: 0.5 },
    { formats: ["int8", "mxfp4"], dim: 96, inter: 64, limit: 0.5 },
  ];
  const alpha = 1.702;
  try {
    for (const [ci, c] of cases.entries()) {
      const rand = rng(101 + ci);
      const { dim: D, inter: I } = c;
      const T = 3;
      const K = 2;
      const E = 5;
      const tiers = c.formats.length;
      const placement: [number, number][] = tiers === 2
        ? [[0, 0], [1, 0], [-1, -1], [0, 1], [1, 1]]
        : [[0, 0], [0, 1], [-1, -1], [0, 2], [0, 3]];
      const capacity = tiers === 2 ? [2, 2] : [4];
      const shapes = [[2 * I, D], [D, I]] as const; // gate_up, down
      const weights = placement.map(([tier]) =>
        shapes.map(([r, cl]) => biasedMatrixAt(c.formats[Math.max(0, tier)]!, r, cl, rand))
      );
      const buffers = shapes.map(([r, cl], m) => {
        const sizes = c.formats.map((f) => matrixLayout(f, r, cl, true).bytes);
        const bytes = new Uint8Array(capacity.reduce((a, n, t) => a + n * sizes[t]!, 0));
        placement.forEach(([tier, slot], e) => {
          if (tier < 0) return;
          bytes.set(weights[e]![m]!.bytes, (tier === 0 ? 0 : capacity[0]! * sizes[0]!) + slot * sizes[tier]!);
        });
        return bytes;
      });
      const table = Int32Array.from(placement, ([tier, slot]) => (tier < 0 ? -1 : slotEntry(tier, slot)));
      const ids = Uint32Array.from([0, 1, 3, 2, 4, 1]);
      const gates = Float32Array.from({ length: T * K }, () => rand() + 0.6);
      const x = Float32Array.from({ length: T * D }, rand);
      const y0 = Float32Array.from({ length: T * D }, rand);

      // reference in f64: y = y0 + Σ_k w · (down · h + b_down); expert 2 (not resident) adds nothing.
      // Error bound: an f32 sum of n terms is off by at most about n·u·Σ|terms|; h's error is the
      // sums' errors through |∂h/∂gate| ≤ |up + 1|·(1 + alpha·|g|/4) and |∂h/∂up| ≤ |g|, plus a few
      // roundings of h itself; the down sum adds its own over K·(I + 1) terms.
      const want = Float64Array.from(y0);
      const tol = new Float64Array(T * D);
      let clampedGate = 0;
      let clampedUp = 0;
      for (let t = 0; t < T; t++) {
        for (let k = 0; k < K; k++) {
          const e = ids[t * K + k]!;
          if (placement[e]![0] < 0) continue;
          const [gu, dn] = weights[e]!;
          const h = new Float64Array(I);
          const hErr = new Float64Array(I);
          for (let i = 0; i < I; i++) {
            let gate = gu!.b[2 * i]!;
            let up = gu!.b[2 * i + 1]!;
            let gAbs = Math.abs(gate);
            let uAbs = Math.abs(up);
            for (let d = 0; d < D; d++) {
              const xd = x[t * D + d]!;
              gate += gu!.w[2 * i * D + d]! * xd;
              up += gu!.w[(2 * i + 1) * D + d]! * xd;
              gAbs += Math.abs(gu!.w[2 * i * D + d]! * xd);
              uAbs += Math.abs(gu!.w[(2 * i + 1) * D + d]! * xd);
            }
            if (gate > c.limit) clampedGate++;
            if (Math.abs(up) > c.limit) clampedUp++;
            h[i] = clampedSwiglu(gate, up, { limit: c.limit, alpha });
            const g = Math.min(gate, c.limit);
            const u = Math.min(Math.max(up, -c.limit), c.limit);
            const eg = 2 * (D + 1) * U * gAbs;
            const eu = 2 * (D + 1) * U * uAbs;
            hErr[i] = Math.abs(u + 1) * (1 + (alpha * Math.abs(g)) / 4) * eg + Math.abs(g) * eu +
              16 * U * Math.abs(h[i]!);
          }
          const w = gates[t * K + k]!;
          for (let d = 0; d < D; d++) {
            let v = dn!.b[d]!;
            let terms = Math.abs(v);
            let propagated = 0;
            for (let i = 0; i < I; i++) {
              v += dn!.w[d * I + i]! * h[i]!;
              terms += Math.abs(dn!.w[d * I + i]! * h[i]!);
              propagated += Math.abs(dn!.w[d * I + i]!) * hErr[i]!;
            }
            want[t * D + d] = want[t * D + d]! + w * v;
            tol[t * D + d] = tol[t * D + d]! + Math.abs(w) * (2 * (K * (I + 1) + 2) * U * terms + propagated);
          }
        }
      }
      assert.ok(clampedGate > 0 && clampedUp > 0 || c.limit === 7, "the case exercises both clamps");

      const held: TrackedBuffer[] = [];
      const put = (a: ArrayBufferView<ArrayBuffer>) => {
        const b = memory.alloc("in", a.byteLength, S, "activations");
        device.queue.writeBuffer(b.buffer, 0, a);
        held.push(b);
        return b.buffer;
      };
      ctx.params.reset();
      const mats = buffers.map((b) => put(b as Uint8Array<ArrayBuffer>));
      const yb = put(new Float32Array(y0));
      const dispatches = await experts(ctx, {
        label: `oss${ci}`,
        layer: 0,
        dim: D,
        inter: I,
        topK: K,
        experts: E,
        topkIds: put(ids),
        topkW: put(gates),
        slots: put(table),
        x: put(x),
        gate: mats[0]!,
        down: mats[1]!,
        h: put(new Float32Array(T * K * I)),
        y: yb,
        formats: c.formats,
        highSlots: capacity[0]!,
        clampedSwiglu: { limit: c.limit, alpha },
      });
      const shape = { t: T, headRows: 0, pos0: 0 };
      device.queue.writeBuffer(step.buffer, 0, packStep(shape));
      const got = new Float32Array(await runAndRead(device, dispatches, shape, yb, T * D * 4));
      gpu.assertAlive();
      let worst = 0;
      for (let i = 0; i < got.length; i++) {
        worst = Math.max(worst, Math.abs(got[i]! - want[i]!) / (tol[i]! + 2 * U * Math.abs(y0[i]!) + 1e-7));
      }
      assert.ok(
        worst <= 1,
        `gpt-oss ${c.formats.join("+")} ${D}×${I}: error ${worst.toFixed(2)} × the f32 bound`,
      );
      held.forEach((b) => memory.free(b));
    }
  } finally {
    memory.freeAll();
    device.destroy();
  }
});
