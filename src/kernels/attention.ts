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
  ["n_heads", "n_kv", "head_dim", "window", "f:scale", "has_sinks", "ctx"] as const,
);

/** Attention geometry. */
export interface AttentionShape {
  numHeads: number;
  numKvHeads: number;
  headDim: number;
  /** Positions each sequence's region of the KV cache holds. */
  contextLength: number;
}

/** Where the q/k RMSNorm sits: none, per head (Qwen3), or over the whole projection (OLMoE). */
export type QkNormMode = "none" | "per_head" | "whole";

/**
 * Records the attention prologue: q/k RMSNorm, RoPE on q (into `q`) and k (into the cache), v
 * copied beside it, each row at its own position in its own sequence's region of the cache (`rows`,
 * src/kernels/step.ts). qkv: [T, H·hd + 2·Hkv·hd] (q | k | v); q: [T, H, hd]; caches: [slots, ctx,
 * Hkv, hd]; rope: [ctx, hd/2] cos then [ctx, hd/2] sin (see {@link ropeTable}).
 */
export function ropeKv(
  ctx: KernelContext,
  o: AttentionShape & {
    label: string;
    rope: GPUBuffer;
    /** The call's `Row` table. */
    rows: GPUBuffer;
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
  if (o.headDim > MAX_HEAD_DIM) {
    throw new RangeError(`rope ${o.label}: head_dim ${o.headDim} exceeds ${MAX_HEAD_DIM}`);
  }
  if (o.norm !== "none" && (!o.qNorm || !o.kNorm)) {
    throw new RangeError(`rope ${o.label}: norm weights missing`);
  }
  return record(ctx, {
    label: o.label,
    file: "rope.wgsl",
    // a norm over the whole projection (OLMoE) has each workgroup read its row's H·hd values first:
    // 256 threads read them in a quarter of the rounds of 64
    constants: { WG: o.norm === "whole" ? 256 : 64 },
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
      9: o.rows,
    },
    workgroups: (s) => s.t * (o.numHeads + o.numKvHeads),
  });
}

/** Bytes of the attention partials for `rows` queries: [rows, H, MAX_SPLITS, hd + 2] f32. */
export function attentionScratchBytes(rows: number, numHeads: number, headDim: number): number {
  return rows * numHeads * MAX_SPLITS * (headDim + 2) * 4;
}

/** Threads of an attention workgroup (shaders/attention.wgsl `WG`): a chunk of keys. */
const WG = 64;

/** The widest head the rotary and attention kernels take (a thread holds 4 of its values: 4 · WG). */
export const MAX_HEAD_DIM = 4 * WG;

/** Whether the rotary and attention kernels take heads `headDim` wide: a multiple of 4 up to {@link MAX_HEAD_DIM}. */
export function headDimSupported(headDim: number): boolean {
  return headDim % 4 === 0 && headDim <= MAX_HEAD_DIM;
}

/**
 * Records causal attention over the cache, split over keys: `partial` then `combine`.
 * out[t, h] = softmax(q·Kᵀ·scale) · V over the positions ≤ rows[t].pos of row t's sequence (and
 * within the window); with `sinks`, head h's sink logit joins the softmax's denominator (gpt-oss), and
 * nothing else changes.
 */
export async function attention(
  ctx: KernelContext,
  o: AttentionShape & {
    label: string;
    q: GPUBuffer;
    /** [slots, ctx, Hkv, hd] f32 each. */
    kCache: GPUBuffer;
    vCache: GPUBuffer;
    /** The call's `Row` table. */
    rows: GPUBuffer;
    /** [maxRows, H, MAX_SPLITS, hd + 2] f32, see {@link attentionScratchBytes}. */
    partials: GPUBuffer;
    out: GPUBuffer;
    /** Sliding-window span (keys pos − window < j ≤ pos), or null. */
    window: number | null;
    /** [H] bf16: a learned logit per head that joins each softmax's denominator (gpt-oss), or none. */
    sinks?: GPUBuffer;
  },
): Promise<Dispatch[]> {
  if (!headDimSupported(o.headDim)) {
    throw new RangeError(
      `attention ${o.label}: head_dim ${o.headDim} must be a multiple of 4 up to ${MAX_HEAD_DIM}`,
    );
  }
  const params = ATTENTION_PARAMS.pack({
    n_heads: o.numHeads,
    n_kv: o.numKvHeads,
    head_dim: o.headDim,
    window: o.window ?? 0,
    scale: 1 / Math.sqrt(o.headDim),
    has_sinks: o.sinks ? 1 : 0,
    ctx: o.contextLength,
  });
  const constants = { MAX_SPLITS, HD4: o.headDim / 4 };
  return [
    await record(ctx, {
      label: `${o.label}.partial`,
      file: "attention.wgsl",
      entry: "partial",
      constants,
      params,
      buffers: { 2: o.q, 3: o.kCache, 4: o.vCache, 5: o.partials, 8: o.rows },
      workgroups: (s) => s.t * o.numHeads * (s.splits ?? splitCount(s.pos0 + s.t)),
    }),
    await record(ctx, {
      label: `${o.label}.combine`,
      file: "attention.wgsl",
      entry: "combine",
      constants,
      params,
      // without sinks the binding is unused by the math but still bound: any buffer not written here does
      buffers: { 5: o.partials, 6: o.out, 7: o.sinks ?? o.q, 8: o.rows },
      workgroups: (s) => s.t * o.numHeads,
    }),
  ];
}

/**
 * The RoPE table for `contextLength` positions: cos then sin, [ctx, hd/2] each, computed in f64.
 * torch: inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2).float() / dim)); freqs = t * inv_freq
 */
export function ropeTable(headDim: number, theta: number, contextLength: number): Float32Array<ArrayBuffer> {
  const invFreq = new Float32Array(headDim / 2);
  for (let i = 0; i < headDim / 2; i++) {
    invFreq[i] = Math.fround(1 / Math.fround(theta ** Math.fround((2 * i) / headDim)));
  }
  return rotaryTable(invFreq, contextLength);
}

/** YaRN's rotary parameters (transformers' `rope_parameters` of rope_type "yarn", in camelCase). */
export interface YarnRope {
  /** How much longer than trained the context may be (`factor`). */
  readonly factor: number;
  /** Rotations below which a dimension is interpolated, above which extrapolated (`beta_fast`, `beta_slow`). */
  readonly betaFast: number;
  readonly betaSlow: number;
  /** The context the model was pretrained on (`original_max_position_embeddings`). */
  readonly originalMaxPositionEmbeddings: number;
  /** Round the correction range outwards to whole dimensions (`truncate`; transformers' default is true). */
  readonly truncate: boolean;
  /** cos and sin are multiplied by it (`attention_factor`, else 0.1·ln(factor) + 1: see the gpt-oss config). */
  readonly attentionFactor: number;
}

/**
 * YaRN's inverse frequencies [hd/2], rounded to f32 where torch computes in f32, as transformers'
 * `_compute_yarn_parameters`: dimensions that turn fewer than `betaSlow` times over the original
 * context are interpolated (divided by `factor`), those turning more than `betaFast` times are kept
 * (extrapolated), and a linear ramp blends the ones between.
 */
export function yarnInvFreq(headDim: number, theta: number, y: YarnRope): Float32Array<ArrayBuffer> {
  const f = Math.fround;
  const dim = headDim;
  // torch: (dim * math.log(max_position_embeddings / (num_rotations * 2 * math.pi))) / (2 * math.log(base))
  const correctionDim = (rotations: number) =>
    (dim * Math.log(y.originalMaxPositionEmbeddings / (rotations * 2 * Math.PI))) / (2 * Math.log(theta));
  let low = correctionDim(y.betaFast);
  let high = correctionDim(y.betaSlow);
  if (y.truncate) {
    low = Math.floor(low);
    high = Math.ceil(high);
  }
  low = Math.max(low, 0);
  high = Math.min(high, dim - 1);
  if (low === high) high += 0.001; // torch: "Prevent singularity"
  const out = new Float32Array(dim / 2);
  for (let i = 0; i < dim / 2; i++) {
    const posFreq = f(theta ** f((2 * i) / dim)); // torch: base ** (torch.arange(0, dim, 2).float() / dim)
    const extrapolation = f(1 / posFreq);
    const interpolation = f(1 / f(f(y.factor) * posFreq));
    // torch: ramp = clamp((arange(dim // 2) - low) / (high - low), 0, 1); extrapolation_factor = 1 - ramp
    const ramp = Math.min(1, Math.max(0, f(f(i - f(low)) / f(high - low))));
    const keep = f(1 - ramp);
    // torch: inv_freq = inv_freq_interpolation * (1 - factor) + inv_freq_extrapolation * factor
    out[i] = f(f(interpolation * f(1 - keep)) + f(extrapolation * keep));
  }
  return out;
}

/**
 * The RoPE table with YaRN's frequencies and attention scaling, as {@link ropeTable} lays it out.
 * torch: cos = emb.cos() * self.attention_scaling; sin = emb.sin() * self.attention_scaling
 */
export function yarnRopeTable(
  headDim: number,
  theta: number,
  contextLength: number,
  y: YarnRope,
): Float32Array<ArrayBuffer> {
  return rotaryTable(yarnInvFreq(headDim, theta, y), contextLength, y.attentionFactor);
}

/** cos then sin of position × inverse frequency, [ctx, hd/2] each, times `scale` (exact when 1). */
function rotaryTable(invFreq: Float32Array, contextLength: number, scale = 1): Float32Array<ArrayBuffer> {
  const half = invFreq.length;
  const s = Math.fround(scale);
  const out = new Float32Array(2 * contextLength * half);
  for (let i = 0; i < half; i++) {
    for (let p = 0; p < contextLength; p++) {
      const a = Math.fround(p * invFreq[i]!);
      out[p * half + i] = Math.fround(Math.cos(a)) * s;
      out[contextLength * half + p * half + i] = Math.fround(Math.sin(a)) * s;
    }
  }
  return out;
}
