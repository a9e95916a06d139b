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
import type { Dispatch } from "../../gpu/dispatch.ts";
import type { Allocation } from "../../gpu/memory.ts";
import { embed } from "../../kernels/embed.ts";
import { matmul } from "../../kernels/matmul.ts";
import { rmsNorm } from "../../kernels/norm.ts";
import { experts, groupedScratch } from "../../kernels/experts.ts";
import { router, routerStats } from "../../kernels/router.ts";
import { sampler } from "../../kernels/sample.ts";
import {
  bucketTable,
  expertCapacity,
  kvWrite,
  relu,
  scaleHeadRows,
  t5Attention,
  type T5AttentionMode,
} from "../../kernels/t5.ts";
import type { ExpertCache } from "../../moe/expert_cache.ts";
import {
  activation,
  bufferNamed,
  type BuildInit,
  type DenseWeight,
  type LayerDispatches,
  logitRows,
  type ModelProgram,
  type Pass,
  type ProgramIo,
  type RunShape,
  sequenceState,
} from "../family.ts";
import type { SwitchSpec } from "./config.ts";
import type { SwitchNames, T5AttentionNames } from "./names.ts";

const STORAGE = GPUBufferUsage.STORAGE;
const COPY_DST = GPUBufferUsage.COPY_DST;

/**
 * Rows of the activation buffers: a whole encoder input (the encoder runs a prompt of up to
 * `contextLength` tokens in one call) or a decoder call, whichever is larger.
 */
export function switchPassRows(shape: RunShape): number {
  return Math.max(shape.contextLength, shape.maxRows);
}

/** Span of relative positions the bucket table covers: encoder inputs and decoder caches both hold `contextLength`. */
function span(shape: RunShape): number {
  return shape.contextLength;
}

/** The grouped experts' scratch words at `shape` ({@link groupedScratch}); undefined where that path never runs. */
function groupedWords(spec: SwitchSpec, shape: RunShape) {
  return groupedScratch({ rows: switchPassRows(shape), topK: 1, experts: spec.numExperts, dim: spec.dModel });
}

/**
 * Every run-state buffer for `shape`: the one list that the footprint counts and the engine allocates.
 * The encoder's input and the decoder's cache both hold up to `contextLength` positions.
 */
export function switchRunState(spec: SwitchSpec, shape: RunShape, moeLayers: number): Allocation[] {
  const { dModel: D, numHeads: H, dKv: hd, numExperts: E, dFf: I, vocabSize: V } = spec;
  const T = switchPassRows(shape);
  const HD = H * hd;
  const act = activation;
  const rw = GPUBufferUsage.STORAGE | COPY_DST | GPUBufferUsage.COPY_SRC;
  const g = groupedWords(spec, shape);
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
    ...(g ? [act("route", g.route)] : []), // u32: the grouped experts' rows by expert, in tiles
    // [T, I] a dense block's MLP hidden; in a sparse block, the grouped experts' yk [T, D]
    act("mlp", Math.max(T * I, g?.yk ?? 0)),
    act("xf", logitRows(shape) * D),
    act("logits", logitRows(shape) * V),
    ...sequenceState(shape, T), // rows [T] Row, generated [1, maxGenerated], sampling [1]: one sequence
    act("stats", moeLayers * E * 4),
    act("counts", moeLayers * E),
    { name: "meta", bytes: 16, usage: STORAGE | COPY_DST, category: "tables" },
    { name: "buckets", bytes: 2 * (2 * span(shape) - 1) * 4, usage: STORAGE | COPY_DST, category: "tables" },
  ];
  for (let l = 0; l < spec.numDecoderLayers; l++) {
    out.push(
      { name: `kv.${l}.k`, bytes: shape.contextLength * HD * 4, usage: STORAGE, category: "kv" },
      { name: `kv.${l}.v`, bytes: shape.contextLength * HD * 4, usage: STORAGE, category: "kv" },
      { name: `cross.${l}.k`, bytes: shape.contextLength * HD * 4, usage: rw, category: "kv" },
      { name: `cross.${l}.v`, bytes: shape.contextLength * HD * 4, usage: rw, category: "kv" },
    );
  }
  return out;
}

/** The dense (non-expert) weights, each tensor once, uploaded as stored. */
export function switchDense(names: SwitchNames): DenseWeight[] {
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
  return [...all].map((n) => ({ name: n, parts: [n] }));
}

/** The encoder-decoder on the GPU: the two recorded passes over the buffers the engine allocated. */
export class SwitchProgram implements ModelProgram {
  readonly spec: SwitchSpec;
  readonly names: SwitchNames;
  readonly shape: RunShape;
  readonly io: ProgramIo;
  /** Expert capacity `"drop"` (transformers 4.x): tokens past `expert_capacity` per expert get no expert output. */
  readonly capacity: boolean;
  readonly #init: BuildInit;
  encoder: Pass = { pre: [], layers: [], post: [] };
  decoder: Pass = { pre: [], layers: [], post: [] };
  sample!: Dispatch;

  private constructor(spec: SwitchSpec, names: SwitchNames, init: BuildInit) {
    this.spec = spec;
    this.names = names;
    this.shape = init.shape;
    this.capacity = init.options.expertCapacity === "drop";
    this.#init = init;
    const b = (n: string) => bufferNamed(init.state, n);
    this.io = {
      ids: b("ids"),
      logits: b("logits"),
      rows: b("rows"),
      generated: b("generated"),
      samplingParams: b("sampling"),
      stats: b("stats"),
      topkIds: b("topkIds"),
    };
  }

  /** Fills the bucket table of the relative position bias and records both passes. */
  static async build(spec: SwitchSpec, names: SwitchNames, init: BuildInit): Promise<SwitchProgram> {
    const program = new SwitchProgram(spec, names, init);
    init.ctx.device.queue.writeBuffer(
      bufferNamed(init.state, "buckets"),
      0,
      bucketTable(span(init.shape), spec.relativeAttentionNumBuckets, spec.relativeAttentionMaxDistance),
    );
    await program.record(init.cache, init.masked);
    return program;
  }

  /**
   * Before each pass: the encoder's length goes to `meta` (cross-attention's key count), and with
   * expert capacity `"drop"` the per-expert counts restart (capacity counts from the start of each
   * pass of a stack: a whole encoder prompt, a `forward` call's decoder ids, one generation step).
   */
  startPass(queue: GPUQueue, pass: Pass, rows: number): void {
    if (pass === this.encoder) {
      queue.writeBuffer(bufferNamed(this.#init.state, "meta"), 0, new Uint32Array([rows, 0, 0, 0]));
    }
    if (this.capacity) {
      const counts = new Uint32Array(this.#init.cache.moeLayers * this.spec.numExperts);
      queue.writeBuffer(bufferNamed(this.#init.state, "counts"), 0, counts);
    }
  }

  /** (Re-)records every dispatch; needed again after the expert cache is resized. */
  async record(cache: ExpertCache, masked: boolean): Promise<void> {
    const { ctx } = this.#init;
    const names = this.names;
    const spec = this.spec;
    const { dModel: D, numHeads: H, dKv: hd, numExperts: E, dFf: I } = spec;
    const HD = H * hd;
    const eps = spec.layerNormEps;
    const w = (n: string) => bufferNamed(this.#init.weights, n);
    const b = (n: string) => bufferNamed(this.#init.state, n);
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
      ...await matmul(ctx, { label: `${p}.q`, weight: w(a.q), x: b("xn"), y: b("q"), inDim: D, outDim: HD }),
      ...(mode === "cross" ? [] : [
        ...await matmul(ctx, {
          label: `${p}.k`,
          weight: w(a.k),
          x: b("xn"),
          y: b("k"),
          inDim: D,
          outDim: HD,
        }),
        ...await matmul(ctx, {
          label: `${p}.v`,
          weight: w(a.v),
          x: b("xn"),
          y: b("v"),
          inDim: D,
          outDim: HD,
        }),
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
      ...await matmul(ctx, {
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
            ...await matmul(ctx, {
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
              masked,
              dim: D,
              rowsCap: switchPassRows(this.shape),
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
          if (this.capacity) {
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
          const [wi, wo] = cache.buffers(moeLayer); // slot buffers in SWITCH_EXPERT order
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
              gate: wi!,
              down: wo!,
              h: b("h"),
              y: b("x"),
              formats: cache.precisions,
              highSlots: cache.capacity[0]![moeLayer]!,
              // yk shares the dense blocks' MLP scratch, which a sparse block does not use
              grouped: groupedWords(spec, this.shape) ? { yk: b("mlp"), route: b("route") } : undefined,
            }),
          );
        } else if (blk.mlp) {
          after.push(
            ...await matmul(ctx, {
              label: `${p}.wi`,
              weight: w(blk.mlp.wi),
              x: b("xn"),
              y: b("mlp"),
              inDim: D,
              outDim: I,
            }),
            await relu(ctx, { label: `${p}.relu`, a: b("mlp"), n: I }),
            ...await matmul(ctx, {
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
        rows: b("rows"),
        generated: b("generated"),
        maxGenerated: this.shape.maxGenerated,
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
          rowsCap: switchPassRows(this.shape),
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
        ...await matmul(ctx, {
          label: `decoder.${i}.cross.k`,
          weight: w(a.k),
          x: b("xn"),
          y: b(`cross.${i}.k`),
          inDim: D,
          outDim: HD,
        }),
        ...await matmul(ctx, {
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
      ...await matmul(ctx, {
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
      params: b("sampling"),
      logits: b("logits"),
      rows: b("rows"),
      generated: b("generated"),
      maxGenerated: this.shape.maxGenerated,
    });
  }
}
