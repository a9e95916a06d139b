/**
 * The encoder-decoder engine (Switch Transformers): the same public {@link Engine} as the causal one,
 * over an encoder pass per request (its output's cross-attention K/V kept on the GPU) and a decoder
 * that starts from `decoder_start_token_id`. Budget, expert cache, policies (`full`, `static`,
 * `swapmoe`, `lru`), the planner and importance are the causal engine's, over every router of the
 * model: encoder routers first, then decoder routers.
 *
 * @module
 */
import {
  loadSwitchConfig,
  readModelType,
  SWITCH_MODEL_TYPE,
  switchModelSpec,
  type SwitchSpec,
} from "../checkpoint/switch_config.ts";
import { expertSlotBytes } from "../checkpoint/config.ts";
import { Checkpoint } from "../checkpoint/shards.ts";
import { createGpu, type Gpu } from "../gpu/device.ts";
import { type CallShape, type Dispatch, encode, kernelContext } from "../gpu/dispatch.ts";
import type { GpuMemory } from "../gpu/memory.ts";
import { packSampling, type SamplingParams } from "../kernels/sample.ts";
import { packStep } from "../kernels/step.ts";
import {
  type Program,
  switchDenseBytes,
  SwitchMoe,
  type SwitchShape,
  switchStateBytes,
} from "../models/switch.ts";
import { checkSwitchTensors, switchExperts, type SwitchNames, switchNames } from "../models/switch_names.ts";
import { formatBytes } from "../moe/budget.ts";
import { checkpointExpertStore, ExpertCache } from "../moe/expert_cache.ts";
import { expertNorms, Importance } from "../moe/importance.ts";
import { OptionError } from "../errors.ts";
import { Tokenizer } from "../text/tokenizer.ts";
import type { Engine, EngineOptions, GenerateChunk } from "./types.ts";
import { decodeLoop } from "./decode_loop.ts";
import {
  allocStaging,
  checkExpertOptions,
  planOptions,
  resolveBudget,
  stagingBytes,
  type StagingSizes,
  tableBytes,
} from "./engine_setup.ts";
import { type CoreInit, EngineCore, planExpertSlots, type PlanOptions } from "./engine_core.ts";
import { validateOptions } from "./requests.ts";

const MAX_DEFAULT_CONTEXT = 4096;
/** How the expert-set lists of this family are ordered. */
const ROUTERS = "one per MoE layer: encoder routers, then decoder routers";

/** Options of {@link createSeq2SeqEngine}: {@link EngineOptions} and what only an encoder-decoder has. */
export interface Seq2SeqOptions extends EngineOptions {
  /**
   * Switch's `expert_capacity`: `"ignore"` (default) routes every token as transformers 5.x does (its
   * capacity mask sums over a single-token axis and never drops); `"drop"` gives the tokens past
   * `expert_capacity` per expert, counted in order within one pass of a stack (a whole encoder prompt,
   * a `forward` call's decoder ids, or one generation step), no expert output, as transformers 4.x does.
   */
  expertCapacity?: "ignore" | "drop";
}

/** Whether the model folder `dir` holds an encoder-decoder this module runs (by `config.json`'s `model_type`). */
export async function isSeq2SeqModel(dir: string): Promise<boolean> {
  return (await readModelType(dir)) === SWITCH_MODEL_TYPE;
}

/**
 * Loads a Switch Transformers checkpoint and returns an {@link Engine} whose `forward(ids, { decoderIds })`
 * returns decoder logits and whose `generate` encodes once and decodes from `decoder_start_token_id`.
 * `createEngine` calls this for `model_type: "switch_transformers"`.
 */
export async function createSeq2SeqEngine(options: Seq2SeqOptions): Promise<Engine> {
  return await Seq2SeqEngine.create(options);
}

interface ResolvedOptions extends PlanOptions {
  capacity: boolean;
}

/** What the encoder-decoder engine is built from. */
type Init = CoreInit<ResolvedOptions> & { switchSpec: SwitchSpec; names: SwitchNames; model: SwitchMoe };

class Seq2SeqEngine extends EngineCore<ResolvedOptions> {
  /** The encoder-decoder's own constants. */
  readonly switchSpec: SwitchSpec;
  readonly #names: SwitchNames;
  readonly #model: SwitchMoe;

  private constructor(init: Init) {
    super(init);
    this.switchSpec = init.switchSpec;
    this.#names = init.names;
    this.#model = init.model;
  }

  static async create(options: Seq2SeqOptions): Promise<Seq2SeqEngine> {
    validateOptions(options, ["expertCapacity"]);
    if (typeof options.model !== "string") throw new OptionError("Invalid model: expected a folder path");
    if (
      options.expertCapacity !== undefined && options.expertCapacity !== "ignore" &&
      options.expertCapacity !== "drop"
    ) {
      throw new OptionError(
        `Invalid expertCapacity: ${JSON.stringify(options.expertCapacity)}, expected "ignore" or "drop"`,
      );
    }
    const progress = options.onProgress ?? (() => {});
    const modelDir = options.model!;
    const policy = options.policy ?? "full";
    progress({ stage: "config", done: 0, total: 1 });
    const spec = await loadSwitchConfig(modelDir);
    const view = switchModelSpec(spec);
    const moeLayers = view.sparseLayers.filter((s) => s).length;
    const E = spec.numExperts;
    const staticSets = checkExpertOptions(options, moeLayers, E, 1, ROUTERS);
    const contextLength = options.contextLength ?? Math.min(spec.maxPositions, MAX_DEFAULT_CONTEXT);
    const maxRows = Math.min(options.maxBatchTokens ?? 64, contextLength);
    const shape: SwitchShape = {
      encoderLength: contextLength,
      contextLength,
      maxRows,
      maxGenerated: contextLength,
    };

    progress({ stage: "checkpoint", done: 0, total: 1 });
    const ckpt = Checkpoint.open(modelDir);
    let gpu: Gpu | undefined;
    let memory: GpuMemory | undefined;
    try {
      const names = switchNames(spec, (n) => ckpt.tensors.has(n));
      checkSwitchTensors(spec, names, ckpt.tensors, modelDir);
      progress({ stage: "tokenizer", done: 0, total: 1 });
      const tokenizer = await Tokenizer.load(modelDir);

      // The footprint, known before any allocation.
      const uniformSlots = 32 + 24 * (spec.numEncoderLayers + spec.numDecoderLayers);
      const rows = Math.max(shape.encoderLength, shape.maxRows);
      const staging: StagingSizes = {
        logits: maxRows * spec.vocabSize * 4,
        tokens: shape.maxGenerated * 4,
        topk: rows * 4,
        stats: moeLayers * E * 16,
      };
      const footprint = resolveBudget({
        policy,
        budget: options.budget,
        fixedBytes: switchDenseBytes(names, (n) => ckpt.info(n).byteLength) +
          switchStateBytes(spec, shape, moeLayers) +
          tableBytes(uniformSlots, moeLayers, E) + stagingBytes(staging),
        slotBytes: expertSlotBytes(view),
        moeLayers,
        experts: E,
        topK: 1,
        staticSets,
        contextLength,
      });
      const { fixedBytes, slotBytes, budget } = footprint;

      progress({ stage: "gpu", done: 0, total: 1 });
      gpu = await createGpu();
      const limit = gpu.info.maxStorageBufferBindingSize;
      const largest = Math.max(
        contextLength * spec.numHeads * spec.dKv * 4,
        rows * spec.dFf * 4,
        maxRows * spec.vocabSize * 4,
      );
      if (largest > limit) {
        throw new OptionError(
          `Invalid contextLength / maxBatchTokens: a buffer of ${
            formatBytes(largest)
          } exceeds this GPU's maxStorageBufferBindingSize of ${
            formatBytes(limit)
          }: lower contextLength (${contextLength}) or maxBatchTokens (${maxRows})`,
        );
      }
      const setup = kernelContext(gpu.device, uniformSlots, budget);
      memory = setup.memory;
      const { stepBuffer, ctx } = setup;
      const empty = new Uint8Array(0);
      const experts = switchExperts(names);
      const store = checkpointExpertStore(
        (n) => (n === "" ? empty : ckpt.bytes(n)),
        experts.map((l) => l.map((e) => ({ gate: e.wi, up: "", down: e.wo }))),
      );
      const cache = new ExpertCache(gpu.device, memory, view, store);
      const opts: ResolvedOptions = {
        ...planOptions(options, slotBytes),
        capacity: options.expertCapacity === "drop",
      };
      cache.resize(
        planExpertSlots(
          policy,
          moeLayers,
          { numExperts: E, topK: 1 },
          budget - fixedBytes,
          slotBytes,
          staticSets,
          opts,
        ),
      );
      const model = await SwitchMoe.build(ctx, spec, names, (n) => ckpt.bytes(n), cache, shape, {
        masked: policy === "static" || policy === "swapmoe",
        capacity: opts.capacity,
        onWeight: (done, total) => progress({ stage: "weights", done, total }),
      });
      const importance = new Importance(
        moeLayers,
        E,
        options.importanceDecay ?? 0.97,
        expertNorms(store, moeLayers, E, spec.dFf, spec.dModel),
      );
      const engine = new Seq2SeqEngine({
        spec: switchModelSpec(spec),
        switchSpec: spec,
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

  #checkIds(name: string, ids: readonly number[], max: number, option: string): void {
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
        `Too many tokens in ${name}: ${ids.length}, the engine holds ${max} (option ${option})`,
      );
    }
  }

  /**
   * Encodes and submits one pass of `program` over `t` rows from position `pos0`; with exact routing
   * (lru) it reads the routing back per MoE layer and loads missing experts in between (in passes over
   * groups of experts when a layer's slots cannot hold them all at once).
   */
  async #run(
    program: Program,
    t: number,
    pos0: number,
    headRows: number,
    extra?: (e: GPUCommandEncoder) => void,
    genIndex = 0,
    newPass = true,
  ): Promise<void> {
    const device = this.gpu.device;
    const shape: CallShape = { t, headRows, pos0 };
    device.queue.writeBuffer(this.stepBuffer.buffer, 0, packStep(shape, 0, genIndex));
    if (this.opts.capacity && newPass) {
      // expert capacity counts from the start of each pass of a stack
      device.queue.writeBuffer(
        this.#model.buffer("counts"),
        0,
        new Uint32Array(this.cache.moeLayers * this.spec.numExperts),
      );
    }
    const submit = (dispatches: Dispatch[], after?: (e: GPUCommandEncoder) => void) => {
      const enc = device.createCommandEncoder({ label: "seq2seq" });
      const pass = enc.beginComputePass();
      encode(pass, dispatches, shape);
      pass.end();
      after?.(enc);
      device.queue.submit([enc.finish()]);
    };
    if (!this.lru) {
      this.cache.flush();
      submit(SwitchMoe.dispatches(program), extra);
      return;
    }
    const staging = this.topkStaging.buffer;
    const topkIds = this.#model.buffer("topkIds");
    let pending = [...program.pre];
    for (const layer of program.layers) {
      pending.push(...layer.beforeExperts);
      if (layer.moeLayer < 0) {
        pending.push(...layer.experts, ...layer.afterExperts);
        continue;
      }
      submit(pending, (enc) => enc.copyBufferToBuffer(topkIds, 0, staging, 0, t * 4));
      await staging.mapAsync(GPUMapMode.READ, 0, t * 4);
      const ids = new Uint32Array(staging.getMappedRange(0, t * 4).slice(0));
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
    submit([...pending, ...program.post], extra);
  }

  /** The encoder pass over `ids` (the prompt): leaves every decoder block's cross-attention K/V on the GPU. */
  async #encode(ids: readonly number[]): Promise<void> {
    const q = this.gpu.device.queue;
    q.writeBuffer(this.#model.buffer("ids"), 0, new Uint32Array(ids));
    q.writeBuffer(this.#model.buffer("meta"), 0, new Uint32Array([ids.length, 0, 0, 0]));
    this.swap?.pump(this.cache, this.opts.maxUploadBytesPerStep);
    await this.#run(this.#model.encoder, ids.length, 0, 0);
  }

  /**
   * Decoder logits [T_dec × V] row-major for `decoderIds` (default: `[decoder_start_token_id]`), teacher
   * forced, after encoding `ids`: transformers' `model(input_ids=ids, decoder_input_ids=decoderIds).logits`.
   */
  async forward(ids: readonly number[], options: { decoderIds?: number[] } = {}): Promise<Float32Array> {
    this.assertOpen();
    if (typeof options !== "object" || options === null) {
      throw new OptionError("Invalid forward options: expected { decoderIds }");
    }
    const shape = this.#model.shape;
    this.#checkIds("ids", ids, shape.encoderLength, "contextLength");
    const dec = options.decoderIds ?? [this.switchSpec.decoderStartTokenId];
    this.#checkIds("decoderIds", dec, shape.contextLength, "contextLength");
    return await this.serial(async () => {
      this.assertOpen();
      const t0 = performance.now();
      const V = this.spec.vocabSize;
      const out = new Float32Array(dec.length * V);
      const device = this.gpu.device;
      await this.#encode(ids);
      let encoded = ids.length;
      for (let start = 0; start < dec.length; start += shape.maxRows) {
        const t = Math.min(shape.maxRows, dec.length - start);
        device.queue.writeBuffer(this.#model.buffer("ids"), 0, new Uint32Array(dec.slice(start, start + t)));
        this.swap?.pump(this.cache, this.opts.maxUploadBytesPerStep);
        const staging = this.logitsStaging.buffer;
        const statsAt = shape.maxRows * V * 4;
        // one teacher-forced decoder pass: expert capacity counts go on across its chunks
        await this.#run(
          this.#model.decoder,
          t,
          start,
          t,
          (enc) => {
            enc.copyBufferToBuffer(this.#model.buffer("logits"), 0, staging, 0, t * V * 4);
            this.copyStats(enc, staging, statsAt);
          },
          0,
          start === 0,
        );
        await staging.mapAsync(GPUMapMode.READ);
        out.set(new Float32Array(staging.getMappedRange(0, t * V * 4)), start * V);
        this.takeStats(staging, statsAt, t + encoded);
        encoded = 0;
        staging.unmap();
      }
      this.maybeRevise(true);
      this.gpu.assertAlive();
      this.counters.prefillTokens += ids.length + dec.length;
      this.counters.prefillSeconds += (performance.now() - t0) / 1000;
      return out;
    });
  }

  protected checkPrompt(ids: readonly number[]): void {
    this.#checkIds("ids", ids, this.#model.shape.encoderLength, "contextLength");
  }

  protected async *decode(
    prompt: number[],
    sampling: SamplingParams,
    maxTokens: number,
    stop: string[],
    signal: AbortSignal | undefined,
  ): AsyncGenerator<GenerateChunk> {
    const device = this.gpu.device;
    const model = this.#model;
    const budget = Math.min(maxTokens, model.shape.contextLength);
    const eos = this.eos;
    device.queue.writeBuffer(model.buffer("samplingParams"), 0, packSampling(this.spec.vocabSize, sampling));
    const tp = performance.now();
    await this.#encode(prompt);

    // Decode: step g feeds the token at decoder position g (the start token, then the sampler's output,
    // which it leaves in ids[0]) and samples token g.
    const sample = (enc: GPUCommandEncoder) => {
      const pass = enc.beginComputePass({ label: "sample" });
      encode(pass, [model.sample], { t: 1, headRows: 1, pos0: 0 });
      pass.end();
    };
    yield* decodeLoop({
      device,
      tokenizer: this.tokenizer,
      eos,
      minTokens: sampling.minTokens,
      stop,
      signal,
      maxTokens: budget,
      generated: model.buffer("generated"),
      staging: this.tokenStaging.map((t) => t.buffer),
      statsAt: model.shape.maxGenerated * 4,
      step: async (g) => {
        if (g === 0) {
          device.queue.writeBuffer(
            model.buffer("ids"),
            0,
            new Uint32Array([this.switchSpec.decoderStartTokenId]),
          );
        }
        this.swap?.pump(this.cache, this.opts.maxUploadBytesPerStep);
        await this.#run(model.decoder, 1, g, 1, sample, g);
      },
      ...this.decodeHooks(prompt.length, prompt.length, tp),
    });
    this.gpu.assertAlive();
  }

  protected get statsBuffer(): GPUBuffer {
    return this.#model.buffer("stats");
  }

  protected get contextLength(): number {
    return this.#model.shape.contextLength;
  }

  protected async rerecord(): Promise<void> {
    await this.#model.record(this.ctx, this.#names, this.cache, {
      masked: this.policy === "static" || this.policy === "swapmoe",
      capacity: this.opts.capacity,
    });
  }
}
