/**
 * The causal MoE decoder (Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE) on WebGPU: its GPU buffers and the
 * dispatches of one forward call, recorded once and replayed for every call.
 *
 * Axes: T = rows in a call (≤ maxRows), D = hidden, H / Hkv = query / key-value heads, hd = head
 * width, E = experts, K = experts per token, I = expert width, V = vocabulary, ctx = context length.
 *
 * @module
 */
import type { ModelSpec } from "../checkpoint/config.ts";
import type { CallShape, Dispatch, KernelContext } from "../gpu/dispatch.ts";
import type { GpuMemory, TrackedBuffer } from "../gpu/memory.ts";
import { attention, attentionScratchBytes, ropeKv, ropeTable } from "../kernels/attention.ts";
import { sigmoidGatedAdd, siluMul } from "../kernels/elementwise.ts";
import { embed } from "../kernels/embed.ts";
import { experts } from "../kernels/experts.ts";
import { matmul } from "../kernels/matmul.ts";
import { rmsNorm } from "../kernels/norm.ts";
import { router, routerStats } from "../kernels/router.ts";
import { sampler, SAMPLING_PARAMS_BYTES } from "../kernels/sample.ts";
import type { ExpertCache } from "../moe/expert_cache.ts";
import type { ModelNames } from "./names.ts";

const STORAGE = GPUBufferUsage.STORAGE;
const COPY_DST = GPUBufferUsage.COPY_DST;
const COPY_SRC = GPUBufferUsage.COPY_SRC;

/** Sizes of the run state. */
export interface RunShape {
  /** Most rows per forward call (prefill chunk). */
  maxRows: number;
  /** Positions the KV cache holds. */
  contextLength: number;
  /** Most tokens one generate call can write on the GPU before a readback. */
  maxGenerated: number;
}

/** The dispatches of one MoE layer around its experts, split where exact (lru) routing must read back. */
export interface LayerDispatches {
  /** Attention and, for a sparse layer, the post-norm, router and statistics. */
  beforeExperts: Dispatch[];
  /** The routed experts: read their weights through the slot table. */
  experts: Dispatch[];
  /** What follows them: the shared expert, or the dense MLP of a dense layer. */
  afterExperts: Dispatch[];
  /** MoE layer index, or −1 for a dense layer. */
  moeLayer: number;
}

/** Activations and state buffers (llama2.c's `RunState`). */
interface RunState {
  ids: TrackedBuffer; //          [maxRows] u32
  x: TrackedBuffer; //            [T, D] residual stream
  xn: TrackedBuffer; //           [T, D] normalised
  qkv: TrackedBuffer; //          [T, H·hd + 2·Hkv·hd] (q | k | v)
  q: TrackedBuffer; //            [T, H·hd] normalised and rotated
  attn: TrackedBuffer; //         [T, H·hd]
  attnPartials: TrackedBuffer; // [T, H, MAX_SPLITS, hd + 2]
  routerLogits: TrackedBuffer; // [T, E]
  topkIds: TrackedBuffer; //      [T, K] u32 (masked routing)
  topkW: TrackedBuffer; //        [T, K]
  utopkIds: TrackedBuffer; //     [moeLayers, T, K] u32 (unmasked routing)
  utopkP: TrackedBuffer; //       [moeLayers, T, K]
  xnorm: TrackedBuffer; //        [moeLayers, T]
  h: TrackedBuffer; //            [T·K, I]
  mlpA: TrackedBuffer; //         [T, max(I_dense, I_shared)]
  mlpB: TrackedBuffer; //         [T, max(I_dense, I_shared)]
  shared: TrackedBuffer; //       [T, D]
  sharedGate: TrackedBuffer; //   [T]
  xf: TrackedBuffer; //           [T, D] final-normed logits rows
  logits: TrackedBuffer; //       [T, V]
  generated: TrackedBuffer; //    [maxGenerated] u32
  samplingParams: TrackedBuffer; // sample.wgsl Params
  stats: TrackedBuffer; //        [moeLayers, E, 4] f32
  rope: TrackedBuffer; //         [2, ctx, hd/2]
  kCache: TrackedBuffer[]; //     per layer [ctx, Hkv, hd]
  vCache: TrackedBuffer[]; //     per layer [ctx, Hkv, hd]
}

/** Bytes of the run state for `spec` and `shape` (for the budget, before allocating). */
export function runStateBytes(spec: ModelSpec, shape: RunShape, moeLayers: number): number {
  const { hiddenSize: D, numHeads: H, numKvHeads: Hkv, headDim: hd, numExperts: E, topK: K } = spec;
  const T = shape.maxRows;
  const mlp = Math.max(
    spec.sparseLayers.every((s) => s) ? 0 : spec.intermediateSize,
    spec.sharedExpertIntermediateSize,
    2,
  );
  const f = 4;
  const r4 = (n: number) => Math.max(4, Math.ceil(n / 4) * 4);
  return [
    T * f,
    T * D * f,
    T * D * f,
    T * H * hd * f,
    T * (H + 2 * Hkv) * hd * f,
    T * H * hd * f,
    attentionScratchBytes(T, H, hd),
    T * E * f,
    T * K * f,
    T * K * f,
    moeLayers * T * K * f,
    moeLayers * T * K * f,
    moeLayers * T * f,
    T * K * spec.moeIntermediateSize * f,
    T * mlp * f,
    T * mlp * f,
    T * D * f,
    T * f,
    T * D * f,
    T * spec.vocabSize * f,
    shape.maxGenerated * f,
    SAMPLING_PARAMS_BYTES,
    moeLayers * E * 4 * f,
    2 * shape.contextLength * (hd / 2) * f,
  ].map(r4).reduce((a, b) => a + b, 0) + 2 * spec.numLayers * r4(shape.contextLength * Hkv * hd * f);
}

/** Dense weight bytes on the GPU (everything but the experts), rounded as allocated. */
export function denseBytes(spec: ModelSpec, names: ModelNames, byteLength: (name: string) => number): number {
  const seen = new Set<string>();
  let total = 0;
  const add = (n: string | undefined) => {
    if (!n || seen.has(n)) return;
    seen.add(n);
    total += Math.max(4, Math.ceil(byteLength(n) / 4) * 4);
  };
  add(names.embed);
  add(names.norm);
  add(names.lmHead);
  for (const l of names.layers) {
    for (
      const n of [l.inputNorm, l.postNorm, l.q, l.k, l.v, l.o, l.qBias, l.kBias, l.vBias, l.qNorm, l.kNorm]
    ) add(n);
    add(l.router);
    add(l.sharedGate);
    for (const m of [l.shared, l.mlp]) if (m) [m.gate, m.up, m.down].forEach(add);
  }
  void spec;
  return total;
}

/** The model on the GPU: dense weights, run state, and recorded dispatches. */
export class CausalMoe {
  readonly spec: ModelSpec;
  readonly shape: RunShape;
  readonly state: RunState;
  readonly #memory: GpuMemory;
  readonly #weights = new Map<string, TrackedBuffer>();
  /** embed → layers → final norm → LM head. */
  head: Dispatch[] = [];
  layers: LayerDispatches[] = [];
  embedDispatch!: Dispatch;
  sample!: Dispatch;

  private constructor(spec: ModelSpec, shape: RunShape, memory: GpuMemory, state: RunState) {
    this.spec = spec;
    this.shape = shape;
    this.#memory = memory;
    this.state = state;
  }

  /** Uploads dense weights, allocates the run state and records every dispatch. */
  static async build(
    ctx: KernelContext,
    spec: ModelSpec,
    names: ModelNames,
    bytes: (name: string) => Uint8Array<ArrayBuffer>,
    cache: ExpertCache,
    shape: RunShape,
    options: { masked: boolean; onWeight?: (done: number, total: number) => void },
  ): Promise<CausalMoe> {
    const { memory, device } = ctx;
    const { hiddenSize: D, numHeads: H, numKvHeads: Hkv, headDim: hd, numExperts: E, topK: K } = spec;
    const T = shape.maxRows;
    const act = (label: string, n: number, extra = 0) =>
      memory.alloc(label, n * 4, STORAGE | COPY_DST | COPY_SRC | extra, "activations");
    const mlpW = Math.max(
      spec.sparseLayers.every((s) => s) ? 0 : spec.intermediateSize,
      spec.sharedExpertIntermediateSize,
      2,
    );
    const moeLayers = cache.moeLayers;
    const state: RunState = {
      ids: act("state.ids", T),
      x: act("state.x", T * D),
      xn: act("state.xn", T * D),
      qkv: act("state.qkv", T * (H + 2 * Hkv) * hd),
      q: act("state.q", T * H * hd),
      attn: act("state.attn", T * H * hd),
      attnPartials: act("state.attn_partials", attentionScratchBytes(T, H, hd) / 4),
      routerLogits: act("state.router_logits", T * E),
      topkIds: act("state.topk_ids", T * K),
      topkW: act("state.topk_w", T * K),
      utopkIds: act("state.utopk_ids", moeLayers * T * K),
      utopkP: act("state.utopk_p", moeLayers * T * K),
      xnorm: act("state.xnorm", moeLayers * T),
      h: act("state.h", T * K * spec.moeIntermediateSize),
      mlpA: act("state.mlp_a", T * mlpW),
      mlpB: act("state.mlp_b", T * mlpW),
      shared: act("state.shared", T * D),
      sharedGate: act("state.shared_gate", T),
      xf: act("state.xf", T * D),
      logits: act("state.logits", T * spec.vocabSize),
      generated: act("state.generated", shape.maxGenerated),
      samplingParams: memory.alloc(
        "state.sampling",
        SAMPLING_PARAMS_BYTES,
        GPUBufferUsage.UNIFORM | COPY_DST,
        "activations",
      ),
      stats: act("state.stats", moeLayers * E * 4),
      rope: memory.alloc(
        "state.rope",
        2 * shape.contextLength * (hd / 2) * 4,
        STORAGE | COPY_DST,
        "activations",
      ),
      kCache: [],
      vCache: [],
    };
    device.queue.writeBuffer(state.rope.buffer, 0, ropeTable(hd, spec.ropeTheta, shape.contextLength));
    for (let i = 0; i < spec.numLayers; i++) {
      state.kCache.push(memory.alloc(`kv.${i}.k`, shape.contextLength * Hkv * hd * 4, STORAGE, "kv"));
      state.vCache.push(memory.alloc(`kv.${i}.v`, shape.contextLength * Hkv * hd * 4, STORAGE, "kv"));
    }
    const model = new CausalMoe(spec, shape, memory, state);

    // Dense weights, uploaded once as stored.
    const all = new Set<string>();
    const want = (n: string | undefined) => n && all.add(n);
    [names.embed, names.norm, names.lmHead].forEach(want);
    for (const l of names.layers) {
      [
        l.inputNorm,
        l.postNorm,
        l.o,
        l.qNorm,
        l.kNorm,
        l.router,
        l.sharedGate,
      ]
        .forEach(want);
      for (const m of [l.shared, l.mlp]) if (m) [m.gate, m.up, m.down].forEach(want);
    }
    // q, k and v (and their biases) go into one buffer per layer, rows concatenated, so that one
    // GEMV computes all three
    const fused = names.layers.flatMap((l, i) => [
      { name: `layer${i}.qkv`, parts: [l.q, l.k, l.v] },
      ...(l.qBias && l.kBias && l.vBias
        ? [{ name: `layer${i}.qkv_bias`, parts: [l.qBias, l.kBias, l.vBias] }]
        : []),
    ]);
    const total = all.size + fused.length;
    let done = 0;
    const upload = (name: string, parts: Uint8Array<ArrayBuffer>[]) => {
      const size = parts.reduce((a, b) => a + b.byteLength, 0);
      const t = memory.alloc(name, size, STORAGE | COPY_DST, "dense");
      let off = 0;
      for (const b of parts) {
        if (b.byteLength % 4 === 0) device.queue.writeBuffer(t.buffer, off, b);
        else {
          const padded = new Uint8Array(Math.ceil(b.byteLength / 4) * 4);
          padded.set(b);
          device.queue.writeBuffer(t.buffer, off, padded);
        }
        off += b.byteLength;
      }
      model.#weights.set(name, t);
      options.onWeight?.(++done, total);
    };
    for (const n of all) upload(n, [bytes(n)]);
    for (const f of fused) upload(f.name, f.parts.map((n) => bytes(n)));
    await model.record(ctx, names, cache, options.masked);
    return model;
  }

  #w(name: string): GPUBuffer {
    const t = this.#weights.get(name);
    if (!t) throw new Error(`Internal: weight ${name} was not uploaded`);
    return t.buffer;
  }

  /** (Re-)records every dispatch; needed again after the expert cache is resized. */
  async record(ctx: KernelContext, names: ModelNames, cache: ExpertCache, masked: boolean): Promise<void> {
    const s = this.state;
    const spec = this.spec;
    const { hiddenSize: D, numHeads: H, numKvHeads: Hkv, headDim: hd, numExperts: E, topK: K } = spec;
    const eps = spec.rmsNormEps;
    const geo = { numHeads: H, numKvHeads: Hkv, headDim: hd, contextLength: this.shape.contextLength };
    const w = (n: string) => this.#w(n);
    const b = (t: TrackedBuffer) => t.buffer;

    this.embedDispatch = await embed(ctx, {
      label: "embed",
      table: w(names.embed),
      ids: b(s.ids),
      x: b(s.x),
      dim: D,
      vocab: spec.vocabSize,
    });
    this.layers = [];
    let moe = 0;
    for (let i = 0; i < spec.numLayers; i++) {
      const l = names.layers[i]!;
      const p = `layer${i}`;
      const before: Dispatch[] = [
        await rmsNorm(ctx, {
          label: `${p}.input_norm`,
          weight: w(l.inputNorm),
          x: b(s.x),
          y: b(s.xn),
          cols: D,
          eps,
        }),
        await matmul(ctx, {
          label: `${p}.qkv_proj`,
          weight: w(`layer${i}.qkv`),
          bias: l.qBias ? w(`layer${i}.qkv_bias`) : undefined,
          x: b(s.xn),
          y: b(s.qkv),
          inDim: D,
          outDim: (H + 2 * Hkv) * hd,
        }),
      ];
      before.push(
        // Qwen3: q/k RMSNorm over each head (hd); OLMoE: over the whole projection
        await ropeKv(ctx, {
          ...geo,
          label: `${p}.rope`,
          rope: b(s.rope),
          qkv: b(s.qkv),
          q: b(s.q),
          kCache: b(s.kCache[i]!),
          vCache: b(s.vCache[i]!),
          norm: spec.qkNorm,
          qNorm: l.qNorm ? w(l.qNorm) : undefined,
          kNorm: l.kNorm ? w(l.kNorm) : undefined,
          eps,
        }),
        ...await attention(ctx, {
          ...geo,
          label: `${p}.attention`,
          q: b(s.q),
          kCache: b(s.kCache[i]!),
          vCache: b(s.vCache[i]!),
          partials: b(s.attnPartials),
          out: b(s.attn),
          window: spec.slidingWindow,
        }),
        await matmul(ctx, {
          label: `${p}.o_proj`,
          weight: w(l.o),
          x: b(s.attn),
          y: b(s.x),
          inDim: H * hd,
          outDim: D,
          accumulate: true,
        }),
        await rmsNorm(ctx, {
          label: `${p}.post_norm`,
          weight: w(l.postNorm),
          x: b(s.x),
          y: b(s.xn),
          cols: D,
          eps,
        }),
      );
      const routed: Dispatch[] = [];
      const after: Dispatch[] = [];
      const swiglu = async (
        m: { gate: string; up: string; down: string },
        inter: number,
        out: TrackedBuffer,
        acc: boolean,
        tag: string,
      ) => [
        await matmul(ctx, {
          label: `${tag}.gate_proj`,
          weight: w(m.gate),
          x: b(s.xn),
          y: b(s.mlpA),
          inDim: D,
          outDim: inter,
        }),
        await matmul(ctx, {
          label: `${tag}.up_proj`,
          weight: w(m.up),
          x: b(s.xn),
          y: b(s.mlpB),
          inDim: D,
          outDim: inter,
        }),
        await siluMul(ctx, { label: `${tag}.silu_mul`, a: b(s.mlpA), b: b(s.mlpB), n: inter }),
        await matmul(ctx, {
          label: `${tag}.down_proj`,
          weight: w(m.down),
          x: b(s.mlpA),
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
          await matmul(ctx, {
            label: `${p}.router`,
            weight: w(l.router),
            x: b(s.xn),
            y: b(s.routerLogits),
            inDim: D,
            outDim: E,
          }),
          await router(ctx, {
            label: `${p}.route`,
            layer: moeLayer,
            experts: E,
            topK: K,
            normTopkProb: spec.normTopkProb,
            masked,
            dim: D,
            rowsCap: this.shape.maxRows,
            logits: b(s.routerLogits),
            slots: cache.tableBuffer.buffer,
            x: b(s.xn),
            topkIds: b(s.topkIds),
            topkW: b(s.topkW),
            utopkIds: b(s.utopkIds),
            utopkP: b(s.utopkP),
            xnorm: b(s.xnorm),
          }),
        );
        const slots = cache.buffers(moeLayer);
        routed.push(
          ...await experts(ctx, {
            label: `${p}.experts`,
            layer: moeLayer,
            dim: D,
            inter: spec.moeIntermediateSize,
            topK: K,
            experts: E,
            topkIds: b(s.topkIds),
            topkW: b(s.topkW),
            slots: cache.tableBuffer.buffer,
            x: b(s.xn),
            gate: slots.gate,
            up: slots.up,
            down: slots.down,
            h: b(s.h),
            y: b(s.x),
          }),
        );
        if (l.shared && l.sharedGate) {
          // torch: shared_expert_output = F.sigmoid(self.shared_expert_gate(x)) * self.shared_expert(x)
          after.push(
            ...await swiglu(
              l.shared,
              spec.sharedExpertIntermediateSize,
              s.shared,
              false,
              `${p}.shared_expert`,
            ),
            await matmul(ctx, {
              label: `${p}.shared_expert_gate`,
              weight: w(l.sharedGate),
              x: b(s.xn),
              y: b(s.sharedGate),
              inDim: D,
              outDim: 1,
            }),
            await sigmoidGatedAdd(ctx, {
              label: `${p}.shared_add`,
              y: b(s.x),
              s: b(s.shared),
              gate: b(s.sharedGate),
              n: D,
            }),
          );
        }
      } else if (l.mlp) {
        after.push(...await swiglu(l.mlp, spec.intermediateSize, s.x, true, `${p}.mlp`));
      }
      this.layers.push({ beforeExperts: before, experts: routed, afterExperts: after, moeLayer });
    }
    this.head = [
      await rmsNorm(ctx, {
        label: "final_norm",
        weight: w(names.norm),
        x: b(s.x),
        y: b(s.xf),
        cols: D,
        eps,
        headRows: true,
      }),
      await matmul(ctx, {
        label: "lm_head",
        weight: w(names.lmHead),
        x: b(s.xf),
        y: b(s.logits),
        inDim: D,
        outDim: spec.vocabSize,
        headRows: true,
      }),
      // routing statistics of every MoE layer, once per call
      await routerStats(ctx, {
        label: "router_stats",
        layers: cache.moeLayers,
        experts: E,
        topK: K,
        rowsCap: this.shape.maxRows,
        slots: cache.tableBuffer.buffer,
        utopkIds: b(s.utopkIds),
        utopkP: b(s.utopkP),
        xnorm: b(s.xnorm),
        stats: b(s.stats),
      }),
    ];
    this.sample = await sampler(ctx, {
      label: "sample",
      params: b(s.samplingParams),
      logits: b(s.logits),
      ids: b(s.ids),
      generated: b(s.generated),
    });
  }

  /** Every dispatch of one forward call, in order (no sampler). */
  forwardDispatches(): Dispatch[] {
    return [
      this.embedDispatch,
      ...this.layers.flatMap((l) => [...l.beforeExperts, ...l.experts, ...l.afterExperts]),
      ...this.head,
    ];
  }

  /** Workgroups launched per call of this shape (for dispatch-count statistics). */
  dispatchCount(shape: CallShape): number {
    return this.forwardDispatches().filter((d) => d.workgroups(shape) > 0).length;
  }

  /** Frees the run state and dense weights. */
  destroy(): void {
    for (const t of this.#weights.values()) this.#memory.free(t);
    this.#weights.clear();
    for (const t of Object.values(this.state)) {
      if (Array.isArray(t)) t.forEach((x) => this.#memory.free(x));
      else this.#memory.free(t as TrackedBuffer);
    }
  }
}
