/**
 * The skeleton every decoder-only program (the causal families and gpt-oss) shares: the run-state
 * buffers they all have, and a pass recorded as embed → one block per layer → final norm, lm_head,
 * routing statistics and the sampler. A family's program fills in its blocks
 * ({@link DecoderProgram.block}) and its extra buffers; the rest is here, once.
 *
 * Axes: T = rows in a call (≤ maxRows), D = hidden, H / Hkv = query / key-value heads, hd = head
 * width, E = experts, K = experts per token, V = vocabulary, ctx = context length, S = sequences
 * decoded together (slots).
 *
 * @module
 */
import type { Dispatch } from "../gpu/dispatch.ts";
import type { Allocation } from "../gpu/memory.ts";
import { attentionScratchBytes } from "../kernels/attention.ts";
import { embed } from "../kernels/embed.ts";
import type { ExpertCache } from "../moe/expert_cache.ts";
import {
  attentionBlock,
  type AttentionBlockOptions,
  decoderHead,
  decoderIo,
  routeBlock,
} from "./decoder_parts.ts";
import {
  activation,
  bufferNamed,
  type BuildInit,
  type LayerDispatches,
  logitRows,
  type ModelProgram,
  type Pass,
  type ProgramIo,
  type RunShape,
  sequenceState,
} from "./family.ts";
import type { DecoderNames, DecoderSpec } from "./decoder_config.ts";

/** What a family's run state adds to the shared one. */
export interface DecoderRunStateOptions {
  /** MoE layers (each has its own unmasked routing rows). */
  moeLayers: number;
  /** I: width of each token-expert's activation `h`, [T·K, I]. */
  expertWidth: number;
  /**
   * Words of `attn_partials` beyond attention's own [T, H, MAX_SPLITS, hd + 2], when another stage
   * shares that buffer.
   */
  partialsWords?: number;
  /** The family's own buffers. */
  extra?: Allocation[];
}

/**
 * Every run-state buffer (llama2.c's `RunState`) of a decoder-only program for `shape`: the one list
 * that the footprint counts and the engine allocates. Shapes per call of T ≤ maxRows rows.
 */
export function decoderRunState(spec: DecoderSpec, shape: RunShape, o: DecoderRunStateOptions): Allocation[] {
  const { hiddenSize: D, numHeads: H, numKvHeads: Hkv, headDim: hd, numExperts: E, topK: K } = spec;
  const T = shape.maxRows;
  const L = o.moeLayers;
  const list: Allocation[] = [
    activation("ids", T), //                               [T] u32
    activation("x", T * D), //                             [T, D] residual stream
    activation("xn", T * D), //                            [T, D] normalised
    activation("qkv", T * (H + 2 * Hkv) * hd), //          [T, H·hd + 2·Hkv·hd] (q | k | v)
    activation("q", T * H * hd), //                        [T, H·hd] (normalised and) rotated
    activation("attn", T * H * hd), //                     [T, H·hd]
    //                                                     [T, H, MAX_SPLITS, hd + 2] attention's partials
    activation("attn_partials", Math.max(attentionScratchBytes(T, H, hd) / 4, o.partialsWords ?? 0)),
    activation("router_logits", T * E), //                 [T, E]
    activation("topk_ids", T * K), //                      [T, K] u32 (masked routing)
    activation("topk_w", T * K), //                        [T, K]
    activation("utopk_ids", L * T * K), //                 [moeLayers, T, K] u32 (unmasked routing)
    activation("utopk_p", L * T * K), //                   [moeLayers, T, K]
    activation("xnorm", L * T), //                         [moeLayers, T] ‖x‖
    activation("h", T * K * o.expertWidth), //             [T·K, I] the experts' activations
    ...o.extra ?? [],
    activation("xf", logitRows(shape) * D), //             [logit rows, D] final-normed logits rows
    activation("logits", logitRows(shape) * spec.vocabSize), // [logit rows, V]
    ...sequenceState(shape, T), //                         rows [T] Row, generated [S, maxGenerated], sampling [S]
    activation("stats", L * E * 4), //                     [moeLayers, E, 4] f32
    {
      name: "rope", //                                     [2, ctx, hd/2] cos, sin
      bytes: 2 * shape.contextLength * (hd / 2) * 4,
      usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST,
      category: "activations",
    },
  ];
  // every layer keeps the whole context (a sliding one too: a ring of its window would do)
  for (let i = 0; i < spec.numLayers; i++) {
    for (const kv of ["k", "v"]) {
      list.push({
        name: `kv.${i}.${kv}`, //                          [S, ctx, Hkv, hd] f32
        bytes: shape.sequences * shape.contextLength * Hkv * hd * 4,
        usage: GPUBufferUsage.STORAGE,
        category: "kv",
      });
    }
  }
  return list;
}

/** The per-layer attention options a family chooses; the skeleton fills in the rest. */
export type LayerAttention =
  & Pick<
    AttentionBlockOptions,
    "qkNorm" | "qNorm" | "kNorm" | "window" | "sinks" | "oBias"
  >
  & {
    /** The layer routes to experts ({@link DecoderProgram.route}), whose dispatches do the post-attention norm. */
    routed: boolean;
  };

/** A decoder-only model on the GPU: recorded dispatches over the buffers the engine allocated. */
export abstract class DecoderProgram<S extends DecoderSpec, N extends DecoderNames> implements ModelProgram {
  readonly spec: S;
  readonly names: N;
  readonly shape: RunShape;
  readonly io: ProgramIo;
  protected readonly init: BuildInit;
  decoder: Pass = { pre: [], layers: [], post: [] };
  sample!: Dispatch;

  protected constructor(spec: S, names: N, init: BuildInit) {
    this.spec = spec;
    this.names = names;
    this.shape = init.shape;
    this.init = init;
    this.io = decoderIo(init.state);
  }

  /** Fills the rotary table ([2, ctx, hd/2] cos, sin) and records every dispatch. */
  protected async start(rope: Float32Array<ArrayBuffer>): Promise<void> {
    this.init.ctx.device.queue.writeBuffer(bufferNamed(this.init.state, "rope"), 0, rope);
    await this.record(this.init.cache, this.init.masked);
  }

  /** The block of layer `i`: its attention (see {@link DecoderProgram.attention}), router, experts, MLP. */
  protected abstract block(i: number, cache: ExpertCache, masked: boolean): Promise<LayerDispatches>;

  /** A dense weight buffer by name. */
  protected weight(name: string): GPUBuffer {
    return bufferNamed(this.init.weights, name);
  }

  /** A run-state buffer by name. */
  protected buffer(name: string): GPUBuffer {
    return bufferNamed(this.init.state, name);
  }

  /**
   * Layer `i`'s attention half, up to its post-attention norm into `xn` ({@link attentionBlock}), or up
   * to the residual add when the layer is `routed` (its routing normalises).
   */
  protected attention(i: number, o: LayerAttention): Promise<Dispatch[]> {
    const spec = this.spec;
    const l = this.names.layers[i]!;
    return attentionBlock(this.init.ctx, this.init.state, {
      ...o,
      layer: i,
      geo: {
        numHeads: spec.numHeads,
        numKvHeads: spec.numKvHeads,
        headDim: spec.headDim,
        contextLength: this.shape.contextLength,
      },
      dim: spec.hiddenSize,
      eps: spec.rmsNormEps,
      inputNorm: this.weight(l.inputNorm),
      // torch: q_proj, k_proj, v_proj, one GEMV over the rows of all three (denseWithFusedQkv)
      qkv: this.weight(`layer${i}.qkv`),
      qkvBias: l.qBias ? this.weight(`layer${i}.qkv_bias`) : undefined,
      o: this.weight(l.o),
      postNorm: o.routed ? undefined : this.weight(l.postNorm),
    });
  }

  /**
   * MoE layer `moeLayer`'s routing (layer `i`): the post-attention norm into `xn`, its router (and bias)
   * over `xn`, then the top-k into `topk_ids` / `topk_w` ({@link routeBlock}).
   */
  protected route(
    i: number,
    moeLayer: number,
    cache: ExpertCache,
    masked: boolean,
    o: { router: string; routerBias?: string; normTopkProb: boolean },
  ): Promise<Dispatch[]> {
    const spec = this.spec;
    return routeBlock(this.init.ctx, this.init.state, cache, {
      layer: i,
      moeLayer,
      dim: spec.hiddenSize,
      experts: spec.numExperts,
      topK: spec.topK,
      normTopkProb: o.normTopkProb,
      masked,
      rowsCap: this.shape.maxRows,
      postNorm: this.weight(this.names.layers[i]!.postNorm),
      eps: spec.rmsNormEps,
      router: this.weight(o.router),
      routerBias: o.routerBias ? this.weight(o.routerBias) : undefined,
    });
  }

  /** (Re-)records every dispatch; needed again after the expert cache is resized. */
  async record(cache: ExpertCache, masked: boolean): Promise<void> {
    const { ctx } = this.init;
    const spec = this.spec;
    const pre = [
      await embed(ctx, {
        label: "embed",
        table: this.weight(this.names.embed),
        ids: this.buffer("ids"),
        rows: this.buffer("rows"),
        generated: this.buffer("generated"),
        maxGenerated: this.shape.maxGenerated,
        x: this.buffer("x"),
        dim: spec.hiddenSize,
        vocab: spec.vocabSize,
      }),
    ];
    const layers: LayerDispatches[] = [];
    for (let i = 0; i < spec.numLayers; i++) layers.push(await this.block(i, cache, masked));
    const head = await decoderHead(ctx, this.init.state, cache, {
      norm: this.weight(this.names.norm),
      lmHead: this.weight(this.names.lmHead),
      dim: spec.hiddenSize,
      vocab: spec.vocabSize,
      eps: spec.rmsNormEps,
      experts: spec.numExperts,
      topK: spec.topK,
      rowsCap: this.shape.maxRows,
      maxGenerated: this.shape.maxGenerated,
    });
    this.decoder = { pre, layers, post: head.post };
    this.sample = head.sample;
  }
}
