/**
 * The engine: loads a checkpoint folder, holds the model on the GPU under a byte budget, and runs
 * forward calls and generation with a residency policy watching beside the token path.
 *
 * @module
 */
import { fileURLToPath } from "node:url";
import { expertSlotBytes, loadConfig } from "../checkpoint/config.ts";
import { Checkpoint } from "../checkpoint/shards.ts";
import { createGpu, type Gpu } from "../gpu/device.ts";
import { type CallShape, type Dispatch, encode, kernelContext } from "../gpu/dispatch.ts";
import type { GpuMemory } from "../gpu/memory.ts";
import { packSampling, type SamplingParams } from "../kernels/sample.ts";
import { packStep } from "../kernels/step.ts";
import { CausalMoe, denseBytes, type RunShape, runStateBytes } from "../models/causal_moe.ts";
import { checkTensors, type ModelNames, modelNames } from "../models/names.ts";
import { formatBytes } from "../moe/budget.ts";
import { checkpointExpertStore, ExpertCache } from "../moe/expert_cache.ts";
import { expertNorms, Importance } from "../moe/importance.ts";

import { OptionError } from "../errors.ts";
import { Tokenizer } from "../text/tokenizer.ts";
import { createSeq2SeqEngine, isSeq2SeqModel } from "./seq2seq.ts";
import { decodeLoop } from "./decode_loop.ts";
import { type CoreInit, EngineCore, planExpertSlots, type PlanOptions } from "./engine_core.ts";
import {
  allocStaging,
  checkExpertOptions,
  planOptions,
  resolveBudget,
  stagingBytes,
  type StagingSizes,
  tableBytes,
} from "./engine_setup.ts";
import { validateOptions } from "./requests.ts";
import type { Engine, EngineOptions, GenerateChunk } from "./types.ts";

export type {
  Engine,
  EngineOptions,
  EngineStats,
  FinishReason,
  GenerateChunk,
  GenerateRequest,
  Progress,
} from "./types.ts";

const DEFAULT_MODEL_URL = new URL("../../models/sotu-moe-mini", import.meta.url);

/** The bundled model's folder; only a local checkout (or a `file:` import) has one. */
function defaultModel(): string {
  if (DEFAULT_MODEL_URL.protocol !== "file:") {
    throw new OptionError(
      `No bundled model when imported from ${DEFAULT_MODEL_URL.origin}: pass model: "path/to/checkpoint"`,
    );
  }
  return fileURLToPath(DEFAULT_MODEL_URL);
}
const MAX_DEFAULT_CONTEXT = 4096;

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
  // encoder-decoders (model_type "switch_transformers") run in src/runtime/seq2seq.ts
  const model = typeof options === "object" && options !== null ? options.model : undefined;
  if (typeof model === "string" && model !== "" && await isSeq2SeqModel(model)) {
    return await createSeq2SeqEngine(options);
  }
  return await EngineImpl.create(options);
}

type ResolvedOptions = PlanOptions;

/** What the causal engine is built from. */
type CausalInit = CoreInit<ResolvedOptions> & { names: ModelNames; model: CausalMoe };

class EngineImpl extends EngineCore<ResolvedOptions> {
  readonly #names: ModelNames;
  readonly #model: CausalMoe;

  private constructor(init: CausalInit) {
    super(init);
    this.#names = init.names;
    this.#model = init.model;
  }

  static async create(options: EngineOptions): Promise<EngineImpl> {
    validateOptions(options);
    const progress = options.onProgress ?? (() => {});
    const modelDir = options.model ?? defaultModel();
    const policy = options.policy ?? "full";
    progress({ stage: "config", done: 0, total: 1 });
    const spec = await loadConfig(modelDir);
    const moeLayers = spec.sparseLayers.filter((s) => s).length;
    const staticSets = checkExpertOptions(options, moeLayers, spec.numExperts, spec.topK);
    const contextLength = options.contextLength ?? Math.min(spec.maxPositionEmbeddings, MAX_DEFAULT_CONTEXT);
    if (contextLength > spec.maxPositionEmbeddings) {
      throw new OptionError(
        `Invalid contextLength: ${contextLength} exceeds the model's max_position_embeddings ${spec.maxPositionEmbeddings}`,
      );
    }
    const maxRows = Math.min(options.maxBatchTokens ?? 64, contextLength);
    const shape: RunShape = { maxRows, contextLength, maxGenerated: contextLength };

    progress({ stage: "checkpoint", done: 0, total: 1 });
    const ckpt = Checkpoint.open(modelDir);
    let gpu: Gpu | undefined;
    let memory: GpuMemory | undefined;
    try {
      const names = modelNames(spec);
      checkTensors(spec, names, ckpt.tensors, modelDir);
      progress({ stage: "tokenizer", done: 0, total: 1 });
      const tokenizer = await Tokenizer.load(modelDir);

      // The footprint, known before any allocation.
      const uniformSlots = 32 + 24 * spec.numLayers;
      const staging: StagingSizes = {
        logits: maxRows * spec.vocabSize * 4,
        tokens: shape.maxGenerated * 4,
        topk: maxRows * spec.topK * 4,
        stats: moeLayers * spec.numExperts * 16,
      };
      const footprint = resolveBudget({
        policy,
        budget: options.budget,
        fixedBytes: denseBytes(spec, names, (n) => ckpt.info(n).byteLength) +
          runStateBytes(spec, shape, moeLayers) +
          tableBytes(uniformSlots, moeLayers, spec.numExperts) + stagingBytes(staging),
        slotBytes: expertSlotBytes(spec),
        moeLayers,
        experts: spec.numExperts,
        topK: spec.topK,
        staticSets,
        contextLength,
      });
      const { fixedBytes, slotBytes, budget } = footprint;

      progress({ stage: "gpu", done: 0, total: 1 });
      gpu = await createGpu();
      // the KV cache is the one buffer an option can grow past what the device binds
      const kvRowBytes = spec.numKvHeads * spec.headDim * 4;
      if (contextLength * kvRowBytes > gpu.info.maxStorageBufferBindingSize) {
        const limit = gpu.info.maxStorageBufferBindingSize;
        throw new OptionError(
          `Invalid contextLength: ${contextLength} positions need ${
            formatBytes(contextLength * kvRowBytes)
          } of KV cache per layer, above this GPU's maxStorageBufferBindingSize of ${
            formatBytes(limit)
          }: use contextLength <= ${Math.floor(limit / kvRowBytes)}`,
        );
      }
      const setup = kernelContext(gpu.device, uniformSlots, budget);
      memory = setup.memory;
      const { stepBuffer, ctx } = setup;
      const store = checkpointExpertStore(
        (n) => ckpt.bytes(n),
        names.layers.filter((l) => l.experts).map((l) => l.experts!),
      );
      const cache = new ExpertCache(gpu.device, memory, spec, store);

      // Slots per layer.
      const opts: ResolvedOptions = planOptions(options, slotBytes);
      const slots = planExpertSlots(
        policy,
        moeLayers,
        spec,
        budget - fixedBytes,
        slotBytes,
        staticSets,
        opts,
      );
      cache.resize(slots);

      const model = await CausalMoe.build(ctx, spec, names, (n) => ckpt.bytes(n), cache, shape, {
        masked: policy === "static" || policy === "swapmoe",
        onWeight: (done, total) => progress({ stage: "weights", done, total }),
      });
      const importance = new Importance(
        moeLayers,
        spec.numExperts,
        options.importanceDecay ?? 0.97,
        expertNorms(store, moeLayers, spec.numExperts, spec.moeIntermediateSize, spec.hiddenSize),
      );
      const engine = new EngineImpl({
        spec,
        tokenizer,
        modelDir,
        gpu,
        ckpt,
        names,
        memory,
        ctx,
        stepBuffer,
        cache,
        model,
        policy,
        importance,
        opts,
        ...footprint,
        staticSets,
        staging: allocStaging(memory, staging),
      });
      await engine.finishLoad(progress);
      return engine;
    } catch (e) {
      memory?.freeAll();
      gpu?.device.destroy();
      ckpt.close();
      throw e;
    }
  }

  #writeStep(shape: CallShape, headRow0: number, genIndex: number): void {
    this.gpu.device.queue.writeBuffer(this.stepBuffer.buffer, 0, packStep(shape, headRow0, genIndex));
  }

  #checkIds(ids: readonly number[]): void {
    if (!Array.isArray(ids) || ids.length === 0) {
      throw new OptionError("Invalid ids: expected a non-empty array of token ids");
    }
    for (const id of ids) {
      if (!Number.isSafeInteger(id) || id < 0 || id >= this.spec.vocabSize) {
        throw new OptionError(`Invalid token id: ${id}, expected an integer in [0, ${this.spec.vocabSize})`);
      }
    }
    if (ids.length > this.#model.shape.contextLength) {
      throw new OptionError(
        `Too many tokens: ${ids.length}, the context holds ${this.#model.shape.contextLength} (option contextLength)`,
      );
    }
  }

  /**
   * Encodes and submits one call of `t` rows from position `pos0`; with exact routing (lru) it
   * reads the routing back per MoE layer and loads missing experts in between.
   */
  async #call(
    t: number,
    pos0: number,
    headRow0: number,
    headRows: number,
    extra?: (e: GPUCommandEncoder) => void,
    genIndex = 0,
  ): Promise<void> {
    const device = this.gpu.device;
    const shape: CallShape = { t, headRows, pos0 };
    this.#writeStep(shape, headRow0, genIndex);
    const m = this.#model;
    if (!this.lru) {
      this.cache.flush();
      const enc = device.createCommandEncoder({ label: "call" });
      const pass = enc.beginComputePass({ label: "forward" });
      encode(pass, m.forwardDispatches(), shape);
      pass.end();
      extra?.(enc);
      device.queue.submit([enc.finish()]);
      return;
    }
    // lru: exact routing needs the experts' ids before the experts run. When a call's tokens need
    // more experts of a layer than it has slots, the experts run in passes over disjoint groups:
    // each pass adds the contributions of the experts resident for it, and an expert counted in an
    // earlier pass is evicted before the next, so nothing is added twice.
    const submit = (dispatches: Dispatch[], after?: (e: GPUCommandEncoder) => void) => {
      const enc = device.createCommandEncoder({ label: "call.lru" });
      const pass = enc.beginComputePass();
      encode(pass, dispatches, shape);
      pass.end();
      after?.(enc);
      device.queue.submit([enc.finish()]);
    };
    let pending = [m.embedDispatch];
    const K = this.spec.topK;
    const staging = this.topkStaging.buffer;
    for (const layer of m.layers) {
      pending.push(...layer.beforeExperts);
      if (layer.moeLayer < 0) {
        pending.push(...layer.experts, ...layer.afterExperts);
        continue;
      }
      submit(pending, (enc) => enc.copyBufferToBuffer(m.state.topkIds.buffer, 0, staging, 0, t * K * 4));
      await staging.mapAsync(GPUMapMode.READ, 0, t * K * 4);
      const ids = new Uint32Array(staging.getMappedRange(0, t * K * 4).slice(0));
      staging.unmap();
      const groups = this.lru.groups(this.cache, layer.moeLayer, ids);
      for (const [g, group] of groups.entries()) {
        if (g > 0) { for (const e of groups[g - 1]!) this.cache.evict(layer.moeLayer, e); }
        this.lru.ensure(this.cache, layer.moeLayer, group);
        this.cache.flush();
        if (g < groups.length - 1) submit(layer.experts);
      }
      pending = [...layer.experts, ...layer.afterExperts];
    }
    pending.push(...m.head);
    const enc = device.createCommandEncoder({ label: "call.lru.head" });
    const pass = enc.beginComputePass();
    encode(pass, pending, shape);
    pass.end();
    extra?.(enc);
    device.queue.submit([enc.finish()]);
  }

  async forward(ids: readonly number[]): Promise<Float32Array> {
    this.assertOpen();
    this.#checkIds(ids);
    return await this.serial(async () => {
      this.assertOpen();
      const t0 = performance.now();
      const V = this.spec.vocabSize;
      const out = new Float32Array(ids.length * V);
      const maxRows = this.#model.shape.maxRows;
      for (let start = 0; start < ids.length; start += maxRows) {
        const t = Math.min(maxRows, ids.length - start);
        this.gpu.device.queue.writeBuffer(
          this.#model.state.ids.buffer,
          0,
          new Uint32Array(ids.slice(start, start + t)),
        );
        this.swap?.pump(this.cache, this.opts.maxUploadBytesPerStep);
        const staging = this.logitsStaging.buffer;
        const statsAt = maxRows * V * 4;
        await this.#call(t, start, 0, t, (enc) => {
          enc.copyBufferToBuffer(this.#model.state.logits.buffer, 0, staging, 0, t * V * 4);
          this.copyStats(enc, staging, statsAt);
        });
        await staging.mapAsync(GPUMapMode.READ);
        out.set(new Float32Array(staging.getMappedRange(0, t * V * 4)), start * V);
        this.takeStats(staging, statsAt, t);
        staging.unmap();
      }
      this.maybeRevise(true);
      this.gpu.assertAlive();
      this.counters.prefillTokens += ids.length;
      this.counters.prefillSeconds += (performance.now() - t0) / 1000;
      return out;
    });
  }

  protected checkPrompt(ids: readonly number[]): void {
    this.#checkIds(ids);
  }

  protected async *decode(
    prompt: number[],
    sampling: SamplingParams,
    maxTokens: number,
    stop: string[],
    signal: AbortSignal | undefined,
  ): AsyncGenerator<GenerateChunk> {
    const device = this.gpu.device;
    const st = this.#model.state;
    const ctxLen = this.#model.shape.contextLength;
    const budget = Math.min(maxTokens, ctxLen - prompt.length);
    const eos = this.eos;
    device.queue.writeBuffer(st.samplingParams.buffer, 0, packSampling(this.spec.vocabSize, sampling));

    // Prefill in chunks; the last chunk computes the last row's logits and samples token 0.
    const tp = performance.now();
    this.swap?.pump(this.cache, this.opts.maxUploadBytesPerStep);
    const maxRows = this.#model.shape.maxRows;
    for (let start = 0; start < prompt.length; start += maxRows) {
      const t = Math.min(maxRows, prompt.length - start);
      const last = start + t === prompt.length;
      device.queue.writeBuffer(st.ids.buffer, 0, new Uint32Array(prompt.slice(start, start + t)));
      // statistics keep summing on the GPU; the first token readback carries them
      await this.#call(
        t,
        start,
        last ? t - 1 : 0,
        last ? 1 : 0,
        last ? (enc) => this.#sampleInto(enc) : undefined,
      );
    }

    // Decode: token 0 came out of the prefill; step g feeds token g − 1 back from the GPU.
    yield* decodeLoop({
      device,
      tokenizer: this.tokenizer,
      eos,
      minTokens: sampling.minTokens,
      stop,
      signal,
      maxTokens: budget,
      generated: st.generated.buffer,
      staging: this.tokenStaging.map((t) => t.buffer),
      statsAt: this.#model.shape.maxGenerated * 4,
      step: async (g) => {
        if (g === 0) return;
        this.swap?.pump(this.cache, this.opts.maxUploadBytesPerStep);
        await this.#call(1, prompt.length + g - 1, 0, 1, (enc) => this.#sampleInto(enc), g);
      },
      ...this.decodeHooks(prompt.length, prompt.length - 1, tp),
    });
    this.gpu.assertAlive();
  }

  #sampleInto(enc: GPUCommandEncoder): void {
    const pass = enc.beginComputePass({ label: "sample" });
    encode(pass, [this.#model.sample], { t: 1, headRows: 1, pos0: 0 });
    pass.end();
  }

  protected get statsBuffer(): GPUBuffer {
    return this.#model.state.stats.buffer;
  }

  protected get contextLength(): number {
    return this.#model.shape.contextLength;
  }

  protected async rerecord(): Promise<void> {
    await this.#model.record(
      this.ctx,
      this.#names,
      this.cache,
      this.policy === "static" || this.policy === "swapmoe",
    );
  }
}
