/**
 * The fused post-attention norm, router and routing (router.wgsl `norm_route`) against a CPU reference
 * in f64: the normalised rows, the masked and unmasked top-k with their weights, and ‖xn‖, for expert
 * counts that take each LANES (32, 16, 8), with and without a bias and masking.
 */
import assert from "node:assert/strict";
import { createGpu } from "../gpu/device.ts";
import { kernelContext } from "../gpu/dispatch.ts";
import { normRoute, normRouteApplies } from "./router.ts";
import { packStep } from "./step.ts";
import { runAndRead } from "../../tests/support/gpu_read.ts";
import { bf16, rng } from "../../tests/support/random.ts";

interface Case {
  rows: number;
  dim: number;
  experts: number;
  topK: number;
  bias: boolean;
  masked: boolean;
  normTopk: boolean;
}

/** bf16 values drawn from `scale` · [−0.5, 0.5): their bits and the values they hold. */
function bf16s(n: number, draw: () => number): { bits: Uint16Array<ArrayBuffer>; vals: Float64Array } {
  const bits = new Uint16Array(n + (n % 2)); // whole u32 words
  const vals = new Float64Array(n);
  for (let i = 0; i < n; i++) [bits[i], vals[i]] = bf16(draw());
  return { bits, vals };
}

/** The CPU's routing of one row's logits among `allowed` experts: ids by rank and softmax probabilities. */
function topK(lg: Float64Array, allowed: boolean[], k: number): { ids: number[]; p: number[]; gap: number } {
  const order = [...lg.keys()].filter((e) => allowed[e]).sort((a, b) => lg[b]! - lg[a]! || a - b);
  const m = lg[order[0]!]!;
  const s = order.reduce((acc, e) => acc + Math.exp(lg[e]! - m), 0);
  const ids = order.slice(0, k);
  // the smallest gap between neighbours at the top (k + 1 deep): below ~1e-5 f32 sums may order them otherwise
  let gap = Infinity;
  for (let i = 0; i < Math.min(k, order.length - 1); i++) {
    gap = Math.min(gap, lg[order[i]!]! - lg[order[i + 1]!]!);
  }
  return { ids, p: ids.map((e) => Math.exp(lg[e]! - m) / s), gap };
}

Deno.test("normRoute: norm, router and routing in one dispatch equal a CPU reference", async () => {
  const gpu = await createGpu();
  const device = gpu.device;
  const { memory, stepBuffer: step, ctx } = kernelContext(device, 64);
  const S = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST | GPUBufferUsage.COPY_SRC;
  const put = (a: ArrayBufferView<ArrayBuffer>) => {
    const b = memory.alloc("in", Math.max(16, a.byteLength), S, "activations");
    device.queue.writeBuffer(b.buffer, 0, a);
    return b.buffer;
  };
  const zeros = (bytes: number) => memory.alloc("out", bytes, S, "activations").buffer;
  const cases: Case[] = [
    { rows: 3, dim: 2048, experts: 64, topK: 8, bias: false, masked: false, normTopk: false }, // OLMoE
    { rows: 2, dim: 136, experts: 60, topK: 4, bias: true, masked: true, normTopk: false }, // Qwen's E, 17 chunks
    { rows: 2, dim: 1032, experts: 128, topK: 8, bias: false, masked: true, normTopk: true }, // LANES 16
    { rows: 1, dim: 64, experts: 256, topK: 16, bias: true, masked: false, normTopk: true }, // LANES 8
    { rows: 4, dim: 32, experts: 8, topK: 2, bias: false, masked: true, normTopk: true }, // Mixtral's E
  ];
  try {
    const rand = rng(11);
    let skipped = 0;
    for (const c of cases) {
      assert.ok(normRouteApplies(device, c.dim, c.experts), `${JSON.stringify(c)} applies`);
      const { rows: T, dim: D, experts: E, topK: K } = c;
      const x = Float32Array.from({ length: T * D }, () => 4 * rand());
      const g = bf16s(D, () => 1 + rand());
      const w = bf16s(E * D, () => 0.2 * rand());
      const bias = bf16s(E, () => rand());
      // a slot table of one MoE layer: every third expert not resident (−1)
      const slots = Int32Array.from({ length: E }, (_, e) => (c.masked && e % 3 === 1 ? -1 : e));
      const allowed = [...slots].map((s) => s >= 0);
      const out = {
        xn: zeros(T * D * 4),
        ids: zeros(T * K * 4),
        wts: zeros(T * K * 4),
        uids: zeros(T * K * 4),
        up: zeros(T * K * 4),
        xnorm: zeros(T * 4),
      };
      ctx.params.reset();
      const d = await normRoute(ctx, {
        label: "norm_route",
        layer: 0,
        experts: E,
        topK: K,
        normTopkProb: c.normTopk,
        masked: c.masked,
        dim: D,
        rowsCap: T,
        slots: put(slots),
        topkIds: out.ids,
        topkW: out.wts,
        utopkIds: out.uids,
        utopkP: out.up,
        xnorm: out.xnorm,
        resid: put(x),
        xn: out.xn,
        norm: put(g.bits),
        eps: 1e-6,
        weight: put(w.bits),
        bias: c.bias ? put(bias.bits) : undefined,
      });
      const shape = { t: T, headRows: 0, pos0: 0 };
      device.queue.writeBuffer(step.buffer, 0, packStep(shape, 0));
      const read = async (b: GPUBuffer, bytes: number) => await runAndRead(device, [d], shape, b, bytes);
      const xn = new Float32Array(await read(out.xn, T * D * 4));
      const ids = new Uint32Array(await read(out.ids, T * K * 4));
      const wts = new Float32Array(await read(out.wts, T * K * 4));
      const uids = new Uint32Array(await read(out.uids, T * K * 4));
      const up = new Float32Array(await read(out.up, T * K * 4));
      const xnorm = new Float32Array(await read(out.xnorm, T * 4));
      for (let t = 0; t < T; t++) {
        const tag = `${JSON.stringify(c)} row ${t}`;
        let ss = 0;
        for (let i = 0; i < D; i++) ss += x[t * D + i]! ** 2;
        const inv = 1 / Math.sqrt(ss / D + 1e-6);
        const want = Float64Array.from({ length: D }, (_, i) => x[t * D + i]! * inv * g.vals[i]!);
        let err = 0;
        for (let i = 0; i < D; i++) err = Math.max(err, Math.abs(xn[t * D + i]! - want[i]!));
        assert.ok(err < 1e-5, `${tag}: xn max error ${err}`);
        const norm = Math.sqrt(want.reduce((a, v) => a + v * v, 0));
        assert.ok(Math.abs(xnorm[t]! - norm) < 1e-5 * norm, `${tag}: ‖xn‖ ${xnorm[t]} against ${norm}`);
        const lg = Float64Array.from({ length: E }, (_, e) => {
          let s = c.bias ? bias.vals[e]! : 0;
          for (let i = 0; i < D; i++) s += w.vals[e * D + i]! * want[i]!;
          return s;
        });
        // the experts' choices (masked when c.masked; weights renormalised when c.normTopk), then the
        // unmasked router's choices with the softmax's own probabilities, for the statistics
        for (const [which, gotIds, gotW] of [["experts'", ids, wts], ["unmasked", uids, up]] as const) {
          const ref = topK(lg, which === "experts'" && c.masked ? allowed : allowed.map(() => true), K);
          if (ref.gap < 1e-4) {
            skipped++;
            continue;
          }
          const total = ref.p.reduce((a, b) => a + b, 0);
          const wantW = which === "experts'" && c.normTopk ? ref.p.map((v) => v / total) : ref.p;
          assert.deepEqual([...gotIds.subarray(t * K, t * K + K)], ref.ids, `${tag} ${which}: ids`);
          for (let k = 0; k < K; k++) {
            assert.ok(Math.abs(gotW[t * K + k]! - wantW[k]!) < 1e-5, `${tag} ${which}: weight ${k}`);
          }
        }
      }
    }
    assert.ok(skipped <= 2, `${skipped} rows skipped for near-ties`);
  } finally {
    memory.freeAll();
    device.destroy();
  }
});
