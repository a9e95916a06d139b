/**
 * What every decoder-only program (the causal families and gpt-oss) does the same way: its dense weights
 * with q, k and v fused, the buffers the engine reads and writes (`ProgramIo`), and the head of a pass —
 * final RMSNorm and lm_head over the logits rows, the routing statistics of every MoE layer, and the
 * sampler. They use the run state's conventional buffer names (`ids`, `logits`, `xf`, `utopk_ids`, …).
 *
 * @module
 */
import { type CallShape, type Dispatch, type KernelContext, onlyWhen } from "../gpu/dispatch.ts";
import type { TrackedBuffer } from "../gpu/memory.ts";
import { attention, type AttentionShape, type QkNormMode, ropeKv } from "../kernels/attention.ts";
import { fastPathApplies, matmul } from "../kernels/matmul.ts";
import { rmsNorm } from "../kernels/norm.ts";
import { router, routerStats } from "../kernels/router.ts";
import { sampler } from "../kernels/sample.ts";
import type { ExpertCache } from "../moe/expert_cache.ts";
import { bufferNamed, type DenseWeight, type ProgramIo } from "./family.ts";

/** A layer's attention projections and their optional biases, by tensor name. */
export interface QkvNames {
  q: string;
  k: string;
  v: string;
  qBias?: string;
  kBias?: string;
  vBias?: string;
}

/**
 * The dense weights, each buffer once: the tensors named in `single` (undefined ones skipped, repeats
 * once), then per layer q, k and v (and their biases) concatenated into one buffer (`layer{i}.qkv`,
 * `layer{i}.qkv_bias`), so that one GEMV computes all three.
 */
export function denseWithFusedQkv(
  single: Iterable<string | undefined>,
  layers: readonly QkvNames[],
): DenseWeight[] {
  const names = new Set<string>();
  for (const n of single) if (n) names.add(n);
  const fused = layers.flatMap((l, i) => [
    { name: `layer${i}.qkv`, parts: [l.q, l.k, l.v] },
    ...(l.qBias && l.kBias && l.vBias
      ? [{ name: `layer${i}.qkv_bias`, parts: [l.qBias, l.kBias, l.vBias] }]
      : []),
  ]);
  return [...[...names].map((n) => ({ name: n, parts: [n] })), ...fused];
}

/** The engine's view of a decoder-only program's run state. */
export function decoderIo(state: ReadonlyMap<string, TrackedBuffer>): ProgramIo {
  const b = (n: string) => bufferNamed(state, n);
  return {
    ids: b("ids"),
    rows: b("rows"),
    logits: b("logits"),
    generated: b("generated"),
    samplingParams: b("sampling"),
    stats: b("stats"),
    topkIds: b("topk_ids"),
  };
}

/** Options of {@link decoderHead}. */
export interface DecoderHeadOptions {
  /** The final norm's weight and the head's, [V, D]. */
  norm: GPUBuffer;
  lmHead: GPUBuffer;
  dim: number;
  vocab: number;
  eps: number;
  experts: number;
  topK: number;
  /** Rows per MoE layer region of the router's statistics scratch. */
  rowsCap: number;
  /** Tokens per slot of `generated`. */
  maxGenerated: number;
}

/** final_norm → lm_head over the logits rows, router_stats once per call; and the sampler. */
export async function decoderHead(
  ctx: KernelContext,
  state: ReadonlyMap<string, TrackedBuffer>,
  cache: ExpertCache,
  o: DecoderHeadOptions,
): Promise<{ post: Dispatch[]; sample: Dispatch }> {
  const b = (n: string) => bufferNamed(state, n);
  const post = [
    await rmsNorm(ctx, {
      label: "final_norm",
      weight: o.norm,
      x: b("x"),
      y: b("xf"),
      cols: o.dim,
      eps: o.eps,
      headRows: true,
    }),
    ...await matmul(ctx, {
      label: "lm_head",
      weight: o.lmHead,
      x: b("xf"),
      y: b("logits"),
      inDim: o.dim,
      outDim: o.vocab,
      headRows: true,
    }),
    // routing statistics of every MoE layer, once per call
    await routerStats(ctx, {
      label: "router_stats",
      layers: cache.moeLayers,
      experts: o.experts,
      topK: o.topK,
      rowsCap: o.rowsCap,
      slots: cache.tableBuffer.buffer,
      utopkIds: b("utopk_ids"),
      utopkP: b("utopk_p"),
      xnorm: b("xnorm"),
      stats: b("stats"),
    }),
  ];
  const sample = await sampler(ctx, {
    label: "sample",
    params: b("sampling"),
    logits: b("logits"),
    rows: b("rows"),
    generated: b("generated"),
    maxGenerated: o.maxGenerated,
  });
  return { post, sample };
}

/**
 * Calls of up to this many rows (decode steps of up to 16 sequences) normalise inside the GEMV that
 * reads the norm's output (one dispatch instead of two); longer ones (prefill chunks) run the norm on
 * its own first: every workgroup of a fused GEMV computes its rows' norms again, which at 32 rows cost
 * more than the dispatch it saves (prefill of a 512-token prompt 2,108–2,120 tok/s fused against
 * 2,233–2,250 not, on the H200, 2026-12-03).
 */
export const FUSED_NORM_MAX_ROWS = 16;

/**
 * An RMSNorm (`norm`: x into y) and the GEMV `then` that reads its output: on the GEMV's fast path both
 * recorded ways, the GEMV with the norm inside it for calls of up to {@link FUSED_NORM_MAX_ROWS} rows
 * and the two dispatches for longer ones; else the two dispatches.
 */
async function normThen(
  ctx: KernelContext,
  norm: { label: string; weight: GPUBuffer; x: GPUBuffer; y: GPUBuffer; cols: number; eps: number },
  then: (fused?: { weight: GPUBuffer; eps: number }) => Promise<Dispatch[]>,
): Promise<Dispatch[]> {
  const apart = [await rmsNorm(ctx, norm), ...await then()];
  if (!fastPathApplies({ inDim: norm.cols })) return apart;
  const short = (s: CallShape) => s.t <= FUSED_NORM_MAX_ROWS;
  return [
    ...apart.map((d) => onlyWhen(d, (s) => !short(s))),
    ...(await then({ weight: norm.weight, eps: norm.eps })).map((d) => onlyWhen(d, short)),
  ];
}

/** One layer's attention half, by buffer: what {@link attentionBlock} reads. */
export interface AttentionBlockOptions {
  /** `layer{i}`: labels, the fused qkv buffers and the layer's KV cache. */
  layer: number;
  geo: AttentionShape;
  dim: number;
  eps: number;
  inputNorm: GPUBuffer;
  /** The fused [(H + 2·Hkv)·hd, D] projection and its bias, if any. */
  qkv: GPUBuffer;
  qkvBias?: GPUBuffer;
  /** q/k RMSNorm before rotary (Qwen3 per head, OLMoE over the projection), with its weights. */
  qkNorm: QkNormMode;
  qNorm?: GPUBuffer;
  kNorm?: GPUBuffer;
  /** Sliding-window span of this layer, or null. */
  window: number | null;
  /** [H] bf16 sink logits (gpt-oss). */
  sinks?: GPUBuffer;
  o: GPUBuffer;
  oBias?: GPUBuffer;
  /** The post-attention norm's weight, or none where the layer's routing does that norm ({@link routeBlock}). */
  postNorm?: GPUBuffer;
}

/**
 * A decoder layer up to its MLP: input_norm → qkv_proj (+bias) (one dispatch on the GEMV's fast path)
 * → rotary and the KV cache write (with the q/k norm) → attention → o_proj (+bias) added into the
 * residual `x` → post_norm into `xn` (unless the layer's routing does it).
 * torch: residual + self.self_attn(self.input_layernorm(hidden_states)), then post_attention_layernorm
 */
export async function attentionBlock(
  ctx: KernelContext,
  state: ReadonlyMap<string, TrackedBuffer>,
  o: AttentionBlockOptions,
): Promise<Dispatch[]> {
  const b = (n: string) => bufferNamed(state, n);
  const p = `layer${o.layer}`;
  const { numHeads: H, numKvHeads: Hkv, headDim: hd } = o.geo;
  const cache = { kCache: b(`kv.${o.layer}.k`), vCache: b(`kv.${o.layer}.v`), rows: b("rows") };
  const qkv = (norm?: { weight: GPUBuffer; eps: number }) =>
    matmul(ctx, {
      label: `${p}.qkv_proj`,
      weight: o.qkv,
      bias: o.qkvBias,
      x: b(norm ? "x" : "xn"),
      y: b("qkv"),
      inDim: o.dim,
      outDim: (H + 2 * Hkv) * hd,
      norm,
    });
  return [
    ...await normThen(
      ctx,
      { label: `${p}.input_norm`, weight: o.inputNorm, x: b("x"), y: b("xn"), cols: o.dim, eps: o.eps },
      qkv,
    ),
    await ropeKv(ctx, {
      ...o.geo,
      ...cache,
      label: `${p}.rope`,
      rope: b("rope"),
      qkv: b("qkv"),
      q: b("q"),
      norm: o.qkNorm,
      qNorm: o.qNorm,
      kNorm: o.kNorm,
      eps: o.eps,
    }),
    ...await attention(ctx, {
      ...o.geo,
      ...cache,
      label: `${p}.attention`,
      q: b("q"),
      partials: b("attn_partials"),
      out: b("attn"),
      window: o.window,
      sinks: o.sinks,
    }),
    ...await matmul(ctx, {
      label: `${p}.o_proj`,
      weight: o.o,
      bias: o.oBias,
      x: b("attn"),
      y: b("x"),
      inDim: H * hd,
      outDim: o.dim,
      accumulate: true,
    }),
    ...o.postNorm
      ? [
        await rmsNorm(ctx, {
          label: `${p}.post_norm`,
          weight: o.postNorm,
          x: b("x"),
          y: b("xn"),
          cols: o.dim,
          eps: o.eps,
        }),
      ]
      : [],
  ];
}

/** One MoE layer's router, by buffer: what {@link routeBlock} reads. */
export interface RouteBlockOptions {
  layer: number;
  moeLayer: number;
  dim: number;
  experts: number;
  topK: number;
  normTopkProb: boolean;
  masked: boolean;
  rowsCap: number;
  /** The post-attention norm before the router: its weight and epsilon. */
  postNorm: GPUBuffer;
  eps: number;
  router: GPUBuffer;
  routerBias?: GPUBuffer;
}

/**
 * The post-attention norm of the residual `x` into `xn`, the router's logits (+bias) from `xn`, then
 * routing into `topk_ids` / `topk_w` and the unmasked choices: on the GEMV's fast path the norm runs
 * inside the router's GEMV, which also writes `xn` (two dispatches), else three.
 */
export async function routeBlock(
  ctx: KernelContext,
  state: ReadonlyMap<string, TrackedBuffer>,
  cache: ExpertCache,
  o: RouteBlockOptions,
): Promise<Dispatch[]> {
  const b = (n: string) => bufferNamed(state, n);
  const p = `layer${o.layer}`;
  return [
    ...await normThen(
      ctx,
      { label: `${p}.post_norm`, weight: o.postNorm, x: b("x"), y: b("xn"), cols: o.dim, eps: o.eps },
      (norm) =>
        matmul(ctx, {
          label: `${p}.router`,
          weight: o.router,
          bias: o.routerBias,
          x: b(norm ? "x" : "xn"),
          y: b("router_logits"),
          inDim: o.dim,
          outDim: o.experts,
          // the router's GEMV writes xn too: the experts read it
          norm: norm && { ...norm, out: b("xn") },
        }),
    ),
    await router(ctx, {
      label: `${p}.route`,
      layer: o.moeLayer,
      experts: o.experts,
      topK: o.topK,
      normTopkProb: o.normTopkProb,
      masked: o.masked,
      dim: o.dim,
      rowsCap: o.rowsCap,
      logits: b("router_logits"),
      slots: cache.tableBuffer.buffer,
      x: b("xn"),
      topkIds: b("topk_ids"),
      topkW: b("topk_w"),
      utopkIds: b("utopk_ids"),
      utopkP: b("utopk_p"),
      xnorm: b("xnorm"),
    }),
  ];
}
