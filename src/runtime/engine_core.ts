/**
 * What every engine shares, whatever the model family: the GPU and its budgeted allocator, the
 * expert cache with its residency policy and importance statistics, the budget and `setBudget`,
 * request serialisation, statistics and `close`. A family's engine (causal in engine.ts,
 * encoder-decoder in seq2seq.ts) adds its model, its forward pass and its decode steps.
 *
 * @module
 */
import type { ModelSpec } from "../checkpoint/config.ts";
import type { Checkpoint } from "../checkpoint/shards.ts";
import type { Gpu } from "../gpu/device.ts";
import type { KernelContext } from "../gpu/dispatch.ts";
import type { GpuMemory, TrackedBuffer } from "../gpu/memory.ts";
import { type Budget, formatBytes, parseBudget } from "../moe/budget.ts";
import type { ExpertCache } from "../moe/expert_cache.ts";
import type { Importance } from "../moe/importance.ts";
import { type PlannerKind, planSlots, topExperts } from "../moe/planner.ts";
import { LruPolicy, type PolicyName, SwapMoePolicy } from "../moe/policies.ts";
import { BudgetError, EngineClosedError } from "../errors.ts";
import type { Tokenizer } from "../text/tokenizer.ts";
import type { SamplingParams } from "../kernels/sample.ts";
import type { DecodeLoopOptions } from "./decode_loop.ts";
import { parseGeneration, promptIds } from "./requests.ts";
import { auditFootprint } from "./engine_setup.ts";
import type { Engine, EngineStats, GenerateChunk, GenerateRequest, Progress } from "./types.ts";

/** Planner settings resolved from the options. */
export interface PlanOptions {
  planner: PlannerKind;
  updateInterval: number;
  maxUploadBytesPerStep: number;
  profile?: number[][];
}

/** Slots per MoE layer: every expert (full), the given sets (static), or the planner over the expert share. */
export function planExpertSlots(
  policy: PolicyName,
  layers: number,
  spec: Pick<ModelSpec, "numExperts" | "topK">,
  expertShare: number,
  slotBytes: number,
  staticSets: number[][] | undefined,
  opts: Pick<PlanOptions, "planner" | "profile">,
): number[] {
  const E = spec.numExperts;
  if (policy === "full") return Array(layers).fill(E);
  if (staticSets) return staticSets.map((s) => s.length);
  return planSlots(opts.planner, Math.floor(expertShare / slotBytes), layers, E, spec.topK, opts.profile);
}

/** What {@link EngineCore} is built from. */
export interface CoreInit<O extends PlanOptions = PlanOptions> {
  spec: ModelSpec;
  tokenizer: Tokenizer;
  modelDir: string;
  gpu: Gpu;
  ckpt: Checkpoint;
  memory: GpuMemory;
  ctx: KernelContext;
  stepBuffer: TrackedBuffer;
  cache: ExpertCache;
  policy: PolicyName;
  importance: Importance;
  opts: O;
  fixedBytes: number;
  fullBytes: number;
  minimumBytes: number;
  budget: number;
  staticSets: number[][] | undefined;
  staging: { logits: TrackedBuffer; tokens: TrackedBuffer[]; topk: TrackedBuffer };
}

/** The shared part of an engine. */
export abstract class EngineCore<O extends PlanOptions = PlanOptions> implements Engine {
  readonly spec: ModelSpec;
  readonly tokenizer: Tokenizer;
  readonly modelDir: string;
  protected readonly gpu: Gpu;
  protected readonly ckpt: Checkpoint;
  protected readonly memory: GpuMemory;
  protected readonly ctx: KernelContext;
  protected readonly stepBuffer: TrackedBuffer;
  protected readonly cache: ExpertCache;
  protected readonly policy: PolicyName;
  protected readonly swap: SwapMoePolicy | undefined;
  protected readonly lru: LruPolicy | undefined;
  protected readonly importance: Importance;
  protected readonly opts: O;
  protected readonly fixedBytes: number;
  protected readonly fullBytes: number;
  protected readonly minimumBytes: number;
  protected budget: number;
  protected readonly staticSets: number[][] | undefined;
  // readback staging buffers
  protected readonly logitsStaging: TrackedBuffer;
  protected readonly tokenStaging: TrackedBuffer[];
  protected readonly topkStaging: TrackedBuffer;
  protected closed = false;
  protected busy: Promise<unknown> = Promise.resolve();
  /** Generations not finished yet: `close` ends them, as one left suspended holds the engine. */
  protected readonly generators = new Set<AsyncGenerator<GenerateChunk>>();
  protected tokensSinceRevision = 0;
  protected counters = { prefillTokens: 0, decodeTokens: 0, prefillSeconds: 0, decodeSeconds: 0 };

  /** Takes over what `init` holds. */
  protected constructor(init: CoreInit<O>) {
    this.spec = init.spec;
    this.tokenizer = init.tokenizer;
    this.modelDir = init.modelDir;
    this.gpu = init.gpu;
    this.ckpt = init.ckpt;
    this.memory = init.memory;
    this.ctx = init.ctx;
    this.stepBuffer = init.stepBuffer;
    this.cache = init.cache;
    this.policy = init.policy;
    this.importance = init.importance;
    this.opts = init.opts;
    this.fixedBytes = init.fixedBytes;
    this.fullBytes = init.fullBytes;
    this.minimumBytes = init.minimumBytes;
    this.budget = init.budget;
    this.staticSets = init.staticSets;
    this.logitsStaging = init.staging.logits;
    this.tokenStaging = init.staging.tokens;
    this.topkStaging = init.staging.topk;
    if (init.policy === "swapmoe") this.swap = new SwapMoePolicy();
    if (init.policy === "lru") this.lru = new LruPolicy(init.cache.moeLayers, init.spec.numExperts);
  }

  abstract forward(ids: readonly number[], options?: { decoderIds?: number[] }): Promise<Float32Array>;
  /** Throws when `ids` cannot be a prompt of this model (ids out of range, too long). */
  protected abstract checkPrompt(ids: readonly number[]): void;
  /** Runs one generation: prompt in, chunks of new tokens out. */
  protected abstract decode(
    prompt: number[],
    sampling: SamplingParams,
    maxTokens: number,
    stop: string[],
    signal: AbortSignal | undefined,
  ): AsyncGenerator<GenerateChunk>;
  /** The model's routing statistics buffer, [moeLayers, E, 4] f32. */
  protected abstract get statsBuffer(): GPUBuffer;
  /** Positions the KV cache holds. */
  protected abstract get contextLength(): number;
  /** Records the model's dispatches again (after the expert slots were resized). */
  protected abstract rerecord(): Promise<void>;

  /** Throws when the engine was closed or its device lost. */
  protected assertOpen(): void {
    if (this.closed) {
      throw new EngineClosedError("The engine is closed: create a new one with createEngine()");
    }
    this.gpu.assertAlive();
  }

  /** Runs `fn` after every earlier call finished (calls never interleave on the GPU state). */
  protected serial<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.busy.then(fn, fn).catch(async (e) => {
      throw await this.gpu.explain(e);
    });
    this.busy = run.catch(() => {});
    return run;
  }

  /** Bytes of the routing statistics, [moeLayers, E, 4] f32. */
  protected get statsBytes(): number {
    return this.cache.moeLayers * this.spec.numExperts * 16;
  }

  /** Inside `enc`: copies the statistics the GPU summed since the last copy to `staging` at `offset`, and clears them. */
  protected copyStats(enc: GPUCommandEncoder, staging: GPUBuffer, offset: number): void {
    const stats = this.statsBuffer;
    enc.copyBufferToBuffer(stats, 0, staging, offset, this.statsBytes);
    enc.clearBuffer(stats, 0, this.statsBytes);
  }

  /** Adds statistics from a mapped staging range covering `tokens` tokens. */
  protected takeStats(staging: GPUBuffer, offset: number, tokens: number): void {
    const f = new Float32Array(staging.getMappedRange(offset, this.statsBytes).slice(0));
    this.importance.add(f, tokens);
    this.tokensSinceRevision += tokens;
  }

  /** SwapMoE: revise the virtual experts when due (or when `force`, after a request). */
  protected maybeRevise(force: boolean): void {
    if (!this.swap) return;
    if (!force && this.tokensSinceRevision < this.opts.updateInterval) return;
    this.tokensSinceRevision = 0;
    this.swap.revise(this.cache, this.importance.scores());
  }

  /** Ids that end generation: config.json's and the tokenizer's. */
  protected get eos(): Set<number> {
    const t = this.tokenizer.eosTokenId;
    return new Set([...this.spec.eosTokenIds, ...(t !== undefined ? [t] : [])]);
  }

  /**
   * The last steps of loading: fill the slots, check the allocator against the planned footprint byte
   * for byte (the budget is a promise), and wait until the uploads are on the GPU.
   */
  protected async finishLoad(progress: (p: Progress) => void): Promise<void> {
    this.fillInitial((done, total) => progress({ stage: "experts", done, total }));
    auditFootprint(this.memory, this.fixedBytes, this.cache.capacity, this.cache.slotBytes);
    await this.gpu.device.queue.onSubmittedWorkDone();
    this.gpu.assertAlive();
    progress({ stage: "ready", done: 1, total: 1 });
  }

  /** Fills the slots: everything (full), the given or profiled set (static), the best guess (swapmoe, lru). */
  protected fillInitial(progress: (done: number, total: number) => void): void {
    const cache = this.cache;
    const cap = cache.capacity;
    const total = cap.reduce((a, b) => a + b, 0);
    let done = 0;
    for (let l = 0; l < cache.moeLayers; l++) {
      let set: number[];
      if (this.staticSets) set = this.staticSets[l]!;
      else if (this.opts.profile) set = topExperts(this.opts.profile[l]!, cap[l]!);
      else {
        // no knowledge yet: the most important by what has been seen (nothing at start → lowest ids)
        set = topExperts(this.importance.score(l), cap[l]!);
      }
      for (const e of set) {
        cache.load(l, e);
        progress(++done, total);
      }
    }
    cache.flush();
  }

  stats(): EngineStats {
    const c = this.counters;
    const cache = this.cache;
    const imp = this.importance;
    return {
      gpuBytes: this.memory.bytes,
      peakGpuBytes: this.memory.peakBytes,
      budgetBytes: this.budget,
      minimumBudgetBytes: this.minimumBytes,
      fullBytes: this.fullBytes,
      expertBytes: cache.slotBytes,
      contextLength: this.contextLength,
      gpuBytesByKind: this.memory.byCategory(),
      policy: this.policy,
      expertSlots: cache.capacity,
      residentExperts: Array.from({ length: cache.moeLayers }, (_, l) => cache.resident(l)),
      expertUsage: imp.usage.map((r) => Array.from(r)),
      hitRate: this.lru ? 1 : imp.hitRate,
      routedChoices: imp.choices,
      cacheHitRate: imp.hitRate,
      swaps: this.swap?.swaps ?? this.lru?.misses ?? 0,
      bytesUploaded: cache.stats.bytesUploaded,
      uploadSeconds: cache.stats.uploadSeconds,
      tokens: c.prefillTokens + c.decodeTokens,
      prefillTokens: c.prefillTokens,
      decodeTokens: c.decodeTokens,
      prefillTokensPerSecond: c.prefillSeconds > 0 ? c.prefillTokens / c.prefillSeconds : 0,
      decodeTokensPerSecond: c.decodeSeconds > 0 ? c.decodeTokens / c.decodeSeconds : 0,
      gpu: this.gpu.info,
    };
  }

  async setBudget(budget: Budget): Promise<EngineStats> {
    this.assertOpen();
    const bytes = parseBudget(budget, this.fullBytes);
    const need = this.policy === "full"
      ? this.fullBytes
      : this.staticSets
      ? this.fixedBytes + this.staticSets.reduce((a, s) => a + s.length, 0) * this.cache.slotBytes
      : this.minimumBytes;
    if (bytes < need) {
      throw new BudgetError(
        `Budget too small: ${bytes} bytes (${
          formatBytes(bytes)
        }) given, policy "${this.policy}" needs at least ${need} bytes (${formatBytes(need)})`,
      );
    }
    return await this.serial(async () => {
      this.assertOpen();
      await this.gpu.device.queue.onSubmittedWorkDone();
      const slots = planExpertSlots(
        this.policy,
        this.cache.moeLayers,
        this.spec,
        bytes - this.fixedBytes,
        this.cache.slotBytes,
        this.staticSets,
        this.opts,
      );
      // free first, then allocate under the new limit: usage never exceeds max(old, new) budget
      this.swap?.clear();
      this.memory.limit = Math.max(bytes, this.memory.bytes);
      this.cache.resize(slots);
      this.memory.limit = bytes;
      this.budget = bytes;
      this.ctx.uniforms.reset();
      await this.rerecord();
      this.fillInitial(() => {});
      await this.gpu.device.queue.onSubmittedWorkDone();
      return this.stats();
    });
  }

  async close(): Promise<void> {
    if (this.closed) return;
    await Promise.all([...this.generators].map((g) => g.return(undefined).catch(() => {})));
    this.generators.clear();
    await this.busy.catch(() => {});
    if (this.closed) return;
    this.closed = true;
    try {
      if (!this.gpu.lost) await this.gpu.device.queue.onSubmittedWorkDone();
    } finally {
      this.memory.freeAll();
      this.gpu.device.destroy();
      this.ckpt.close();
    }
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }

  /**
   * The decode loop's bookkeeping: routing statistics per batch (the first also covers the
   * `promptTokens` the prefill or encoder routed), SwapMoE revisions, and the throughput counters;
   * `t0` is when the request started.
   */
  protected decodeHooks(
    promptLength: number,
    promptTokens: number,
    t0: number,
  ): Pick<DecodeLoopOptions, "copyStats" | "onBatch" | "onDecoded"> {
    return {
      copyStats: (enc, staging, offset) => this.copyStats(enc, staging, offset),
      onBatch: (staging, offset, start, n) => {
        if (start === 0) {
          // the prompt is in: its statistics and the first tokens came back together
          this.takeStats(staging, offset, promptTokens + n);
          this.counters.prefillTokens += promptLength;
          this.counters.prefillSeconds += (performance.now() - t0) / 1000;
          this.maybeRevise(true);
        } else {
          this.takeStats(staging, offset, n);
          this.maybeRevise(false);
        }
      },
      onDecoded: (tokens, seconds) => {
        this.counters.decodeTokens += tokens;
        this.counters.decodeSeconds += seconds;
      },
    };
  }

  /** Streams generated tokens; requests are validated before they queue for the engine. */
  generate(request: GenerateRequest): AsyncGenerator<GenerateChunk> {
    this.assertOpen();
    const ids = promptIds(this.tokenizer, request);
    this.checkPrompt(ids);
    const { sampling, maxTokens, stop } = parseGeneration(request, this.spec.vocabSize, this.eos);
    const gen: AsyncGenerator<GenerateChunk> = this.#generate(
      ids,
      sampling,
      maxTokens,
      stop,
      request.signal,
      () => this.generators.delete(gen),
    );
    this.generators.add(gen);
    return gen;
  }

  /** Holds the engine for the whole generation, then releases it. */
  async *#generate(
    prompt: number[],
    sampling: SamplingParams,
    maxTokens: number,
    stop: string[],
    signal: AbortSignal | undefined,
    done: () => void,
  ): AsyncGenerator<GenerateChunk> {
    // Hold the engine for the whole generation.
    let release!: () => void;
    const held = new Promise<void>((r) => (release = r));
    const prev = this.busy;
    this.busy = prev.then(() => held);
    await prev.catch(() => {});
    try {
      this.assertOpen();
      yield* this.decode(prompt, sampling, maxTokens, stop, signal);
    } catch (e) {
      throw await this.gpu.explain(e);
    } finally {
      release();
      done();
    }
  }
}
