/**
 * The causal MoE decoder (Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE) on WebGPU: its run-state buffers (one
 * list for the footprint and the allocation), its dense weights, and the dispatches of one pass,
 * recorded once and replayed for every call.
 *
 * Axes: T = rows in a call (≤ maxRows), D = hidden, H / Hkv = query / key-value heads, hd = head
 * width, E = experts, K = experts per token, I = expert width, V = vocabulary, ctx = context length,
 * S = sequences decoded together (slots).
 *
 * @module
 */
import { type CallShape, type Dispatch, onlyWhen } from "../../gpu/dispatch.ts";
import type { Allocation } from "../../gpu/memory.ts";
import { ropeTable } from "../../kernels/attention.ts";
import { sigmoidGatedAdd, siluMul } from "../../kernels/elementwise.ts";
import { experts, groupedScratch } from "../../kernels/experts.ts";
import { matmul, TILED_MIN_ROWS } from "../../kernels/matmul.ts";
import type { ExpertCache } from "../../moe/expert_cache.ts";
import { denseWithFusedQkv } from "../decoder_parts.ts";
import { DecoderProgram, decoderRunState } from "../decoder_program.ts";
import {
  activation,
  type BuildInit,
  type DenseWeight,
  type LayerDispatches,
  type RunShape,
} from "../family.ts";
import type { CausalSpec } from "./config.ts";
import type { MlpNames, ModelNames } from "./names.ts";

/** Width of the dense-MLP scratch: the dense MLP's or the shared expert's, whichever is wider. */
function mlpWidth(spec: CausalSpec): number {
  return Math.max(
    spec.sparseLayers.every((s) => s) ? 0 : spec.intermediateSize,
    spec.sharedExpertIntermediateSize,
    2,
  );
}

/** The grouped experts' scratch words at `shape` ({@link groupedScratch}); undefined where that path never runs. */
function groupedWords(spec: CausalSpec, shape: RunShape) {
  return groupedScratch({
    rows: shape.maxRows,
    topK: spec.topK,
    experts: spec.numExperts,
    dim: spec.hiddenSize,
  });
}

/**
 * Every run-state buffer for `shape` ({@link decoderRunState}), with the causal decoder's own: the
 * grouped experts' routing table, and the dense MLP's and shared expert's scratch.
 */
export function causalRunState(spec: CausalSpec, shape: RunShape, moeLayers: number): Allocation[] {
  const D = spec.hiddenSize;
  const T = shape.maxRows;
  const mlp = mlpWidth(spec);
  const g = groupedWords(spec, shape);
  return decoderRunState(spec, shape, {
    moeLayers,
    expertWidth: spec.moeIntermediateSize,
    // from the experts to the next attention, attention's partials hold the grouped experts' yk [T·K, D]
    // (each token-expert's output). Per row H·MAX_SPLITS·(hd + 2) words against K·D: more for Mixtral,
    // Qwen and OLMoE, so sharing costs them nothing
    partialsWords: g?.yk ?? 0,
    extra: [
      ...(g ? [activation("route", g.route)] : []), //     u32: the grouped experts' rows by expert, in tiles
      activation("mlp_a", T * mlp), //                     [T, max(I_dense, I_shared)]
      activation("mlp_b", T * mlp), //                     [T, max(I_dense, I_shared)]
      activation("shared", T * D), //                      [T, D]
      activation("shared_gate", T), //                     [T]
    ],
  });
}

/**
 * The dense weights, each buffer once: the tensors as stored, except q, k and v (and their biases),
 * whose rows are concatenated into one buffer per layer so that one GEMV computes all three.
 */
export function causalDense(names: ModelNames): DenseWeight[] {
  const single: (string | undefined)[] = [names.embed, names.norm, names.lmHead];
  for (const l of names.layers) {
    single.push(l.inputNorm, l.postNorm, l.o, l.qNorm, l.kNorm, l.router, l.sharedGate);
    for (const m of [l.shared, l.mlp]) if (m) single.push(m.gate, m.up, m.down);
  }
  return denseWithFusedQkv(single, names.layers);
}

/** The causal decoder on the GPU: recorded dispatches over the buffers the engine allocated. */
export class CausalProgram extends DecoderProgram<CausalSpec, ModelNames> {
  /** Each layer's MoE layer index, or −1 for a dense block. */
  readonly #moeLayer: number[];

  private constructor(spec: CausalSpec, names: ModelNames, init: BuildInit) {
    super(spec, names, init);
    let moe = 0;
    this.#moeLayer = names.layers.map((l) => (l.router ? moe++ : -1));
  }

  /** Fills the rotary table and records every dispatch. */
  static async build(spec: CausalSpec, names: ModelNames, init: BuildInit): Promise<CausalProgram> {
    const program = new CausalProgram(spec, names, init);
    await program.start(ropeTable(spec.headDim, spec.ropeTheta, init.shape.contextLength));
    return program;
  }

  protected async block(i: number, cache: ExpertCache, masked: boolean): Promise<LayerDispatches> {
    const { ctx } = this.init;
    const spec = this.spec;
    const { hiddenSize: D, numExperts: E, topK: K } = spec;
    const l = this.names.layers[i]!;
    const p = `layer${i}`;
    const w = (n: string) => this.weight(n);
    const b = (n: string) => this.buffer(n);
    const before = await this.attention(i, {
      // Qwen3: q/k RMSNorm over each head (hd); OLMoE: over the whole projection
      qkNorm: spec.qkNorm,
      qNorm: l.qNorm ? w(l.qNorm) : undefined,
      kNorm: l.kNorm ? w(l.kNorm) : undefined,
      window: spec.slidingWindow,
      routed: l.router !== undefined,
    });
    const routed: Dispatch[] = [];
    const after: Dispatch[] = [];
    // A SwiGLU MLP over `xn` whose output is added into the residual `x` (the shared expert's through its
    // sigmoid gate). Calls of up to 32 rows (decode, short chunks) run it in two dispatches: gate and up
    // in one GEMV with the SiLU product, then the down projection adding in, the gate inside it. Longer
    // calls run it apart (where the tiled matmuls apply): gate, up, SiLU·mul, down, and the shared
    // expert's gate GEMV and gated add.
    const mlp = async (m: MlpNames, inter: number, tag: string, gate?: string): Promise<Dispatch[]> => {
      const short = (s: CallShape) => s.t < TILED_MIN_ROWS;
      const fused = [
        ...await matmul(ctx, {
          label: `${tag}.gate_up_proj`,
          weight: w(m.gate),
          glu: { weight: w(m.up) },
          x: b("xn"),
          y: b("mlp_a"),
          inDim: D,
          outDim: inter,
        }),
        ...await matmul(ctx, {
          label: `${tag}.down_proj`,
          weight: w(m.down),
          x: b("mlp_a"),
          y: b("x"),
          inDim: inter,
          outDim: D,
          accumulate: true,
          gate: gate ? { weight: w(gate), x: b("xn"), dim: D } : undefined,
        }),
      ];
      const apart = [
        ...await matmul(ctx, {
          label: `${tag}.gate_proj`,
          weight: w(m.gate),
          x: b("xn"),
          y: b("mlp_a"),
          inDim: D,
          outDim: inter,
        }),
        ...await matmul(ctx, {
          label: `${tag}.up_proj`,
          weight: w(m.up),
          x: b("xn"),
          y: b("mlp_b"),
          inDim: D,
          outDim: inter,
        }),
        await siluMul(ctx, { label: `${tag}.silu_mul`, a: b("mlp_a"), b: b("mlp_b"), n: inter }),
        ...await matmul(ctx, {
          label: `${tag}.down_proj`,
          weight: w(m.down),
          x: b("mlp_a"),
          y: b(gate ? "shared" : "x"),
          inDim: inter,
          outDim: D,
          accumulate: !gate,
        }),
      ];
      if (gate) {
        // torch: shared_expert_output = F.sigmoid(self.shared_expert_gate(x)) * self.shared_expert(x)
        apart.push(
          ...await matmul(ctx, {
            label: `${tag}_gate`,
            weight: w(gate),
            x: b("xn"),
            y: b("shared_gate"),
            inDim: D,
            outDim: 1,
          }),
          await sigmoidGatedAdd(ctx, {
            label: `${tag}_add`,
            y: b("x"),
            s: b("shared"),
            gate: b("shared_gate"),
            n: D,
          }),
        );
      }
      return [...fused.map((d) => onlyWhen(d, short)), ...apart.map((d) => onlyWhen(d, (s) => !short(s)))];
    };
    const moeLayer = this.#moeLayer[i]!;
    if (l.router) {
      before.push(
        ...await this.route(i, moeLayer, cache, masked, {
          router: l.router,
          normTopkProb: spec.normTopkProb,
        }),
      );
      const [gate, up, down] = cache.buffers(moeLayer); // slot buffers in CAUSAL_EXPERT order
      routed.push(
        ...await experts(ctx, {
          label: `${p}.experts`,
          layer: moeLayer,
          dim: D,
          inter: spec.moeIntermediateSize,
          topK: K,
          experts: E,
          topkIds: b("topk_ids"),
          topkW: b("topk_w"),
          slots: cache.tableBuffer.buffer,
          x: b("xn"),
          gate: gate!,
          up: up!,
          down: down!,
          h: b("h"),
          y: b("x"),
          formats: cache.precisions,
          highSlots: cache.capacity[0]![moeLayer]!,
          // yk shares attention's partials: attention is done with them, the next layer's starts after
          grouped: groupedWords(spec, this.shape) ? { yk: b("attn_partials"), route: b("route") } : undefined,
        }),
      );
      if (l.shared && l.sharedGate) {
        after.push(
          ...await mlp(l.shared, spec.sharedExpertIntermediateSize, `${p}.shared_expert`, l.sharedGate),
        );
      }
    } else if (l.mlp) {
      after.push(...await mlp(l.mlp, spec.intermediateSize, `${p}.mlp`));
    }
    return { beforeExperts: before, experts: routed, afterExperts: after, moeLayer };
  }
}
