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
import type { Allocation } from "../../gpu/memory.ts";
import { ropeTable, yarnRopeTable } from "../../kernels/attention.ts";
import { experts } from "../../kernels/experts.ts";
import type { ExpertCache } from "../../moe/expert_cache.ts";
import { denseWithFusedQkv } from "../decoder_parts.ts";
import { DecoderProgram, decoderRunState } from "../decoder_program.ts";
import type { BuildInit, DenseWeight, LayerDispatches, RunShape } from "../family.ts";
import type { GptOssSpec } from "./config.ts";
import type { GptOssNames } from "./names.ts";

/**
 * Every run-state buffer for `shape` ({@link decoderRunState}): every layer is a MoE layer, and the
 * rotary table holds cos and sin already times YaRN's attention factor.
 */
export function gptOssRunState(spec: GptOssSpec, shape: RunShape): Allocation[] {
  return decoderRunState(spec, shape, { moeLayers: spec.numLayers, expertWidth: spec.intermediateSize });
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
export class GptOssProgram extends DecoderProgram<GptOssSpec, GptOssNames> {
  /** Fills the rotary table (YaRN's where the config scales it) and records every dispatch. */
  static async build(spec: GptOssSpec, names: GptOssNames, init: BuildInit): Promise<GptOssProgram> {
    const program = new GptOssProgram(spec, names, init);
    const ctx = init.shape.contextLength;
    await program.start(
      spec.ropeScaling
        ? yarnRopeTable(spec.headDim, spec.ropeTheta, ctx, spec.ropeScaling)
        : ropeTable(spec.headDim, spec.ropeTheta, ctx),
    );
    return program;
  }

  protected async block(i: number, cache: ExpertCache, masked: boolean): Promise<LayerDispatches> {
    const spec = this.spec;
    const l = this.names.layers[i]!;
    const b = (n: string) => this.buffer(n);
    const before = [
      ...await this.attention(i, {
        // rotary: cos and sin already times YaRN's attention factor
        qkNorm: "none",
        // torch: sliding_window = config.sliding_window if layer_type == "sliding_attention" else None
        window: spec.layerTypes[i] === "sliding_attention" ? spec.slidingWindow : null,
        sinks: this.weight(l.sinks),
        oBias: l.oBias ? this.weight(l.oBias) : undefined,
        routed: true,
      }),
      // torch: router_logits = F.linear(hidden_states, self.weight, self.bias)
      //        router_top_value, router_indices = torch.topk(router_logits, self.top_k, dim=-1)
      //        router_top_value = torch.nn.functional.softmax(router_top_value, dim=1)
      // router.wgsl takes the softmax over all E, the top K, then renormalises them: p_i / Σ_K p_j =
      // exp(l_i) / Σ_K exp(l_j), the same weights and the same experts (softmax keeps the order).
      ...await this.route(i, i, cache, masked, {
        router: l.router,
        routerBias: l.routerBias,
        normTopkProb: true,
      }),
    ];
    // torch: routed_out = self.experts(hidden_states, router_indices, routing_weights); residual + routed_out
    const [gateUp, down] = cache.buffers(i); // slot buffers in expertMatrices order (family.ts)
    const routed = await experts(this.init.ctx, {
      label: `layer${i}.experts`,
      layer: i,
      dim: spec.hiddenSize,
      inter: spec.intermediateSize,
      topK: spec.topK,
      experts: spec.numExperts,
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
    return { beforeExperts: before, experts: routed, afterExperts: [], moeLayer: i };
  }
}
