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
import type { Dispatch } from "../../gpu/dispatch.ts";
import type { Allocation } from "../../gpu/memory.ts";
import { attentionScratchBytes, ropeTable } from "../../kernels/attention.ts";
import { sigmoidGatedAdd, siluMul } from "../../kernels/elementwise.ts";
import { embed } from "../../kernels/embed.ts";
import { experts, groupedScratch } from "../../kernels/experts.ts";
import { matmul } from "../../kernels/matmul.ts";
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
import type { CausalSpec } from "./config.ts";
import type { ModelNames } from "./names.ts";

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
 * Every run-state buffer (llama2.c's `RunState`) for `shape`: the one list that the footprint counts
 * and the engine allocates. Shapes per call of T ≤ maxRows rows.
 */
export function causalRunState(spec: CausalSpec, shape: RunShape, moeLayers: number): Allocation[] {
  const { hiddenSize: D, numHeads: H, numKvHeads: Hkv, headDim: hd, numExperts: E, topK: K } = spec;
  const T = shape.maxRows;
  const mlp = mlpWidth(spec);
  const g = groupedWords(spec, shape);
  const list: Allocation[] = [
    activation("ids", T), //                               [T] u32
    activation("x", T * D), //                             [T, D] residual stream
    activation("xn", T * D), //                            [T, D] normalised
    activation("qkv", T * (H + 2 * Hkv) * hd), //          [T, H·hd + 2·Hkv·hd] (q | k | v)
    activation("q", T * H * hd), //                        [T, H·hd] normalised and rotated
    activation("attn", T * H * hd), //                     [T, H·hd]
    // [T, H, MAX_SPLITS, hd + 2] attention's partials; from the experts to the next attention, the grouped
    // experts' yk [T·K, D] (each token-expert's output). Per row H·MAX_SPLITS·(hd + 2) words against K·D:
    // more for Mixtral, Qwen and OLMoE, so sharing costs them nothing
    activation("attn_partials", Math.max(attentionScratchBytes(T, H, hd) / 4, g?.yk ?? 0)),
    activation("router_logits", T * E), //                 [T, E]
    activation("topk_ids", T * K), //                      [T, K] u32 (masked routing)
    activation("topk_w", T * K), //                        [T, K]
    activation("utopk_ids", moeLayers * T * K), //         [moeLayers, T, K] u32 (unmasked routing)
    activation("utopk_p", moeLayers * T * K), //           [moeLayers, T, K]
    activation("xnorm", moeLayers * T), //                 [moeLayers, T] ‖x‖
    activation("h", T * K * spec.moeIntermediateSize), //  [T·K, I]
    ...(g ? [activation("route", g.route)] : []), //       u32: the grouped experts' rows by expert, in tiles
    activation("mlp_a", T * mlp), //                       [T, max(I_dense, I_shared)]
    activation("mlp_b", T * mlp), //                       [T, max(I_dense, I_shared)]
    activation("shared", T * D), //                        [T, D]
    activation("shared_gate", T), //                       [T]
    activation("xf", T * D), //                            [T, D] final-normed logits rows
    activation("logits", T * spec.vocabSize), //           [T, V]
    ...sequenceState(shape, T), //                         rows [T] Row, generated [S, maxGenerated], sampling [S]
    activation("stats", moeLayers * E * 4), //             [moeLayers, E, 4] f32
    {
      name: "rope", //                                     [2, ctx, hd/2] cos, sin
      bytes: 2 * shape.contextLength * (hd / 2) * 4,
      usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST,
      category: "activations",
    },
  ];
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
export class CausalProgram implements ModelProgram {
  readonly spec: CausalSpec;
  readonly names: ModelNames;
  readonly shape: RunShape;
  readonly io: ProgramIo;
  readonly #init: BuildInit;
  decoder: Pass = { pre: [], layers: [], post: [] };
  sample!: Dispatch;

  private constructor(spec: CausalSpec, names: ModelNames, init: BuildInit) {
    this.spec = spec;
    this.names = names;
    this.shape = init.shape;
    this.#init = init;
    this.io = decoderIo(init.state);
  }

  /** Fills the rotary table and records every dispatch. */
  static async build(spec: CausalSpec, names: ModelNames, init: BuildInit): Promise<CausalProgram> {
    const program = new CausalProgram(spec, names, init);
    init.ctx.device.queue.writeBuffer(
      bufferNamed(init.state, "rope"),
      0,
      ropeTable(spec.headDim, spec.ropeTheta, init.shape.contextLength),
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
    let moe = 0;
    for (let i = 0; i < spec.numLayers; i++) {
      const l = names.layers[i]!;
      const p = `layer${i}`;
      const before = await attentionBlock(ctx, this.#init.state, {
        layer: i,
        geo,
        dim: D,
        eps,
        inputNorm: w(l.inputNorm),
        qkv: w(`layer${i}.qkv`),
        qkvBias: l.qBias ? w(`layer${i}.qkv_bias`) : undefined,
        // Qwen3: q/k RMSNorm over each head (hd); OLMoE: over the whole projection
        qkNorm: spec.qkNorm,
        qNorm: l.qNorm ? w(l.qNorm) : undefined,
        kNorm: l.kNorm ? w(l.kNorm) : undefined,
        window: spec.slidingWindow,
        o: w(l.o),
        postNorm: w(l.postNorm),
      });
      const routed: Dispatch[] = [];
      const after: Dispatch[] = [];
      const swiglu = async (
        m: { gate: string; up: string; down: string },
        inter: number,
        out: string,
        acc: boolean,
        tag: string,
      ) => [
        await matmul(ctx, {
          label: `${tag}.gate_proj`,
          weight: w(m.gate),
          x: b("xn"),
          y: b("mlp_a"),
          inDim: D,
          outDim: inter,
        }),
        await matmul(ctx, {
          label: `${tag}.up_proj`,
          weight: w(m.up),
          x: b("xn"),
          y: b("mlp_b"),
          inDim: D,
          outDim: inter,
        }),
        await siluMul(ctx, { label: `${tag}.silu_mul`, a: b("mlp_a"), b: b("mlp_b"), n: inter }),
        await matmul(ctx, {
          label: `${tag}.down_proj`,
          weight: w(m.down),
          x: b("mlp_a"),
          y: b(out),
          inDim: inter,
          outDim: D,
          accumulate: acc,
        }),
      ];
      let moeLayer = -1;
      if (l.router) {
        moeLayer = moe++;
        before.push(
          ...await routeBlock(ctx, this.#init.state, cache, {
            layer: i,
            moeLayer,
            dim: D,
            experts: E,
            topK: K,
            normTopkProb: spec.normTopkProb,
            masked,
            rowsCap: this.shape.maxRows,
            router: w(l.router),
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
            grouped: groupedWords(spec, this.shape)
              ? { yk: b("attn_partials"), route: b("route") }
              : undefined,
          }),
        );
        if (l.shared && l.sharedGate) {
          // torch: shared_expert_output = F.sigmoid(self.shared_expert_gate(x)) * self.shared_expert(x)
          after.push(
            ...await swiglu(
              l.shared,
              spec.sharedExpertIntermediateSize,
              "shared",
              false,
              `${p}.shared_expert`,
            ),
            await matmul(ctx, {
              label: `${p}.shared_expert_gate`,
              weight: w(l.sharedGate),
              x: b("xn"),
              y: b("shared_gate"),
              inDim: D,
              outDim: 1,
            }),
            await sigmoidGatedAdd(ctx, {
              label: `${p}.shared_add`,
              y: b("x"),
              s: b("shared"),
              gate: b("shared_gate"),
              n: D,
            }),
          );
        }
      } else if (l.mlp) {
        after.push(...await swiglu(l.mlp, spec.intermediateSize, "x", true, `${p}.mlp`));
      }
      layers.push({ beforeExperts: before, experts: routed, afterExperts: after, moeLayer });
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
