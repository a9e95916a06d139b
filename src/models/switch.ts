/**
 * Switch Transformers (encoder-decoder, T5 layout, top-1 ReLU experts) on WebGPU: GPU buffers and
 * the dispatches of the two programs, recorded once and replayed for every call:
 * - the encoder program: embed → encoder blocks → final norm → every decoder block's cross-attention
 *   K and V of the encoder output (computed once per request and kept);
 * - the decoder program: embed → decoder blocks (self-attention over the decoder's cache, cross-attention
 *   over the kept K/V) → final norm → LM head.
 *
 * Axes: T = rows in a call, D = d_model, H = heads, hd = d_kv, HD = H·hd, E = experts, I = d_ff,
 * V = vocabulary. One expert per token (K = 1), weighted by its router probability (no renormalisation).
 *
 * @module
 */
import type { SwitchSpec } from "../checkpoint/switch_config.ts";
import type { CallShape, Dispatch, KernelContext } from "../gpu/dispatch.ts";
import type { GpuMemory, MemoryCategory, TrackedBuffer } from "../gpu/memory.ts";
import { embed } from "../kernels/embed.ts";
import { matmul } from "../kernels/matmul.ts";
import { rmsNorm } from "../kernels/norm.ts";
import { experts } from "../kernels/experts.ts";
import { router, routerStats } from "../kernels/router.ts";
import { sampler, SAMPLING_PARAMS_BYTES } from "../kernels/sample.ts";
import {
  bucketTable,
  expertCapacity,
  kvWrite,
  relu,
  scaleHeadRows,
  t5Attention,
  type T5AttentionMode,
} from "../kernels/t5.ts";
import type { ExpertCache } from "../moe/expert_cache.ts";
import type { LayerDispatches } from "./causal_moe.ts";
import type { SwitchNames, T5AttentionNames } from "./switch_names.ts";

const STORAGE = GPUBufferUsage.STORAGE;
const COPY_DST = GPUBufferUsage.COPY_DST;
const COPY_SRC = GPUBufferUsage.COPY_SRC;

/** Sizes of the run state. */
export interface SwitchShape {
  /** Most encoder positions (the encoder runs a prompt in one call). */
  encoderLength: number;
  /** Most decoder positions (the decoder's self-attention cache). */
  contextLength: number;
  /** Most decoder rows per call, and rows of the logits buffer. */
  maxRows: number;
  /** Most tokens one generate call writes on the GPU before a readback. */
  maxGenerated: number;
}

/** One program (encoder or decoder pass): what precedes the blocks, the blocks, what follows. */
export interface Program {
  pre: Dispatch[];
  layers: LayerDispatches[];
  post: Dispatch[];
}

interface Allocation {
  name: string;
  bytes: number;
  usage: GPUBufferUsageFlags;
  category: MemoryCategory;
}

/** Rows of the activation buffers: the encoder's length or a decoder call, whichever is larger. */
function rows(shape: SwitchShape): number {
  return Math.max(shape.encoderLength, shape.maxRows);
}

/** Span of relative positions the bucket table covers. */
function span(shape: SwitchShape): number {
  return Math.max(shape.encoderLength, shape.contextLength);
}

/** Every run-state buffer, for the budget (before allocating) and for allocating: one list, so they agree. */
function stateLayout(spec: SwitchSpec, shape: SwitchShape, moeLayers: number): Allocation[] {
  const { dModel: D, numHeads: H, dKv: hd, numExperts: E, dFf: I, vocabSize: V } = spec;
  const T = rows(shape);
  const HD = H * hd;
  const rw = STORAGE | COPY_DST | COPY_SRC;
  const act = (name: string, words: number): Allocation => ({
    name,
    bytes: words * 4,
    usage: rw,
    category: "activations",
  });
  const out: Allocation[] = [
    act("ids", T),
    act("x", T * D),
    act("xn", T * D),
    act("q", T * HD),
    act("k", T * HD),
    act("v", T * HD),
    act("attn", T * HD),
    act("routerLogits", T * E),
    act("topkIds", T),
    act("topkW", T),
    act("utopkIds", moeLayers * T),
    act("utopkP", moeLayers * T),
    act("xnorm", moeLayers * T),
    act("h", T * I),
    act("mlp", T * I),
    act("xf", shape.maxRows * D),
    act("logits", shape.maxRows * V),
    act("generated", shape.maxGenerated),
    {
      name: "samplingParams",
      bytes: SAMPLING_PARAMS_BYTES,
      usage: GPUBufferUsage.UNIFORM | COPY_DST,
      category: "activations",
    },
    act("stats", moeLayers * E * 4),
    act("counts", moeLayers * E),
    { name: "meta", bytes: 16, usage: STORAGE | COPY_DST, category: "tables" },
    { name: "buckets", bytes: 2 * (2 * span(shape) - 1) * 4, usage: STORAGE | COPY_DST, category: "tables" },
  ];
  for (let l = 0; l < spec.numDecoderLayers; l++) {
    out.push(
      { name: `kv.${l}.k`, bytes: shape.contextLength * HD * 4, usage: STORAGE, category: "kv" },
      { name: `kv.${l}.v`, bytes: shape.contextLength * HD * 4, usage: STORAGE, category: "kv" },
      { name: `cross.${l}.k`, bytes: shape.encoderLength * HD * 4, usage: rw, category: "kv" },
      { name: `cross.${l}.v`, bytes: shape.encoderLength * HD * 4, usage: rw, category: "kv" },
    );
  }
  return out;
}

const round4 = (n: number) => Math.max(4, Math.ceil(n / 4) * 4);

/** Bytes of the run state for `spec` and `shape`, as allocated. */
export function switchStateBytes(spec: SwitchSpec, shape: SwitchShape, moeLayers: number): number {
  return stateLayout(spec, shape, moeLayers).reduce((a, b) => a + round4(b.bytes), 0);
}

/** The dense (non-expert) tensors the model uploads, each once. */
export function switchDenseNames(names: SwitchNames): string[] {
  const all = new Set<string>([names.encoderEmbed, names.decoderEmbed, names.lmHead]);
  const attn = (a: T5AttentionNames) => [a.norm, a.q, a.k, a.v, a.o].forEach((n) => all.add(n));
  for (const stack of [names.encoder, names.decoder]) {
    all.add(stack.relativeBias);
    all.add(stack.finalNorm);
    for (const b of stack.blocks) {
      attn(b.selfAttention);
      if (b.crossAttention) attn(b.crossAttention);
      all.add(b.ffNorm);
      if (b.mlp) [b.mlp.wi, b.mlp.wo].forEach((n) => all.add(n));
      if (b.router) all.add(b.router);
      if (b.routerBias) all.add(b.routerBias);
    }
  }
  return [...all];
}

/** Dense weight bytes on the GPU, rounded as allocated. */
export function switchDenseBytes(names: SwitchNames, byteLength: (name: string) => number): number {
  return switchDenseNames(names).reduce((a, n) => a + round4(byteLength(n)), 0);
}

/** Run-state buffers by name. */
type State = Record<string, TrackedBuffer>;

/** The model on the GPU: dense weights, run state, and the two recorded programs. */
export class SwitchMoe {
  readonly spec: SwitchSpec;
  readonly shape: SwitchShape;
  readonly #memory: GpuMemory;
  readonly #state: State;
  readonly #weights = new Map<string, TrackedBuffer>();
  readonly moeLayers: number;
  encoder!: Program;
  decoder!: Program;
  sample!: Dispatch;

  private constructor(
    spec: SwitchSpec,
    shape: SwitchShape,
    memory: GpuMemory,
    state: State,
    moeLayers: number,
  ) {
    this.spec = spec;
    this.shape = shape;
    this.#memory = memory;
    this.#state = state;
    this.moeLayers = moeLayers;
  }

  /** A run-state buffer (`ids`, `logits`, `generated`, `samplingParams`, `stats`, `counts`, `meta`, `topkIds`…). */
  buffer(name: string): GPUBuffer {
    const t = this.#state[name];
    if (!t) throw new Error(`Internal: no run-state buffer ${name}`);
    return t.buffer;
  }

  /** Uploads dense weights, allocates the run state and records both programs. */
  static async build(
    ctx: KernelContext,
    spec: SwitchSpec,
    names: SwitchNames,
    bytes: (name: string) => Uint8Array<ArrayBuffer>,
    cache: ExpertCache,
    shape: SwitchShape,
    options: { masked: boolean; capacity: boolean; onWeight?: (done: number, total: number) => void },
  ): Promise<SwitchMoe> {
    const { memory, device } = ctx;
    const state: State = {};
    for (const a of stateLayout(spec, shape, cache.moeLayers)) {
      state[a.name] = memory.alloc(`state.${a.name}`, a.bytes, a.usage, a.category);
    }
    const s = span(shape);
    device.queue.writeBuffer(
      state.buckets!.buffer,
      0,
      bucketTable(s, spec.relativeAttentionNumBuckets, spec.relativeAttentionMaxDistance),
    );
    const model = new SwitchMoe(spec, shape, memory, state, cache.moeLayers);
    const dense = switchDenseNames(names);
    let done = 0;
    for (const n of dense) {
      const b = bytes(n);
      const t = memory.alloc(n, b.byteLength, STORAGE | COPY_DST, "dense");
      if (b.byteLength % 4 === 0) device.queue.writeBuffer(t.buffer, 0, b);
      else {
        const padded = new Uint8Array(t.size);
        padded.set(b);
        device.queue.writeBuffer(t.buffer, 0, padded);
      }
      model.#weights.set(n, t);
      options.onWeight?.(++done, dense.length);
    }
    await model.record(ctx, names, cache, options);
    return model;
  }

  #w(name: string): GPUBuffer {
    const t = this.#weights.get(name);
    if (!t) throw new Error(`Internal: weight ${name} was not uploaded`);
    return t.buffer;
  }

  /** (Re-)records every dispatch; needed again after the expert cache is resized. */
  async record(
    ctx: KernelContext,
    names: SwitchNames,
    cache: ExpertCache,
    options: { masked: boolean; capacity: boolean },
  ): Promise<void> {
    const spec = this.spec;
    const { dModel: D, numHeads: H, dKv: hd, numExperts: E, dFf: I } = spec;
    const HD = H * hd;
    const eps = spec.layerNormEps;
    const w = (n: string) => this.#w(n);
    const b = (n: string) => this.buffer(n);
    const relOffset = span(this.shape) - 1;
    let moe = 0;

    const attention = async (
      p: string,
      a: T5AttentionNames,
      mode: T5AttentionMode,
      kv: { k: GPUBuffer; v: GPUBuffer },
      relBias: string | undefined,
      extra: Dispatch[] = [],
    ): Promise<Dispatch[]> => [
      await rmsNorm(ctx, { label: `${p}.norm`, weight: w(a.norm), x: b("x"), y: b("xn"), cols: D, eps }),
      await matmul(ctx, { label: `${p}.q`, weight: w(a.q), x: b("xn"), y: b("q"), inDim: D, outDim: HD }),
      ...(mode === "cross" ? [] : [
        await matmul(ctx, { label: `${p}.k`, weight: w(a.k), x: b("xn"), y: b("k"), inDim: D, outDim: HD }),
        await matmul(ctx, { label: `${p}.v`, weight: w(a.v), x: b("xn"), y: b("v"), inDim: D, outDim: HD }),
      ]),
      ...extra,
      await t5Attention(ctx, {
        label: `${p}.attention`,
        mode,
        numHeads: H,
        headDim: hd,
        q: b("q"),
        k: kv.k,
        v: kv.v,
        out: b("attn"),
        relBias: relBias ? w(relBias) : undefined,
        buckets: b("buckets"),
        bucketBase: mode === "decoder" ? 2 * span(this.shape) - 1 : 0,
        relOffset,
        meta: b("meta"),
      }),
      await matmul(ctx, {
        label: `${p}.o`,
        weight: w(a.o),
        x: b("attn"),
        y: b("x"),
        inDim: HD,
        outDim: D,
        accumulate: true,
      }),
    ];

    const stack = async (which: "encoder" | "decoder"): Promise<LayerDispatches[]> => {
      const st = names[which];
      const layers: LayerDispatches[] = [];
      for (const [i, blk] of st.blocks.entries()) {
        const p = `${which}.${i}`;
        const before: Dispatch[] = [];
        if (which === "encoder") {
          before.push(
            ...await attention(
              `${p}.self`,
              blk.selfAttention,
              "encoder",
              { k: b("k"), v: b("v") },
              st.relativeBias,
            ),
          );
        } else {
          const kCache = b(`kv.${i}.k`);
          const vCache = b(`kv.${i}.v`);
          const write = await kvWrite(ctx, {
            label: `${p}.kv_write`,
            numHeads: H,
            headDim: hd,
            k: b("k"),
            v: b("v"),
            kCache,
            vCache,
          });
          before.push(
            ...await attention(
              `${p}.self`,
              blk.selfAttention,
              "decoder",
              { k: kCache, v: vCache },
              st.relativeBias,
              [
                write,
              ],
            ),
            ...await attention(`${p}.cross`, blk.crossAttention!, "cross", {
              k: b(`cross.${i}.k`),
              v: b(`cross.${i}.v`),
            }, undefined),
          );
        }
        before.push(
          await rmsNorm(ctx, {
            label: `${p}.ff_norm`,
            weight: w(blk.ffNorm),
            x: b("x"),
            y: b("xn"),
            cols: D,
            eps,
          }),
        );
        const routed: Dispatch[] = [];
        const after: Dispatch[] = [];
        let moeLayer = -1;
        if (blk.router) {
          moeLayer = moe++;
          before.push(
            await matmul(ctx, {
              label: `${p}.router`,
              weight: w(blk.router),
              bias: blk.routerBias ? w(blk.routerBias) : undefined,
              x: b("xn"),
              y: b("routerLogits"),
              inDim: D,
              outDim: E,
            }),
            await router(ctx, {
              label: `${p}.route`,
              layer: moeLayer,
              experts: E,
              topK: 1,
              normTopkProb: false,
              masked: options.masked,
              dim: D,
              rowsCap: rows(this.shape),
              logits: b("routerLogits"),
              slots: cache.tableBuffer.buffer,
              x: b("xn"),
              topkIds: b("topkIds"),
              topkW: b("topkW"),
              utopkIds: b("utopkIds"),
              utopkP: b("utopkP"),
              xnorm: b("xnorm"),
            }),
          );
          if (options.capacity) {
            before.push(
              await expertCapacity(ctx, {
                label: `${p}.capacity`,
                layer: moeLayer,
                experts: E,
                topK: 1,
                capacity: spec.expertCapacity,
                topkIds: b("topkIds"),
                topkW: b("topkW"),
                counts: b("counts"),
              }),
            );
          }
          const slots = cache.buffers(moeLayer);
          routed.push(
            ...await experts(ctx, {
              label: `${p}.experts`,
              layer: moeLayer,
              dim: D,
              inter: I,
              topK: 1,
              experts: E,
              topkIds: b("topkIds"),
              topkW: b("topkW"),
              slots: cache.tableBuffer.buffer,
              x: b("xn"),
              gate: slots.gate,
              down: slots.down,
              h: b("h"),
              y: b("x"),
            }),
          );
        } else if (blk.mlp) {
          after.push(
            await matmul(ctx, {
              label: `${p}.wi`,
              weight: w(blk.mlp.wi),
              x: b("xn"),
              y: b("mlp"),
              inDim: D,
              outDim: I,
            }),
            await relu(ctx, { label: `${p}.relu`, a: b("mlp"), n: I }),
            await matmul(ctx, {
              label: `${p}.wo`,
              weight: w(blk.mlp.wo),
              x: b("mlp"),
              y: b("x"),
              inDim: I,
              outDim: D,
              accumulate: true,
            }),
          );
        }
        layers.push({ beforeExperts: before, experts: routed, afterExperts: after, moeLayer });
      }
      return layers;
    };

    const embedding = async (label: string, table: string) =>
      await embed(ctx, {
        label,
        table: w(table),
        ids: b("ids"),
        x: b("x"),
        dim: D,
        vocab: spec.vocabSize,
      });

    // encoder: embed → blocks → final norm into xn → each decoder block's cross K, V of it
    const stats = async (which: string, layer0: number, layers: number): Promise<Dispatch[]> =>
      layers === 0 ? [] : [
        await routerStats(ctx, {
          label: `${which}.router_stats`,
          layer0,
          layers,
          experts: E,
          topK: 1,
          rowsCap: rows(this.shape),
          slots: cache.tableBuffer.buffer,
          utopkIds: b("utopkIds"),
          utopkP: b("utopkP"),
          xnorm: b("xnorm"),
          stats: b("stats"),
        }),
      ];
    const encoderLayers = await stack("encoder");
    const encoderMoe = moe;
    const crossKv: Dispatch[] = [];
    for (const [i, blk] of names.decoder.blocks.entries()) {
      const a = blk.crossAttention!;
      crossKv.push(
        await matmul(ctx, {
          label: `decoder.${i}.cross.k`,
          weight: w(a.k),
          x: b("xn"),
          y: b(`cross.${i}.k`),
          inDim: D,
          outDim: HD,
        }),
        await matmul(ctx, {
          label: `decoder.${i}.cross.v`,
          weight: w(a.v),
          x: b("xn"),
          y: b(`cross.${i}.v`),
          inDim: D,
          outDim: HD,
        }),
      );
    }
    this.encoder = {
      pre: [await embedding("encoder.embed", names.encoderEmbed)],
      layers: encoderLayers,
      post: [
        ...await stats("encoder", 0, encoderMoe),
        await rmsNorm(ctx, {
          label: "encoder.final_norm",
          weight: w(names.encoder.finalNorm),
          x: b("x"),
          y: b("xn"),
          cols: D,
          eps,
        }),
        ...crossKv,
      ],
    };

    // decoder: embed → blocks → final norm of the logits rows → (tied: × d_model^-0.5) → LM head
    const decoderLayers = await stack("decoder");
    const head: Dispatch[] = [
      ...await stats("decoder", encoderMoe, moe - encoderMoe),
      await rmsNorm(ctx, {
        label: "decoder.final_norm",
        weight: w(names.decoder.finalNorm),
        x: b("x"),
        y: b("xf"),
        cols: D,
        eps,
        headRows: true,
      }),
    ];
    if (spec.tieWordEmbeddings) {
      head.push(await scaleHeadRows(ctx, { label: "lm_head.scale", a: b("xf"), n: D, scale: D ** -0.5 }));
    }
    head.push(
      await matmul(ctx, {
        label: "lm_head",
        weight: w(names.lmHead),
        x: b("xf"),
        y: b("logits"),
        inDim: D,
        outDim: spec.vocabSize,
        headRows: true,
      }),
    );
    this.decoder = {
      pre: [await embedding("decoder.embed", names.decoderEmbed)],
      layers: decoderLayers,
      post: head,
    };
    this.sample = await sampler(ctx, {
      label: "sample",
      params: b("samplingParams"),
      logits: b("logits"),
      ids: b("ids"),
      generated: b("generated"),
    });
  }

  /** Every dispatch of one pass of `program`, in order. */
  static dispatches(program: Program): Dispatch[] {
    return [
      ...program.pre,
      ...program.layers.flatMap((l) => [...l.beforeExperts, ...l.experts, ...l.afterExperts]),
      ...program.post,
    ];
  }

  /** Workgroups launched per call of this shape (dispatch-count statistics). */
  dispatchCount(program: Program, shape: CallShape): number {
    return SwitchMoe.dispatches(program).filter((d) => d.workgroups(shape) > 0).length;
  }

  /** Frees the run state and dense weights. */
  destroy(): void {
    for (const t of this.#weights.values()) this.#memory.free(t);
    this.#weights.clear();
    for (const t of Object.values(this.#state)) this.#memory.free(t);
  }
}
