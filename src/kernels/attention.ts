/**
 * `shaders/rope.wgsl` and `shaders/attention.wgsl`: rotary embedding with the KV-cache write, then
 * causal grouped-query attention over the cache.
 *
 * @module
 */
import { type Dispatch, type KernelContext, paramsLayout, record } from "../gpu/dispatch.ts";
import { MAX_SPLITS, splitCount } from "./step.ts";

const ROPE_PARAMS = paramsLayout(
  "rope.wgsl",
  [
    "n_heads",
    "n_kv",
    "head_dim",
    "ctx",
    "norm_mode",
    "_p0",
    "_p1",
    "f:eps",
  ] as const,
);
const ATTENTION_PARAMS = paramsLayout(
  "attention.wgsl",
  ["n_heads", "n_kv", "head_dim", "window", "f:scale", "has_sinks"] as const,
);

/** Attention geometry. */
export interface AttentionShape {
  numHeads: number;
  numKvHeads: number;
  headDim: number;
  /** Positions the KV cache holds. */
  contextLength: number;
}

/** Where the q/k RMSNorm sits: none, per head (Qwen3), or over the whole projection (OLMoE). */
export type QkNormMode = "none" | "per_head" | "whole";

/**
 * Records the attention prologue: q/k RMSNorm, RoPE on q (into `q`) and k (into the cache), v
 * copied beside it. qkv: [T, H·hd + 2·Hkv·hd] (q | k | v); q: [T, H, hd]; caches: [ctx, Hkv, hd];
 * rope: [ctx, hd/2] cos then [ctx, hd/2] sin (see {@link ropeTable}).
 */
export function ropeKv(
  ctx: KernelContext,
  o: AttentionShape & {
    label: string;
    rope: GPUBuffer;
    qkv: GPUBuffer;
    q: GPUBuffer;
    kCache: GPUBuffer;
    vCache: GPUBuffer;
    norm: QkNormMode;
    /** bf16 norm weights, when `norm` is not "none". */
    qNorm?: GPUBuffer;
    kNorm?: GPUBuffer;
    eps: number;
  },
): Promise<Dispatch> {
  if (o.headDim > 256) throw new RangeError(`rope ${o.label}: head_dim ${o.headDim} exceeds 256`);
  if (o.norm !== "none" && (!o.qNorm || !o.kNorm)) {
    throw new RangeError(`rope ${o.label}: norm weights missing`);
  }
  return record(ctx, {
    label: o.label,
    file: "rope.wgsl",
    params: ROPE_PARAMS.pack({
      n_heads: o.numHeads,
      n_kv: o.numKvHeads,
      head_dim: o.headDim,
      ctx: o.contextLength,
      norm_mode: o.norm === "none" ? 0 : o.norm === "per_head" ? 1 : 2,
      eps: o.eps,
    }),
    // without norms the weight bindings are unused by the math but still bound: any buffer does
    buffers: {
      2: o.rope,
      3: o.qkv,
      4: o.q,
      5: o.kCache,
      6: o.vCache,
      7: o.qNorm ?? o.rope,
      8: o.kNorm ?? o.rope,
    },
    workgroups: (s) => s.t * (o.numHeads + o.numKvHeads),
  });
}

/** Bytes of the attention partials for `rows` queries: [rows, H, MAX_SPLITS, hd + 2] f32. */
export function attentionScratchBytes(rows: number, numHeads: number, headDim: number): number {
  return rows * numHeads * MAX_SPLITS * (headDim + 2) * 4;
}

/**
 * Records causal attention over the cache, split over keys: `partial` then `combine`.
 * out[t, h] = softmax(q·Kᵀ·scale) · V over positions ≤ pos0 + t (and within the window); with
 * `sinks`, head h's sink logit joins the softmax's denominator (gpt-oss), and nothing else changes.
 */
export async function attention(
  ctx: KernelContext,
  o: AttentionShape & {
    label: string;
    q: GPUBuffer;
    kCache: GPUBuffer;
    vCache: GPUBuffer;
    /** [maxRows, H, MAX_SPLITS, hd + 2] f32, see {@link attentionScratchBytes}. */
    partials: GPUBuffer;
    out: GPUBuffer;
    /** Sliding-window span (keys pos − window < j ≤ pos), or null. */
    window: number | null;
    /** [H] bf16: a learned logit per head that joins each softmax's denominator (gpt-oss), or none. */
    sinks?: GPUBuffer;
  },
): Promise<Dispatch[]> {
  if (o.headDim > 256 || o.headDim % 4 !== 0) {
    throw new RangeError(`attention ${o.label}: head_dim ${o.headDim} must be a multiple of 4 up to 256`);
  }
  const params = ATTENTION_PARAMS.pack({
    n_heads: o.numHeads,
    n_kv: o.numKvHeads,
    head_dim: o.headDim,
    window: o.window ?? 0,
    scale: 1 / Math.sqrt(o.headDim),
    has_sinks: o.sinks ? 1 : 0,
  });
  const constants = { MAX_SPLITS };
  return [
    await record(ctx, {
      label: `${o.label}.partial`,
      file: "attention.wgsl",
      entry: "partial",
      constants,
      params,
      buffers: { 2: o.q, 3: o.kCache, 4: o.vCache, 5: o.partials },
      workgroups: (s) => s.t * o.numHeads * splitCount(s.pos0 + s.t),
    }),
    await record(ctx, {
      label: `${o.label}.combine`,
      file: "attention.wgsl",
      entry: "combine",
      constants,
      params,
      // without sinks the binding is unused by the math but still bound: any buffer not written here does
      buffers: { 5: o.partials, 6: o.out, 7: o.sinks ?? o.q },
      workgroups: (s) => s.t * o.numHeads,
    }),
  ];
}

/**
 * The RoPE table for `contextLength` positions: cos then sin, [ctx, hd/2] each, computed in f64.
 * torch: inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2).float() / dim)); freqs = t * inv_freq
 */
export function ropeTable(headDim: number, theta: number, contextLength: number): Float32Array<ArrayBuffer> {
  const half = headDim / 2;
  const out = new Float32Array(2 * contextLength * half);
  for (let i = 0; i < half; i++) {
    const invFreq = Math.fround(1 / Math.fround(theta ** Math.fround((2 * i) / headDim)));
    for (let p = 0; p < contextLength; p++) {
      const a = Math.fround(p * invFreq);
      out[p * half + i] = Math.cos(a);
      out[contextLength * half + p * half + i] = Math.sin(a);
    }
  }
  return out;
}
