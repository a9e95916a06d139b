/**
 * The engine, one for every model family: loads a checkpoint folder, holds the model on the GPU
 * under a byte budget, and runs forward calls and generation with a residency policy watching beside
 * the token path. What differs between families (config, tensor names, run state, the recorded
 * passes) comes from the model's {@link Family} (`src/models/registry.ts`); the budget's arithmetic
 * from {@link BudgetPlan} (`src/moe/budget.ts`).
 *
 * A request's path: prompt ids → a slot of its own (`batch.ts`: concurrent generations decode
 * together, each in its slot's KV caches) → (encoder-decoder: the encoder pass over them) → the
 * decoder pass over the prompt (or the decoder start token) in chunks interleaved with the other
 * generations' steps, the last of which samples token 0 on the GPU → steps of one token, sampled on
 * the GPU, with tokens and routing statistics read back in batches → the policy revises the resident
 * experts.
 *
 * @module
 */
import type { Checkpoint } from "../checkpoint/shards.ts";
import type { Gpu } from "../gpu/device.ts";
import { type CallShape, type Dispatch, encode, type KernelContext } from "../gpu/dispatch.ts";
import type { GpuMemory } from "../gpu/memory.ts";
import { callSplits, chunkRows, packRows, packStep } from "../kernels/step.ts";
import {
  type Architecture,
  logitRows,
  type ModelProgram,
  type Pass,
  passDispatches,
  type RunShape,
} from "../models/family.ts";
import type { ModelSpec } from "../models/registry.ts";
import { type Budget, type BudgetPlan, changeLimit } from "../moe/budget.ts";
import type { ExpertCache } from "../moe/expert_cache.ts";
import { expertNorms, Importance } from "../moe/importance.ts";
import { openQuantStore, type QuantStore } from "../quant/store.ts";
import { initialResidents, isMasked, LruPolicy, SwapMoePolicy } from "../moe/policies.ts";
import { UploadPacer } from "../moe/upload_pacer.ts";
import { EngineClosedError, OptionError } from "../errors.ts";
import { resolveModel } from "../hub/mod.ts";
import { Tokenizer } from "../text/tokenizer.ts";
import { chatApi, completionsApi } from "../server/openai.ts";
import type { ChatApi, Completions } from "../server/openai_types.ts";
import { Batcher, type Call, Sequence } from "./batch.ts";
import { EngineLock } from "./engine_lock.ts";
import { MAX_READ, TokenStream } from "./token_stream.ts";
import { type GpuModel, loadGpuModel } from "./gpu_model.ts";
import { stagingSizes, TOKEN_READBACKS } from "./layout.ts";
import { planModel } from "./model_plan.ts";
import { parseGeneration, promptIds, validateOptions } from "./requests.ts";
import { type GenerationDefaults, readGenerationConfig } from "../checkpoint/generation_config.ts";
import type {
  EncoderDecoderOptions,
  Engine,
  EngineOptions,
  EngineStats,
  GenerateChunk,
  GenerateRequest,
} from "./types.ts";

export type {
  EncoderDecoderOptions,
  Engine,
  EngineOptions,
  EngineStats,
  FinishReason,
  GenerateChunk,
  GenerateRequest,
  GenerateUsage,
  GpuTimeline,
  Progress,
  UploadPacing,
} from "./types.ts";

/**
 * Loads a model and returns an {@link Engine}. Options are validated before any GPU work.
 *
 * @example Hold at most 60% of the all-resident footprint, with SwapMoE's masked gating
 * ```ts
 * import { createEngine } from "@swapmoe/swapmoe";
 *
 * await using engine = await createEngine({
 *   model: "./models/OLMoE-1B-7B-0924", // a Hugging Face checkpoint folder
 *   policy: "swapmoe",
 *   budget: "60%",
 * });
 * let text = "";
 * for await (const chunk of engine.generate({ prompt: "The state of the Union is", maxTokens: 16 })) {
 *   text += chunk.text;
 * }
 * const { gpuBytes, budgetBytes, hitRate } = engine.stats();
 * ```
 *
 * @throws {OptionError} for an invalid option, {@link BudgetError} for a budget below what the policy
 * needs, `ConfigError` or `CheckpointError` for an unusable model folder, `WebGpuUnavailableError`
 * when no WebGPU adapter can be opened
 */
export async function createEngine(options: EngineOptions = {}): Promise<Engine> {
  return await MoeEngine.load(options);
}

/** Settings of the residency policies, resolved from the options. */
interface PolicySettings {
  updateInterval: number;
  /** Bytes uploaded per decode step: fixed when the option sets it, else paced (upload_pacer.ts). */
  maxUploadBytesPerStep: number | undefined;
  /** Per call of `forward` (and a prompt's encoder pass), where no decode step is timed: two experts. */
  callUploadBytes: number;
  profile: number[][] | undefined;
  staticSets: number[][] | undefined;
}

/** What a {@link MoeEngine} is made of once loaded. */
interface Parts extends GpuModel {
  /** The quantized copies' store (mapped cache files), closed with the engine. */
  quantized: QuantStore | undefined;
  arch: Architecture<ModelSpec>;
  tokenizer: Tokenizer;
  /** What generation_config.json sets for requests that do not say. */
  defaults: GenerationDefaults;
  modelDir: string;
  ckpt: Checkpoint;
  plan: BudgetPlan;
  budget: number;
  shape: RunShape;
  importance: Importance;
  settings: PolicySettings;
}

class MoeEngine implements Engine {
  readonly spec: ModelSpec;
  readonly tokenizer: Tokenizer;
  readonly modelDir: string;
  readonly chat: ChatApi = chatApi(this);
  readonly completions: Completions = completionsApi(this);
  readonly #arch: Architecture<ModelSpec>;
  readonly #defaults: GenerationDefaults;
  readonly #gpu: Gpu;
  readonly #ckpt: Checkpoint;
  readonly #quantized: QuantStore | undefined;
  readonly #memory: GpuMemory;
  readonly #ctx: KernelContext;
  readonly #step: GPUBuffer;
  readonly #cache: ExpertCache;
  readonly #program: ModelProgram;
  readonly #plan: BudgetPlan;
  readonly #shape: RunShape;
  readonly #importance: Importance;
  readonly #settings: PolicySettings;
  readonly #swap: SwapMoePolicy | undefined;
  /** SwapMoE's uploads per decode step, sized in time (upload_pacer.ts). */
  readonly #pacer = new UploadPacer();
  readonly #lru: LruPolicy | undefined;
  // readback buffers: logits of a forward call, the batches' two token readbacks, lru's routing
  readonly #logitsStaging: GPUBuffer;
  readonly #tokenStaging: GPUBuffer[];
  readonly #topkStaging: GPUBuffer;
  /** Timestamps of each decode step's pass, resolved, then copied into the readback (see {@link Batcher}). */
  readonly #stamps: { querySet: GPUQuerySet; resolve: GPUBuffer } | undefined;
  /** The budget in force, in bytes. */
  #budget: number;
  #closed = false;
  /** `close` has begun: a generation that takes the engine again from now on ends. */
  #closing = false;
  /** Calls take the GPU state one at a time; the batch driver gives it up between steps (engine_lock.ts). */
  readonly #lock = new EngineLock();
  /** The generations, each in a slot of its own, and the driver that steps them together. */
  readonly #batcher: Batcher;
  /** Generations not finished yet: `close` ends them. */
  readonly #generators = new Set<AsyncGenerator<GenerateChunk>>();
  #tokensSinceRevision = 0;
  /**
   * SwapMoE: a revision is due, run after the next decode step's submit (or when the batcher idles),
   * while the GPU works: not where a batch is read, since the read waits for the GPU to go idle.
   */
  #reviseDue = false;
  readonly #counters = { prefillTokens: 0, decodeTokens: 0, prefillSeconds: 0, decodeSeconds: 0 };
  /** stats().gpuTimeline's totals. */
  readonly #timeline = { steps: 0, stepSeconds: 0, gaps: 0, gapSeconds: 0 };

  private constructor(p: Parts) {
    this.spec = p.arch.spec;
    this.tokenizer = p.tokenizer;
    this.modelDir = p.modelDir;
    this.#arch = p.arch;
    this.#defaults = p.defaults;
    this.#gpu = p.gpu;
    this.#ckpt = p.ckpt;
    this.#quantized = p.quantized;
    this.#memory = p.memory;
    this.#ctx = p.ctx;
    this.#step = p.step;
    this.#cache = p.cache;
    this.#program = p.program;
    this.#plan = p.plan;
    this.#budget = p.budget;
    this.#shape = p.shape;
    this.#importance = p.importance;
    this.#settings = p.settings;
    const staged = (n: string) => p.staging.get(n)!.buffer;
    this.#logitsStaging = staged("staging.logits");
    this.#tokenStaging = Array.from({ length: TOKEN_READBACKS }, (_, i) => staged(`staging.tokens${i}`));
    this.#topkStaging = staged("staging.topk");
    // the GPU's clock for swapmoe's upload pacing and stats().gpuTimeline, where the device has timestamp
    // queries (a query set of 2·MAX_READ timestamps: 256 bytes of GPU memory the allocator does not see)
    if (p.gpu.device.features.has("timestamp-query")) {
      this.#stamps = {
        querySet: p.gpu.device.createQuerySet({ label: "steps", type: "timestamp", count: 2 * MAX_READ }),
        resolve: staged("staging.stamps"),
      };
    }
    if (p.plan.policy === "swapmoe") this.#swap = new SwapMoePolicy();
    if (p.plan.policy === "lru") this.#lru = new LruPolicy(p.arch.moeLayers, p.arch.spec.numExperts);
    this.#batcher = this.#newBatcher();
  }

  /** Plans the model (everything that can be checked without a GPU), then loads it onto the GPU. */
  static async load(options: EngineOptions): Promise<MoeEngine> {
    validateOptions(options); // before reading any option (planModel checks the model's own)
    const progress = options.onProgress ?? (() => {});
    if (options.model !== undefined) {
      // a model named org/name[@revision] comes from the Hugging Face hub, or its cache
      const resolved = await resolveModel(options.model, {
        onProgress: (p) =>
          progress({
            stage: "download",
            done: p.fileIndex,
            total: p.fileCount,
            bytes: p.bytes,
            totalBytes: p.totalBytes,
          }),
      });
      if (resolved.message) progress({ stage: "download", done: 0, total: 0, message: resolved.message });
      options = { ...options, model: resolved.dir };
    }
    const planned = await planModel(options, (stage) => progress({ stage, done: 0, total: 1 }));
    const { modelDir, arch, ckpt, shape, plan, staticSets, tensors, precisions } = planned;
    let loaded: GpuModel | undefined;
    let quantized: QuantStore | undefined;
    try {
      progress({ stage: "tokenizer", done: 0, total: 1 });
      const tokenizer = await Tokenizer.load(modelDir);
      const defaults = await readGenerationConfig(modelDir);
      const budget = plan.resolve(options.budget);
      // copies at precisions the checkpoint does not store: quantized once, then from the cache
      const derived = precisions.filter((p) => p !== arch.nativePrecision);
      if (derived.length > 0) {
        quantized = await openQuantStore(
          {
            files: ckpt.files,
            moeLayers: arch.moeLayers,
            experts: arch.spec.numExperts,
            matrices: arch.expertMatrices,
            pieces: tensors.expertPieces,
            bytes: (n) => ckpt.bytes(n),
          },
          derived,
          {
            onProgress: (q) => progress({ stage: "quantize", done: q.bytes, total: q.totalBytes, ...q }),
          },
        );
      }
      loaded = await loadGpuModel(planned, {
        budget,
        slots: plan.slots(budget),
        masked: isMasked(plan.policy),
        options: options as Record<string, unknown>,
        derived: quantized,
        progress,
      });
      const { gpu, memory, cache, store } = loaded;
      const importance = new Importance(
        arch.moeLayers,
        arch.spec.numExperts,
        options.importanceDecay ?? 0.97,
        expertNorms(store, arch.moeLayers, arch.spec.numExperts, arch.expertMatrices, arch.nativePrecision),
      );
      const engine = new MoeEngine({
        ...loaded,
        arch,
        tokenizer,
        defaults,
        modelDir,
        ckpt,
        plan,
        budget,
        shape,
        importance,
        quantized,
        settings: {
          updateInterval: options.updateInterval ?? 16,
          maxUploadBytesPerStep: options.maxUploadBytesPerStep,
          callUploadBytes: options.maxUploadBytesPerStep ?? 2 * cache.copyBytes[0]!,
          profile: options.profile,
          staticSets,
        },
      });
      engine.#fill((done, total, bytes, totalBytes) =>
        progress({ stage: "experts", done, total, bytes, totalBytes })
      );
      plan.audit(memory, cache.capacity);
      await gpu.device.queue.onSubmittedWorkDone();
      gpu.assertAlive();
      progress({ stage: "ready", done: 1, total: 1 });
      return engine;
    } catch (e) {
      loaded?.memory.freeAll();
      loaded?.gpu.device.destroy();
      quantized?.[Symbol.dispose]();
      ckpt.close();
      throw e;
    }
  }

  /** Throws when the engine was closed or its device lost. */
  #assertOpen(): void {
    if (this.#closed) {
      throw new EngineClosedError("The engine is closed: create a new one with createEngine()");
    }
    this.#gpu.assertAlive();
  }

  /**
   * Runs `fn` holding the engine: after the calls that asked before, and before those that ask later
   * (the batch driver gives the engine up to it between steps: see `generate`).
   */
  async #serial<T>(fn: () => Promise<T>): Promise<T> {
    const lease = await this.#lock.acquire();
    try {
      return await fn();
    } catch (e) {
      throw await this.#gpu.explain(e);
    } finally {
      lease.release();
    }
  }

  /** Throws unless `ids` are 1 … `max` token ids of this model's vocabulary. */
  #checkIds(name: string, ids: readonly number[], max: number): void {
    if (!Array.isArray(ids) || ids.length === 0) {
      throw new OptionError(`Invalid ${name}: expected a non-empty array of token ids`);
    }
    for (const id of ids) {
      if (!Number.isSafeInteger(id) || id < 0 || id >= this.spec.vocabSize) {
        throw new OptionError(`Invalid token id: ${id}, expected an integer in [0, ${this.spec.vocabSize})`);
      }
    }
    if (ids.length > max) {
      throw new OptionError(
        `Too many tokens${
          name === "ids" ? "" : ` in ${name}`
        }: ${ids.length}, the context holds ${max} (option contextLength)`,
      );
    }
  }

  /** Whether the model is an encoder-decoder: its prompt goes to the encoder. */
  get encoderDecoder(): boolean {
    return this.#program.encoder !== undefined;
  }

  /**
   * SwapMoE: uploads waiting swaps before a call of `forward` or an encoder pass: at most
   * `callUploadBytes` (at least one copy).
   */
  #pump(): void {
    this.#swap?.pump(this.#cache, this.#settings.callUploadBytes);
  }

  /**
   * SwapMoE: uploads waiting swaps after a decode step's submit, for the steps after it (the batcher's
   * `afterStep`): `maxUploadBytesPerStep` when set (at least one copy), else what the pacer's credit
   * covers. Returns the seconds spent.
   */
  #pumpStep(): number {
    this.#reviseNowIfDue();
    const swap = this.#swap;
    if (!swap || swap.pending === 0) {
      this.#pacer.step(0);
      return 0;
    }
    const fixed = this.#settings.maxUploadBytesPerStep;
    const t0 = performance.now();
    const bytes = fixed !== undefined
      ? swap.pump(this.#cache, fixed)
      : swap.pump(this.#cache, this.#pacer.step(swap.nextCost(this.#cache)), false);
    const seconds = (performance.now() - t0) / 1000;
    this.#pacer.spend(bytes);
    this.#pacer.observeUpload(bytes, seconds);
    return bytes > 0 ? seconds : 0; // a step that uploaded nothing is a step without uploads
  }

  /**
   * Encodes and submits one call of `pass` over `shape`'s rows (their `Row` table written already):
   * the Step, the family's per-pass setup when `newPass`, the dispatches, then `after` (copies,
   * sampling); `countStats` false leaves the routing statistics as they were. With exact routing
   * (`lru`) it reads the routing back before each MoE layer's experts and loads the missing ones;
   * when a call's tokens need more experts of a layer than it has slots, the experts run in passes
   * over disjoint groups: each adds the contributions of the experts resident for it, and an expert
   * counted in an earlier group is evicted before the next, so nothing is added twice.
   */
  async #run(
    pass: Pass,
    shape: CallShape,
    o: {
      headRow0?: number;
      countStats?: boolean;
      newPass: boolean;
      after?: (enc: GPUCommandEncoder) => void;
      /** Timestamps the pass writes (a decode step's, for the upload pacing): query indices. */
      stamp?: { begin?: number; end?: number };
    },
  ): Promise<void> {
    const device = this.#gpu.device;
    device.queue.writeBuffer(this.#step, 0, packStep(shape, o.headRow0 ?? 0, o.countStats ?? true));
    if (o.newPass) this.#program.startPass?.(device.queue, pass, shape.t);
    const submit = (
      dispatches: readonly Dispatch[],
      after?: (enc: GPUCommandEncoder) => void,
      timestampWrites?: GPUComputePassTimestampWrites,
    ) => {
      const enc = device.createCommandEncoder({ label: "call" });
      const cp = enc.beginComputePass({ label: "forward", timestampWrites });
      encode(cp, dispatches, shape);
      cp.end();
      after?.(enc);
      device.queue.submit([enc.finish()]);
    };
    const lru = this.#lru;
    if (!lru) {
      this.#cache.flush();
      const stamps = this.#stamps;
      const stamp = o.stamp;
      submit(
        passDispatches(pass),
        o.after,
        stamps && stamp && (stamp.begin !== undefined || stamp.end !== undefined)
          ? {
            querySet: stamps.querySet,
            beginningOfPassWriteIndex: stamp.begin,
            endOfPassWriteIndex: stamp.end,
          }
          : undefined,
      );
      return;
    }
    const K = this.spec.topK;
    const bytes = shape.t * K * 4;
    const staging = this.#topkStaging;
    let pending = [...pass.pre];
    for (const layer of pass.layers) {
      pending.push(...layer.beforeExperts);
      if (layer.moeLayer < 0) {
        pending.push(...layer.experts, ...layer.afterExperts);
        continue;
      }
      submit(pending, (enc) => enc.copyBufferToBuffer(this.#program.io.topkIds, 0, staging, 0, bytes));
      await staging.mapAsync(GPUMapMode.READ, 0, bytes);
      const ids = new Uint32Array(staging.getMappedRange(0, bytes).slice(0));
      staging.unmap();
      const groups = lru.groups(this.#cache, layer.moeLayer, ids);
      for (const [g, group] of groups.entries()) {
        if (g > 0) { for (const e of groups[g - 1]!) this.#cache.evict(layer.moeLayer, e, 0); }
        lru.ensure(this.#cache, layer.moeLayer, group);
        this.#cache.flush();
        if (g < groups.length - 1) submit(layer.experts);
      }
      pending = [...layer.experts, ...layer.afterExperts];
    }
    submit([...pending, ...pass.post], o.after);
  }

  /**
   * The encoder pass over the prompt (encoder-decoder models, one sequence: slot 0): the decoder then
   * attends to its output; `countStats` false when it rebuilds what ran before.
   */
  async #encode(ids: readonly number[], countStats = true): Promise<void> {
    const queue = this.#gpu.device.queue;
    queue.writeBuffer(this.#program.io.ids, 0, new Uint32Array(ids));
    queue.writeBuffer(this.#program.io.rows, 0, packRows(chunkRows(0, 0, ids.length)));
    this.#pump();
    await this.#run(this.#program.encoder!, { t: ids.length, headRows: 0, pos0: 0 }, {
      newPass: true,
      countStats,
    });
  }

  /** Encodes and submits one call of a batch step (`batch.ts`): its ids and rows, the decoder pass, the sampler. */
  async #call(c: Call): Promise<void> {
    const queue = this.#gpu.device.queue;
    const io = this.#program.io;
    const t = c.rows.length;
    queue.writeBuffer(io.ids, 0, c.ids);
    queue.writeBuffer(io.rows, 0, packRows(c.rows));
    const shape: CallShape = { t, headRows: c.heads, pos0: c.rows[0]!.pos, splits: callSplits(c.rows) };
    await this.#run(this.#program.decoder, shape, {
      headRow0: t - c.heads,
      countStats: c.countStats,
      newPass: c.newPass,
      after: c.heads > 0 ? (enc) => this.#sample(enc, c.heads) : undefined,
      stamp: c.stamp,
    });
  }

  /** Inside `enc`: samples the `heads` logits rows of the call (a pass of its own). */
  #sample(enc: GPUCommandEncoder, heads: number): void {
    const cp = enc.beginComputePass({ label: "sample" });
    encode(cp, [this.#program.sample], { t: heads, headRows: heads, pos0: 0 });
    cp.end();
  }

  /**
   * Logits [T × V] row-major for every position of `ids`, as one request from position 0; an
   * encoder-decoder encodes `ids` and returns the decoder's logits for `options.decoderIds`.
   */
  async forward(ids: readonly number[], options: EncoderDecoderOptions = {}): Promise<Float32Array> {
    this.#assertOpen();
    if (typeof options !== "object" || options === null) {
      throw new OptionError("Invalid forward options: expected { decoderIds }");
    }
    const ctxLen = this.#shape.contextLength;
    this.#checkIds("ids", ids, ctxLen);
    let rows: readonly number[] = ids;
    if (this.encoderDecoder) {
      rows = options.decoderIds ?? [this.#arch.decoderStartTokenId!];
      this.#checkIds("decoderIds", rows, ctxLen);
    } else if (options.decoderIds !== undefined) {
      throw new OptionError(
        `Invalid decoderIds: ${this.spec.modelType} is a decoder-only model, decoderIds is for encoder-decoder models`,
      );
    }
    return await this.#serial(async () => {
      this.#assertOpen();
      const t0 = performance.now();
      const V = this.spec.vocabSize;
      const out = new Float32Array(rows.length * V);
      const io = this.#program.io;
      const queue = this.#gpu.device.queue;
      // the KV caches of a free slot, or of one whose generation rebuilds them when it runs again
      const slot = this.#batcher.borrowSlot();
      try {
        // routing statistics of the encoder pass ride with the first chunk's
        let encoded = 0;
        if (this.encoderDecoder) {
          await this.#encode(ids);
          encoded = ids.length;
        }
        const maxRows = logitRows(this.#shape); // passes of as many rows as have logits
        const staging = this.#logitsStaging;
        const statsAt = maxRows * V * 4;
        for (let start = 0; start < rows.length; start += maxRows) {
          const t = Math.min(maxRows, rows.length - start);
          queue.writeBuffer(io.ids, 0, new Uint32Array(rows.slice(start, start + t)));
          queue.writeBuffer(io.rows, 0, packRows(chunkRows(slot, start, t)));
          this.#pump();
          // one pass over all of `rows`: a family's per-pass state (e.g. expert capacity) spans its chunks
          await this.#run(this.#program.decoder, { t, headRows: t, pos0: start }, {
            newPass: start === 0,
            after: (enc) => {
              enc.copyBufferToBuffer(io.logits, 0, staging, 0, t * V * 4);
              this.#copyStats(enc, staging, statsAt);
            },
          });
          await staging.mapAsync(GPUMapMode.READ);
          out.set(new Float32Array(staging.getMappedRange(0, t * V * 4)), start * V);
          this.#takeStats(staging, statsAt, t + encoded);
          encoded = 0;
          staging.unmap();
        }
      } finally {
        this.#batcher.returnSlot(slot);
      }
      this.#maybeRevise(true);
      this.#gpu.assertAlive();
      this.#counters.prefillTokens += ids.length + (this.encoderDecoder ? rows.length : 0);
      this.#counters.prefillSeconds += (performance.now() - t0) / 1000;
      return out;
    });
  }

  /**
   * Streams generated tokens; requests are validated before they queue for the engine.
   *
   * The generation asks for a slot when its first chunk is read, and decodes together with the
   * others that hold slots (`batch.ts`); past `maxBatchSequences` generations it waits in line. It
   * runs ahead of its consumer by a few readback batches at most. While its consumer is away and
   * another generation (or `forward`) needs its slot, it gives the slot up, and when its consumer asks
   * again it queues for one and rebuilds its KV cache (a prefill over its prompt and its tokens), so
   * its output is what it would have been alone and an iterator dropped without `return()` blocks
   * nothing.
   */
  generate(request: GenerateRequest): AsyncGenerator<GenerateChunk> {
    this.#assertOpen();
    const ids = promptIds(this.tokenizer, request);
    this.#checkIds("ids", ids, this.#shape.contextLength);
    const { sampling, maxTokens, stop } = parseGeneration(
      request,
      this.spec.vocabSize,
      this.#eos,
      this.#defaults,
    );
    const ctxLen = this.#shape.contextLength;
    // prompt and new tokens share a decoder-only model's context; a decoder's own holds ctxLen new tokens
    const allowance = Math.min(maxTokens, this.encoderDecoder ? ctxLen : ctxLen - ids.length);
    const seq = new Sequence({
      prompt: ids,
      rows: this.encoderDecoder ? [this.#arch.decoderStartTokenId!] : ids,
      sampling,
      maxTokens: allowance,
      signal: request.signal,
      out: new TokenStream({
        tokenizer: this.tokenizer,
        eos: this.#eos,
        minTokens: sampling.minTokens,
        stop,
        maxTokens: allowance,
        promptTokens: ids.length,
      }),
    });
    const gen: AsyncGenerator<GenerateChunk> = this.#generate(seq, () => this.#generators.delete(gen));
    this.#generators.add(gen);
    return gen;
  }

  /** Queues a generation for a slot when its first chunk is read, and hands its chunks out. */
  async *#generate(seq: Sequence, done: () => void): AsyncGenerator<GenerateChunk> {
    try {
      this.#assertOpen();
      if (this.#closing) throw new EngineClosedError("The engine was closed during the generation");
      this.#batcher.join(seq);
      for (;;) {
        const chunk = await this.#batcher.take(seq);
        yield chunk;
        if (chunk.finishReason !== undefined) return;
      }
    } catch (e) {
      throw await this.#gpu.explain(e);
    } finally {
      this.#batcher.leave(seq);
      done();
    }
  }

  /** The scheduler over this engine's slots: what it needs of the engine. */
  #newBatcher(): Batcher {
    const staging = this.#tokenStaging;
    // a decode readback: tokens [sequences, MAX_READ], the statistics, then the steps' timestamps
    const stampsAt = this.#shape.sequences * MAX_READ * 4 + this.#statsBytes;
    return new Batcher({
      device: this.#gpu.device,
      io: this.#program.io,
      lock: this.#lock,
      vocabSize: this.spec.vocabSize,
      slots: this.#shape.sequences,
      maxRows: this.#shape.maxRows,
      maxGenerated: this.#shape.maxGenerated,
      encoderDecoder: this.encoderDecoder,
      staging,
      statsAt: this.#shape.sequences * MAX_READ * 4,
      closing: () => this.#closing,
      assertOpen: () => this.#assertOpen(),
      beginBatch: (steps, sequences) => this.#pacer.beginBatch(steps, sequences),
      afterStep: () => this.#pumpStep(),
      timed: (t) => this.#pacer.observeBatch(t),
      encode: (prompt, countStats) => this.#encode(prompt, countStats),
      call: (c) => this.#call(c),
      copyStats: (enc, into, offset) => this.#copyStats(enc, into, offset),
      stamps: this.#stamps && {
        at: stampsAt,
        timed: (t) => {
          const k = this.#timeline;
          k.steps += t.steps;
          k.stepSeconds += t.stepSeconds;
          k.gaps += t.gaps;
          k.gapSeconds += t.gapSeconds;
        },
        copy: (enc, into, count) => {
          const s = this.#stamps!;
          enc.resolveQuerySet(s.querySet, 0, count, s.resolve, 0);
          enc.copyBufferToBuffer(s.resolve, 0, into, stampsAt, count * 8);
        },
      },
      onBatch: (into, rows, prompts) => {
        this.#takeStats(into, this.#shape.sequences * MAX_READ * 4, rows);
        // a prompt is in: revise at once (as after a request), else when due; either after the next
        // step's submit (#pumpStep) or when the batcher idles
        if (prompts > 0 || this.#tokensSinceRevision >= this.#settings.updateInterval) this.#reviseDue = true;
      },
      idle: () => this.#reviseNowIfDue(),
      count: (c) => {
        const k = this.#counters;
        k.prefillTokens += c.prefillTokens ?? 0;
        k.prefillSeconds += c.prefillSeconds ?? 0;
        k.decodeTokens += c.decodeTokens ?? 0;
        k.decodeSeconds += c.decodeSeconds ?? 0;
      },
      explain: (e) => this.#gpu.explain(e),
    });
  }

  /** Bytes of the routing statistics, [moeLayers, E, 4] f32. */
  get #statsBytes(): number {
    return stagingSizes(this.#arch, this.#shape).stats;
  }

  /** Inside `enc`: copies the statistics the GPU summed since the last copy to `staging` at `offset`, and clears them. */
  #copyStats(enc: GPUCommandEncoder, staging: GPUBuffer, offset: number): void {
    const stats = this.#program.io.stats;
    enc.copyBufferToBuffer(stats, 0, staging, offset, this.#statsBytes);
    enc.clearBuffer(stats, 0, this.#statsBytes);
  }

  /** Adds statistics from a mapped staging range covering `tokens` tokens. */
  #takeStats(staging: GPUBuffer, offset: number, tokens: number): void {
    const f = new Float32Array(staging.getMappedRange(offset, this.#statsBytes).slice(0));
    this.#importance.add(f, tokens);
    this.#tokensSinceRevision += tokens;
  }

  /** SwapMoE: the revision a batch read found due ({@link Engine.#reviseDue}), now. */
  #reviseNowIfDue(): void {
    if (!this.#reviseDue) return;
    this.#reviseDue = false;
    this.#maybeRevise(true);
  }

  /** SwapMoE: revise the virtual experts when due (or when `force`, after a request). */
  #maybeRevise(force: boolean): void {
    if (!this.#swap) return;
    if (!force && this.#tokensSinceRevision < this.#settings.updateInterval) return;
    this.#tokensSinceRevision = 0;
    this.#swap.revise(this.#cache, this.#importance.scores());
  }

  /** Ids that end generation: config.json's and the tokenizer's. */
  get #eos(): Set<number> {
    const t = this.tokenizer.eosTokenId;
    return new Set([...this.spec.eosTokenIds, ...(t !== undefined ? [t] : [])]);
  }

  /**
   * Fills the slots: everything (full), the given or profiled sets (static), the best guess (swapmoe,
   * lru) — the top experts at the high tier, the next at the low.
   */
  #fill(progress: (done: number, total: number, bytes: number, totalBytes: number) => void): void {
    const cache = this.#cache;
    const cap = cache.capacity;
    const total = cap.reduce((a, tier) => a + tier.reduce((x, n) => x + n, 0), 0);
    const totalBytes = cap.reduce(
      (a, tier, t) => a + tier.reduce((x, n) => x + n, 0) * cache.copyBytes[t]!,
      0,
    );
    const { staticSets, profile } = this.#settings;
    let done = 0;
    let bytes = 0;
    for (let l = 0; l < cache.moeLayers; l++) {
      const sets = initialResidents(cap.map((c) => c[l]!), {
        set: staticSets?.[l],
        profile: profile?.[l],
        importance: this.#importance.score(l),
      });
      sets.forEach((set, tier) => {
        for (const e of set) {
          cache.load(l, e, tier);
          bytes += cache.copyBytes[tier]!;
          progress(++done, total, bytes, totalBytes);
        }
      });
    }
    cache.flush();
  }

  stats(): EngineStats {
    const c = this.#counters;
    const cache = this.#cache;
    const imp = this.#importance;
    return {
      gpuBytes: this.#memory.bytes,
      peakGpuBytes: this.#memory.peakBytes,
      budgetBytes: this.#budget,
      minimumBudgetBytes: this.#plan.minimumBytes,
      fullBytes: this.#plan.fullBytes,
      expertBytes: cache.copyBytes[0]!,
      expertPrecision: cache.precisions.join("+"),
      expertBytesByPrecision: Object.fromEntries(cache.precisions.map((p, t) => [p, cache.copyBytes[t]!])),
      gpuBytesByPrecision: Object.fromEntries(cache.precisions.map((p, t) => [
        p,
        cache.capacity[t]!.reduce((a, n) => a + n, 0) * cache.copyBytes[t]!,
      ])),
      contextLength: this.#shape.contextLength,
      maxBatchSequences: this.#shape.sequences,
      maxBatchTokens: this.#shape.maxRows,
      activeSequences: this.#batcher.active,
      gpuBytesByKind: this.#memory.byCategory(),
      policy: this.#plan.policy,
      expertSlots: Array.from(
        { length: cache.moeLayers },
        (_, l) => cache.capacity.reduce((a, c) => a + c[l]!, 0),
      ),
      expertSlotsByPrecision: Object.fromEntries(cache.precisions.map((p, t) => [p, cache.capacity[t]!])),
      residentExperts: Array.from({ length: cache.moeLayers }, (_, l) => cache.residentAny(l)),
      residentByPrecision: Object.fromEntries(cache.precisions.map((p, t) => [
        p,
        Array.from({ length: cache.moeLayers }, (_, l) => cache.resident(l, t)),
      ])),
      expertUsage: imp.usage.map((r) => Array.from(r)),
      hitRate: this.#lru ? 1 : imp.hitRate,
      highPrecisionHitRate: this.#lru ? 1 : imp.highHitRate,
      routedChoices: imp.choices,
      cacheHitRate: imp.hitRate,
      swaps: this.#swap?.swaps ?? this.#lru?.misses ?? 0,
      bytesUploaded: cache.stats.bytesUploaded,
      uploadSeconds: cache.stats.uploadSeconds,
      uploadPacing: this.#swap && this.#settings.maxUploadBytesPerStep === undefined
        ? {
          bytesPerSecond: this.#pacer.rate,
          share: this.#pacer.share,
          stepSeconds: this.#pacer.stepSeconds ?? null,
          idleSeconds: this.#pacer.idleSeconds ?? null,
          bytesPerStep: this.#pacer.perStep,
          clock: this.#stamps ? "gpu" : "host",
        }
        : undefined,
      gpuTimeline: this.#stamps ? { ...this.#timeline } : undefined,
      tokens: c.prefillTokens + c.decodeTokens,
      prefillTokens: c.prefillTokens,
      decodeTokens: c.decodeTokens,
      prefillTokensPerSecond: c.prefillSeconds > 0 ? c.prefillTokens / c.prefillSeconds : 0,
      decodeTokensPerSecond: c.decodeSeconds > 0 ? c.decodeTokens / c.decodeSeconds : 0,
      gpu: this.#gpu.info,
    };
  }

  async setBudget(budget: Budget): Promise<EngineStats> {
    this.#assertOpen();
    if (budget === undefined) {
      throw new OptionError("Invalid budget: undefined, expected a budget to change to");
    }
    const bytes = this.#plan.resolve(budget);
    return await this.#serial(async () => {
      this.#assertOpen();
      await this.#gpu.device.queue.onSubmittedWorkDone();
      const slots = this.#plan.slots(bytes);
      this.#swap?.clear();
      this.#pacer.reset();
      // frees the old slots first, then allocates under the new limit
      changeLimit(this.#memory, bytes, () => this.#cache.resize(slots));
      this.#budget = bytes;
      this.#ctx.params.reset();
      await this.#program.record(this.#cache, isMasked(this.#plan.policy));
      this.#fill(() => {});
      this.#plan.audit(this.#memory, this.#cache.capacity);
      await this.#gpu.device.queue.onSubmittedWorkDone();
      return this.stats();
    });
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closing = true;
    // generations waiting for a chunk end now; those suspended between chunks end on return()
    this.#batcher.failAll(new EngineClosedError("The engine was closed during the generation"));
    await Promise.all([...this.#generators].map((g) => g.return(undefined).catch(() => {})));
    this.#generators.clear();
    // after the calls that asked before (a forward in flight completes); those after find it closed
    const lease = await this.#lock.acquire();
    try {
      if (this.#closed) return;
      this.#closed = true;
      try {
        if (!this.#gpu.lost) await this.#gpu.device.queue.onSubmittedWorkDone();
      } finally {
        this.#memory.freeAll();
        this.#gpu.device.destroy();
        this.#quantized?.[Symbol.dispose]();
        this.#ckpt.close();
        this.tokenizer.close(); // its thread, if a long prompt started one
      }
    } finally {
      lease.release();
    }
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}
