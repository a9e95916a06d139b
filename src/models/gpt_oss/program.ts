/**
 * gpt-oss on WebGPU: its run-state buffers (one list for the footprint and the allocation), its dense
 * weights, and the dispatches of one pass, recorded once and replayed for every call. The pass reads as
 * transformers' GptOssForCausalLM: embed → per layer (input norm → q, k, v with biases → YaRN rotary →
 * attention with sinks over the layer's window → o with bias → post-attention norm → router with bias →
 * top-k → the routed experts, kept in MXFP4 in the expert slots, with their clamped SwiGLU and biases)
 * → final norm → lm_head.
 *
 * Axes: T = rows in a call (≤ maxRows), D = hidden, H / Hkv = query / key-value heads, hd = head width,
 * E = experts, K = experts per token, I = expert width, V = vocabulary, ctx = context length, S =
 * sequences decoded together (slots).
 *
 * @module
 */
import type { Dispatch } from "../../gpu/dispatch.ts";
import type { Allocation } from "../../gpu/memory.ts";
import { attentionScratchBytes, ropeTable, yarnRopeTable } from "../../kernels/attention.ts";
import { embed } from "../../kernels/embed.ts";
import { experts } from "../../kernels/experts.ts";
import { attentionBlock, decoderHead, decoderIo, denseWithFusedQkv, routeBlock } from "../decoder_parts.ts";
import type { ExpertCache } from "../../moe/expert_cache.ts";
import {
  activation,
  bufferNamed,
  type BuildInit,
  type DenseWeight,
  type LayerDispatches,
  type ModelProgram,
  type Pass,
  type ProgramIo,
  type RunShape,
  sequenceState,
} from "../family.ts";
import type { GptOssSpec } from "./config.ts";
import type { GptOssNames } from "./names.ts";

/**
 * Every run-state buffer for `shape`: the one list that the footprint counts and the engine allocates.
 * Shapes per call of T ≤ maxRows rows.
 */
export function gptOssRunState(spec: GptOssSpec, shape: RunShape): Allocation[] {
  const { hiddenSize: D, numHeads: H, numKvHeads: Hkv, headDim: hd, numExperts: E, topK: K } = spec;
  const T = shape.maxRows;
  const L = spec.numLayers;
  const list: Allocation[] = [
    activation("ids", T), //                               [T] u32
    activation("x", T * D), //                             [T, D] residual stream
    activation("xn", T * D), //                            [T, D] normalised
    activation("qkv", T * (H + 2 * Hkv) * hd), //          [T, H·hd + 2·Hkv·hd] (q | k | v)
    activation("q", T * H * hd), //                        [T, H·hd] rotated
    activation("attn", T * H * hd), //                     [T, H·hd]
    activation("attn_partials", attentionScratchBytes(T, H, hd) / 4), // [T, H, MAX_SPLITS, hd + 2]
    activation("router_logits", T * E), //                 [T, E]
    activation("topk_ids", T * K), //                      [T, K] u32 (masked routing)
    activation("topk_w", T * K), //                        [T, K]
    activation("utopk_ids", L * T * K), //                 [layers, T, K] u32 (unmasked routing)
    activation("utopk_p", L * T * K), //                   [layers, T, K]
    activation("xnorm", L * T), //                         [layers, T] ‖x‖
    activation("h", T * K * spec.intermediateSize), //     [T·K, I] the experts' activations
    activation("xf", T * D), //                            [T, D] final-normed logits rows
    activation("logits", T * spec.vocabSize), //           [T, V]
    ...sequenceState(shape, T), //                         rows [T] Row, generated [S, maxGenerated], sampling [S]
    activation("stats", L * E * 4), //                     [layers, E, 4] f32
    {
      name: "rope", //                                     [2, ctx, hd/2] cos, sin (YaRN: times its attention factor)
      bytes: 2 * shape.contextLength * (hd / 2) * 4,
      usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST,
      category: "activations",
    },
  ];
  // every layer keeps the whole context, sliding ones too (a ring of `sliding_window` keys would do)
  for (let i = 0; i < L; i++) {
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

/**
 * The dense weights, each buffer once: the tensors as stored, except q, k and v (and their biases),
 * whose rows are concatenated into one buffer per layer so that one GEMV computes all three. The
 * experts' biases are not here: they travel with the experts, in each copy (family.ts).
 */
export function gptOssDense(names: GptOssNames): DenseWeight[] {
  const single: (string | undefined)[] = [names.embed, names.norm, names.lmHead];
  for (const l of names.layers) {
    single.push(l.inputNorm, l.postNorm, l.o, l.oBias, l.sinks, l.router, l.routerBias);
  }
  return denseWithFusedQkv(single, names.layers);
}

/** gpt-oss on the GPU: recorded dispatches over the buffers the engine allocated. */
export class GptOssProgram implements ModelProgram {
  readonly spec: GptOssSpec;
  readonly names: GptOssNames;
  readonly shape: RunShape;
  readonly io: ProgramIo;
  readonly #init: BuildInit;
  decoder: Pass = { pre: [], layers: [], post: [] };
  sample!: Dispatch;

  private constructor(spec: GptOssSpec, names: GptOssNames, init: BuildInit) {
    this.spec = spec;
    this.names = names;
    this.shape = init.shape;
    this.#init = init;
    this.io = decoderIo(init.state);
  }

  /** Fills the rotary table and records every dispatch. */
  static async build(spec: GptOssSpec, names: GptOssNames, init: BuildInit): Promise<GptOssProgram> {
    const program = new GptOssProgram(spec, names, init);
    const ctx = init.shape.contextLength;
    init.ctx.device.queue.writeBuffer(
      bufferNamed(init.state, "rope"),
      0,
      spec.ropeScaling
        ? yarnRopeTable(spec.headDim, spec.ropeTheta, ctx, spec.ropeScaling)
        : ropeTable(spec.headDim, spec.ropeTheta, ctx),
    );
    await program.record(init.cache, init.masked);
    return program;
  }

  /** (Re-)records every dispatch; needed again after the expert cache is resized. */
  async record(cache: ExpertCache, masked: boolean): Promise<void> {
    const { ctx } = this.#init;
    const names = this.names;
    const spec = this.spec;
    const { hiddenSize: D, numHeads: H, numKvHeads: Hkv, headDim: hd, numExperts: E, topK: K } = spec;
    const eps = spec.rmsNormEps;
    const geo = { numHeads: H, numKvHeads: Hkv, headDim: hd, contextLength: this.shape.contextLength };
    const w = (n: string) => bufferNamed(this.#init.weights, n);
    const b = (n: string) => bufferNamed(this.#init.state, n);

    const pre = [
      await embed(ctx, {
        label: "embed",
        table: w(names.embed),
        ids: b("ids"),
        rows: b("rows"),
        generated: b("generated"),
        maxGenerated: this.shape.maxGenerated,
        x: b("x"),
        dim: D,
        vocab: spec.vocabSize,
      }),
    ];
    const layers: LayerDispatches[] = [];
    for (let i = 0; i < spec.numLayers; i++) {
      const l = names.layers[i]!;
      const p = `layer${i}`;
      const before = [
        ...await attentionBlock(ctx, this.#init.state, {
          layer: i,
          geo,
          dim: D,
          eps,
          inputNorm: w(l.inputNorm),
          // torch: q_proj, k_proj, v_proj (bias=config.attention_bias), one GEMV over the rows of all three
          qkv: w(`layer${i}.qkv`),
          qkvBias: l.qBias ? w(`layer${i}.qkv_bias`) : undefined,
          // rotary: cos and sin already times YaRN's attention factor
          qkNorm: "none",
          // torch: sliding_window = config.sliding_window if layer_type == "sliding_attention" else None
          window: spec.layerTypes[i] === "sliding_attention" ? spec.slidingWindow : null,
          sinks: w(l.sinks),
          o: w(l.o),
          oBias: l.oBias ? w(l.oBias) : undefined,
          postNorm: w(l.postNorm),
        }),
        // torch: router_logits = F.linear(hidden_states, self.weight, self.bias)
        //        router_top_value, router_indices = torch.topk(router_logits, self.top_k, dim=-1)
        //        router_top_value = torch.nn.functional.softmax(router_top_value, dim=1)
        // router.wgsl takes the softmax over all E, the top K, then renormalises them: p_i / Σ_K p_j =
        // exp(l_i) / Σ_K exp(l_j), the same weights and the same experts (softmax keeps the order).
        ...await routeBlock(ctx, this.#init.state, cache, {
          layer: i,
          moeLayer: i,
          dim: D,
          experts: E,
          topK: K,
          normTopkProb: true,
          masked,
          rowsCap: this.shape.maxRows,
          router: w(l.router),
          routerBias: w(l.routerBias),
        }),
      ];
      // torch: routed_out = self.experts(hidden_states, router_indices, routing_weights); residual + routed_out
      const [gateUp, down] = cache.buffers(i); // slot buffers in expertMatrices order (family.ts)
      const routed = await experts(ctx, {
        label: `${p}.experts`,
        layer: i,
        dim: D,
        inter: spec.intermediateSize,
        topK: K,
        experts: E,
        topkIds: b("topk_ids"),
        topkW: b("topk_w"),
        slots: cache.tableBuffer.buffer,
        x: b("xn"),
        gate: gateUp!,
        down: down!,
        h: b("h"),
        y: b("x"),
        formats: cache.precisions,
        highSlots: cache.capacity[0]![i]!,
        clampedSwiglu: { limit: spec.swigluLimit, alpha: spec.swigluAlpha },
      });
      layers.push({ beforeExperts: before, experts: routed, afterExperts: [], moeLayer: i });
    }
    const head = await decoderHead(ctx, this.#init.state, cache, {
      norm: w(names.norm),
      lmHead: w(names.lmHead),
      dim: D,
      vocab: spec.vocabSize,
      eps,
      experts: E,
      topK: K,
      rowsCap: this.shape.maxRows,
      maxGenerated: this.shape.maxGenerated,
    });
    this.decoder = { pre, layers, post: head.post };
    this.sample = head.sample;
  }
}
