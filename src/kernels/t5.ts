/**
 * Kernels of the T5 layout (Switch Transformers): attention with the relative position bias and no
 * scaling (`shaders/t5_attention.wgsl`), the decoder's KV-cache write, the dense MLP's ReLU, the tied
 * head's scale and expert capacity (`shaders/t5_elementwise.wgsl`), and the bucket table of the bias.
 * The experts and the routing statistics are the causal kernels' (`experts()` without `up`,
 * `routerStats()` from a first layer).
 *
 * @module
 */
import { type Dispatch, type KernelContext, paramsLayout, record } from "../gpu/dispatch.ts";

const ATTENTION_PARAMS = paramsLayout(
  "t5_attention.wgsl",
  [
    "n_heads",
    "head_dim",
    "mode",
    "has_bias",
    "bucket_base",
    "rel_offset",
  ] as const,
);
const ELEMENTWISE_PARAMS = paramsLayout(
  "t5_elementwise.wgsl",
  [
    "n",
    "top_k",
    "experts",
    "layer",
    "capacity",
    "f:scale",
  ] as const,
);

const WG = 64;

/** Where attention reads its keys: the call's rows, the decoder's cache (causal), or the encoder output. */
export type T5AttentionMode = "encoder" | "decoder" | "cross";
const MODES: Record<T5AttentionMode, number> = { encoder: 0, decoder: 1, cross: 2 };

/** Options of one T5 attention call site. */
export interface T5AttentionOptions {
  label: string;
  mode: T5AttentionMode;
  numHeads: number;
  headDim: number;
  /** q: [T, H, hd]; k, v: [N, H, hd]; out: [T, H, hd]. */
  q: GPUBuffer;
  k: GPUBuffer;
  v: GPUBuffer;
  out: GPUBuffer;
  /** The stack's relative_attention_bias [num_buckets, H] bf16, or undefined (cross-attention). */
  relBias?: GPUBuffer;
  /** The bucket table ({@link bucketTable}) and where this stack's part starts. */
  buckets: GPUBuffer;
  bucketBase: number;
  /** The table index of relative position 0. */
  relOffset: number;
  /** [0]: encoder positions (cross-attention's key count). */
  meta: GPUBuffer;
}

/** Records one attention call: out = softmax(q·Kᵀ + bias) · V. */
export function t5Attention(ctx: KernelContext, o: T5AttentionOptions): Promise<Dispatch> {
  if (o.headDim > 256) throw new RangeError(`t5Attention ${o.label}: head_dim ${o.headDim} exceeds 256`);
  return record(ctx, {
    label: o.label,
    file: "t5_attention.wgsl",
    params: ATTENTION_PARAMS.pack({
      n_heads: o.numHeads,
      head_dim: o.headDim,
      mode: MODES[o.mode],
      has_bias: o.relBias ? 1 : 0,
      bucket_base: o.bucketBase,
      rel_offset: o.relOffset,
    }),
    buffers: {
      2: o.q,
      3: o.k,
      4: o.v,
      5: o.out,
      6: o.relBias ?? o.buckets,
      7: o.buckets,
      8: o.meta,
    },
    workgroups: (s) => s.t * o.numHeads,
  });
}

/** Records the decoder's cache write: kCache[pos0 + t] = k[t], vCache[pos0 + t] = v[t] (rows of H·hd). */
export function kvWrite(
  ctx: KernelContext,
  o: {
    label: string;
    numHeads: number;
    headDim: number;
    k: GPUBuffer;
    v: GPUBuffer;
    kCache: GPUBuffer;
    vCache: GPUBuffer;
  },
): Promise<Dispatch> {
  return record(ctx, {
    label: o.label,
    file: "t5_attention.wgsl",
    entry: "kv_write",
    params: ATTENTION_PARAMS.pack({
      n_heads: o.numHeads,
      head_dim: o.headDim,
      mode: 0,
      has_bias: 0,
      bucket_base: 0,
      rel_offset: 0,
    }),
    buffers: { 3: o.k, 4: o.v, 9: o.kCache, 10: o.vCache },
    workgroups: (s) => Math.ceil((s.t * o.numHeads * o.headDim) / WG),
  });
}

/** Records a[t, i] = relu(a[t, i]) over [T, n]. */
export function relu(ctx: KernelContext, o: { label: string; a: GPUBuffer; n: number }): Promise<Dispatch> {
  return record(ctx, {
    label: o.label,
    file: "t5_elementwise.wgsl",
    entry: "relu",
    params: ELEMENTWISE_PARAMS.pack({ n: o.n, top_k: 0, experts: 0, layer: 0, capacity: 0, scale: 0 }),
    buffers: { 2: o.a },
    workgroups: (s) => Math.ceil((s.t * o.n) / WG),
  });
}

/** Records a[r, i] *= scale over the call's logits rows [headRows, n]. */
export function scaleHeadRows(
  ctx: KernelContext,
  o: { label: string; a: GPUBuffer; n: number; scale: number },
): Promise<Dispatch> {
  return record(ctx, {
    label: o.label,
    file: "t5_elementwise.wgsl",
    entry: "scale_head",
    params: ELEMENTWISE_PARAMS.pack({ n: o.n, top_k: 0, experts: 0, layer: 0, capacity: 0, scale: o.scale }),
    buffers: { 2: o.a },
    workgroups: (s) => Math.ceil((s.headRows * o.n) / WG),
  });
}

/** Records expert capacity: routing weights of tokens past `capacity` per expert (counted in `counts`) become 0. */
export function expertCapacity(
  ctx: KernelContext,
  o: {
    label: string;
    layer: number;
    experts: number;
    topK: number;
    capacity: number;
    topkIds: GPUBuffer;
    topkW: GPUBuffer;
    /** [moeLayers, E] u32 tokens counted so far in this pass of the stack. */
    counts: GPUBuffer;
  },
): Promise<Dispatch> {
  return record(ctx, {
    label: o.label,
    file: "t5_elementwise.wgsl",
    entry: "capacity",
    params: ELEMENTWISE_PARAMS.pack({
      n: 0,
      top_k: o.topK,
      experts: o.experts,
      layer: o.layer,
      capacity: o.capacity,
      scale: 0,
    }),
    buffers: { 2: o.topkW, 3: o.topkIds, 4: o.counts },
    workgroups: () => Math.ceil(o.experts / WG),
  });
}

/**
 * T5's `_relative_position_bucket` for `relative = memory_position − query_position`, in float32 as
 * torch computes it (`torch.log` of a float tensor, divided and multiplied in float32, truncated).
 */
export function relativePositionBucket(
  relative: number,
  bidirectional: boolean,
  numBuckets: number,
  maxDistance: number,
): number {
  const f = Math.fround;
  let buckets = numBuckets;
  let bucket = 0;
  let rp: number;
  if (bidirectional) {
    buckets = Math.floor(buckets / 2);
    if (relative > 0) bucket += buckets;
    rp = Math.abs(relative);
  } else {
    rp = -Math.min(relative, 0);
  }
  const maxExact = Math.floor(buckets / 2);
  if (rp < maxExact) return bucket + rp;
  // max_exact + (torch.log(rp.float() / max_exact) / math.log(max_distance / max_exact) * (nb - max_exact)).to(long)
  const logRatio = f(Math.log(f(rp / maxExact)));
  const denom = f(Math.log(maxDistance / maxExact));
  const scaled = f(f(logRatio / denom) * (buckets - maxExact));
  const large = Math.min(maxExact + Math.trunc(scaled), buckets - 1);
  return bucket + large;
}

/**
 * The bucket of every relative position j − i in (−span, span), for the bidirectional (encoder) stack
 * then the unidirectional (decoder) stack: `[2·(2·span − 1)]` u32, entry `base + (j − i) + span − 1`
 * with base 0 (encoder) or 2·span − 1 (decoder).
 */
export function bucketTable(span: number, numBuckets: number, maxDistance: number): Uint32Array<ArrayBuffer> {
  const n = 2 * span - 1;
  const out = new Uint32Array(2 * n);
  for (let r = -(span - 1); r <= span - 1; r++) {
    out[r + span - 1] = relativePositionBucket(r, true, numBuckets, maxDistance);
    out[n + r + span - 1] = relativePositionBucket(r, false, numBuckets, maxDistance);
  }
  return out;
}
