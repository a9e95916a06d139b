/**
 * The engine: loads a checkpoint folder, holds the model on the GPU under a byte budget, and runs
 * forward calls and generation with a residency policy watching beside the token path.
 *
 * @module
 */
import { fileURLToPath } from "node:url";
import { loadConfig, type ModelSpec } from "../checkpoint/config.ts";
import { Checkpoint } from "../checkpoint/shards.ts";
import { createGpu, type Gpu, type GpuInfo } from "../gpu/device.ts";
import { type CallShape, type Dispatch, encode, type KernelContext, UniformArena } from "../gpu/dispatch.ts";
import { GpuMemory, type TrackedBuffer } from "../gpu/memory.ts";
import { PipelineCache } from "../gpu/pipelines.ts";
import { packSampling, type SamplingParams } from "../kernels/sample.ts";
import { packStep } from "../kernels/step.ts";
import { CausalMoe, denseBytes, type RunShape, runStateBytes } from "../models/causal_moe.ts";
import { checkTensors, type ModelNames, modelNames } from "../models/names.ts";
import { type Budget, formatBytes, parseBudget } from "../moe/budget.ts";
import { checkpointExpertStore, ExpertCache } from "../moe/expert_cache.ts";
import { expertNorms, Importance } from "../moe/importance.ts";
import { type PlannerKind, planSlots, topExperts } from "../moe/planner.ts";
import { LruPolicy, POLICIES, type PolicyName, SwapMoePolicy } from "../moe/policies.ts";
import { BudgetError, EngineClosedError, OptionError, SwapMoeError } from "../errors.ts";
import { type ChatMessage, Tokenizer } from "../text/tokenizer.ts";
import { createSeq2SeqEngine, isSeq2SeqModel } from "./seq2seq.ts";

/** Loading progress, for a progress bar. */
export interface Progress {
  /** What is happening now. */
  stage: "config" | "checkpoint" | "tokenizer" | "gpu" | "weights" | "experts" | "ready";
  /** Units done and in all for this stage (e.g. tensors uploaded). */
  done: number;
  /** Units in all for this stage. */
  total: number;
}

/** Options of {@link createEngine}. */
export interface EngineOptions {
  /** A Hugging Face checkpoint folder as published; default: the bundled `sotu-moe-mini`. */
  model?: string;
  /** Residency policy; default `"full"`. */
  policy?: PolicyName;
  /** `static`: the allowed experts per MoE layer (router order). */
  residentExperts?: number[][];
  /** GPU byte budget: bytes, `"512MiB"`, `"2GiB"` or `"50%"` of the all-resident footprint. */
  budget?: Budget;
  /** Positions the KV cache holds; default the model's `max_position_embeddings`, at most 4096. */
  contextLength?: number;
  /** Most prompt tokens per forward call on the GPU (prefill chunk); default 64. */
  maxBatchTokens?: number;
  /** How `swapmoe`/`static` spread expert slots over layers; default `"uniform"`. */
  planner?: PlannerKind;
  /** An importance profile [layer][expert] for `planner: "profile"` and for planning `static` sets. */
  profile?: number[][];
  /** `swapmoe`: tokens between revisions of the resident set; default 16. */
  updateInterval?: number;
  /** `swapmoe`: most bytes uploaded per decode step; default one expert slot's worth × 2. */
  maxUploadBytesPerStep?: number;
  /** `swapmoe`: per-token decay of the importance sums, in (0, 1]; default 0.97. */
  importanceDecay?: number;
  /** Loading progress. */
  onProgress?: (p: Progress) => void;
}

/** A generation request. Give exactly one of `ids`, `prompt`, `messages`. */
export interface GenerateRequest {
  /** Prompt token ids, used as given (no special tokens added). */
  ids?: number[];
  /** Prompt text, encoded with the model's tokenizer (special tokens added as the tokenizer does). */
  prompt?: string;
  /** Chat messages, rendered with the model's chat template (generation prompt added). */
  messages?: ChatMessage[];
  /** Most new tokens; default 128. */
  maxTokens?: number;
  /** 0 (default) is greedy. */
  temperature?: number;
  /** 0 (default) is off. */
  topK?: number;
  /** 1 (default) is off. */
  topP?: number;
  /** Seed of the sampler; default random. */
  seed?: number;
  /** End-of-sequence cannot be sampled before this many new tokens (transformers' `min_new_tokens`); default 0. */
  minTokens?: number;
  /** Strings that end generation (not included in the output). */
  stop?: string[];
  /** Aborts generation between batches. */
  signal?: AbortSignal;
}

/** Why generation ended. */
export type FinishReason = "stop" | "length" | "abort";

/** A piece of generated output. */
export interface GenerateChunk {
  /** New token ids. */
  ids: number[];
  /** Their text (held back while it could be the start of a stop string). */
  text: string;
  /** Set on the last chunk. */
  finishReason?: FinishReason;
}

/** What {@link Engine.stats} reports. */
export interface EngineStats {
  /** Bytes held on the GPU now (every buffer). */
  gpuBytes: number;
  /** The most bytes held at once since the engine started. */
  peakGpuBytes: number;
  /** The budget in force, in bytes. */
  budgetBytes: number;
  /** The smallest budget the policy runs with: dense part and top-k experts per MoE layer (all experts under `full`). */
  minimumBudgetBytes: number;
  /** The all-resident footprint (`gpuBytes` under `full` with the same options). */
  fullBytes: number;
  /** GPU bytes of one expert slot. */
  expertBytes: number;
  /** Positions the KV cache holds (prompt plus generated tokens of one request). */
  contextLength: number;
  /** GPU bytes by what they hold. */
  gpuBytesByKind: Record<string, number>;
  /** The residency policy. */
  policy: PolicyName;
  /** Slots per MoE layer. */
  expertSlots: number[];
  /** Per MoE layer, the experts usable now. */
  residentExperts: number[][];
  /** Per MoE layer and expert, how often the unmasked router chose it since the engine started. */
  expertUsage: number[][];
  /** Share of (token, top-k choice) pairs served by the expert the unmasked router chose. */
  hitRate: number;
  /** (token, top-k choice) pairs routed since the engine started (the denominator of `hitRate`). */
  routedChoices: number;
  /**
   * Share of (token, top-k choice) pairs whose expert was already resident when routed. Equal to
   * `hitRate` except under `lru`, which loads missing experts (so its `hitRate` is 1): there it is
   * the cache hit rate.
   */
  cacheHitRate: number;
  /** Experts swapped in since the engine started (`swapmoe`), or loaded on demand (`lru`). */
  swaps: number;
  /** Expert bytes uploaded since the engine started, the initial fill included. */
  bytesUploaded: number;
  /** Seconds spent queueing those uploads. */
  uploadSeconds: number;
  /** Tokens processed (prompt and generated). */
  tokens: number;
  /** Prompt tokens processed. */
  prefillTokens: number;
  /** Tokens generated after the first of each request. */
  decodeTokens: number;
  /** Prompt tokens per second, from the start of a request to its first token. */
  prefillTokensPerSecond: number;
  /** Generated tokens per second after the first token. */
  decodeTokensPerSecond: number;
  /** The adapter in use. */
  gpu: GpuInfo;
}

/** The public engine interface. */
export interface Engine extends AsyncDisposable {
  /** The model's constants, from its `config.json`. */
  readonly spec: ModelSpec;
  /** The model's tokenizer and chat template. */
  readonly tokenizer: Tokenizer;
  /** The model folder. */
  readonly modelDir: string;
  /**
   * Logits [T × V] row-major for every position of `ids`, as one request from position 0. An
   * encoder-decoder (Switch) encodes `ids` and returns the decoder's logits [T_dec × V] for
   * `decoderIds` (default: the decoder start token alone).
   */
  forward(ids: readonly number[], options?: { decoderIds?: number[] }): Promise<Float32Array>;
  /** Streams generated tokens. */
  generate(request: GenerateRequest): AsyncGenerator<GenerateChunk>;
  /** Memory, residency, routing and speed figures as of now. */
  stats(): EngineStats;
  /** Changes the budget while the engine lives: shrinking evicts, growing adds slots. */
  setBudget(budget: Budget): Promise<EngineStats>;
  /** Waits for running work, then frees every GPU buffer, the device and the mapped weights; idempotent. */
  close(): Promise<void>;
}

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
const READ_SIZES = [1, 2, 4, 8, 16];
/** A submit slower than this ran the GPU work on the CPU (lavapipe): yield to the event loop after it. */
const SLOW_SUBMIT_MS = 5;

/**
 * Loads a model and returns an {@link Engine}. Options are validated before any GPU work.
 *
 * @example Hold at most 60% of the all-resident footprint, with SwapMoE's masked gating
 * ```ts
 * import { createEngine } from "@swapmoe/swapmoe";
 *
 * await using engine = await createEngine({ policy: "swapmoe", budget: "60%" });
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

function positiveInt(name: string, v: unknown, max = Number.MAX_SAFE_INTEGER): number {
  if (typeof v !== "number" || !Number.isSafeInteger(v) || v < 1 || v > max) {
    throw new OptionError(`Invalid ${name}: ${JSON.stringify(v)}, expected an integer in [1, ${max}]`);
  }
  return v;
}

function validateOptions(o: EngineOptions): void {
  if (typeof o !== "object" || o === null || Array.isArray(o)) {
    throw new OptionError(`Invalid options: expected an object, got ${JSON.stringify(o)}`);
  }
  const known = new Set([
    "model",
    "policy",
    "residentExperts",
    "budget",
    "contextLength",
    "maxBatchTokens",
    "planner",
    "profile",
    "updateInterval",
    "maxUploadBytesPerStep",
    "importanceDecay",
    "onProgress",
  ]);
  for (const k of Object.keys(o)) {
    if (!known.has(k)) throw new OptionError(`Unknown option: "${k}", known are ${[...known].join(", ")}`);
  }
  if (o.model !== undefined && (typeof o.model !== "string" || o.model === "")) {
    throw new OptionError(`Invalid model: ${JSON.stringify(o.model)}, expected a folder path`);
  }
  if (o.policy !== undefined && !POLICIES.includes(o.policy)) {
    throw new OptionError(
      `Invalid policy: ${JSON.stringify(o.policy)}, expected one of ${POLICIES.join(", ")}`,
    );
  }
  if (o.residentExperts !== undefined && o.policy !== "static") {
    throw new OptionError(`Invalid residentExperts: only policy "static" takes a fixed resident set`);
  }
  if (o.planner !== undefined && o.planner !== "uniform" && o.planner !== "profile") {
    throw new OptionError(`Invalid planner: ${JSON.stringify(o.planner)}, expected "uniform" or "profile"`);
  }
  if (o.planner === "profile" && !o.profile) {
    throw new OptionError(`Invalid planner: "profile" needs a profile`);
  }
  if (o.contextLength !== undefined) positiveInt("contextLength", o.contextLength, 1 << 20);
  if (o.maxBatchTokens !== undefined) positiveInt("maxBatchTokens", o.maxBatchTokens, 4096);
  if (o.updateInterval !== undefined) positiveInt("updateInterval", o.updateInterval);
  if (o.maxUploadBytesPerStep !== undefined) positiveInt("maxUploadBytesPerStep", o.maxUploadBytesPerStep);
  if (
    o.importanceDecay !== undefined &&
    (typeof o.importanceDecay !== "number" || !(o.importanceDecay > 0 && o.importanceDecay <= 1))
  ) {
    throw new OptionError(`Invalid importanceDecay: ${o.importanceDecay}, expected a number in (0, 1]`);
  }
  // the syntax now; a percentage resolves once the footprint is known
  if (o.budget !== undefined) parseBudget(o.budget, 0);
  if (o.profile !== undefined && (!Array.isArray(o.profile) || !o.profile.every((r) => Array.isArray(r)))) {
    throw new OptionError("Invalid profile: expected one list of importance numbers per MoE layer");
  }
  if (o.onProgress !== undefined && typeof o.onProgress !== "function") {
    throw new OptionError("Invalid onProgress: expected a function");
  }
}

/** Every field of a {@link GenerateRequest}; the type keeps this list complete. */
const REQUEST_FIELDS: Record<keyof GenerateRequest, true> = {
  ids: true,
  prompt: true,
  messages: true,
  maxTokens: true,
  temperature: true,
  topK: true,
  topP: true,
  seed: true,
  minTokens: true,
  stop: true,
  signal: true,
};

function validateRequest(r: GenerateRequest): void {
  if (typeof r !== "object" || r === null || Array.isArray(r)) {
    throw new OptionError(`Invalid request: expected an object, got ${JSON.stringify(r)}`);
  }
  for (const k of Object.keys(r)) {
    if (!Object.hasOwn(REQUEST_FIELDS, k)) {
      throw new OptionError(
        `Unknown request field: "${k}", known are ${Object.keys(REQUEST_FIELDS).join(", ")}`,
      );
    }
  }
  if (r.ids !== undefined && !Array.isArray(r.ids)) {
    throw new OptionError("Invalid ids: expected a non-empty array of token ids");
  }
  if (r.messages !== undefined && !Array.isArray(r.messages)) {
    throw new OptionError("Invalid messages: expected a list of {role, content} messages");
  }
  if (r.signal !== undefined && !(r.signal instanceof AbortSignal)) {
    throw new OptionError("Invalid signal: expected an AbortSignal");
  }
}

function validateExpertSets(
  name: string,
  sets: unknown,
  layers: number,
  experts: number,
  minEach: number,
): number[][] {
  if (!Array.isArray(sets) || sets.length !== layers) {
    throw new OptionError(
      `Invalid ${name}: expected ${layers} lists (one per MoE layer), got ${
        Array.isArray(sets) ? sets.length : typeof sets
      }`,
    );
  }
  return sets.map((s, l) => {
    if (!Array.isArray(s) || !s.every((e) => Number.isSafeInteger(e) && e >= 0 && e < experts)) {
      throw new OptionError(`Invalid ${name}[${l}]: expected expert ids in [0, ${experts})`);
    }
    const u = [...new Set(s as number[])].sort((a, b) => a - b);
    if (u.length < minEach) {
      throw new OptionError(
        `Invalid ${name}[${l}]: ${u.length} experts, at least top-k = ${minEach} are needed`,
      );
    }
    return u;
  });
}

type ResolvedOptions =
  & Required<Pick<EngineOptions, "planner" | "updateInterval" | "maxUploadBytesPerStep">>
  & {
    profile?: number[][];
  };

class EngineImpl implements Engine {
  readonly spec: ModelSpec;
  readonly tokenizer: Tokenizer;
  readonly modelDir: string;
  readonly #gpu: Gpu;
  readonly #ckpt: Checkpoint;
  readonly #names: ModelNames;
  readonly #memory: GpuMemory;
  readonly #ctx: KernelContext;
  readonly #stepBuffer: TrackedBuffer;
  readonly #cache: ExpertCache;
  readonly #model: CausalMoe;
  readonly #policy: PolicyName;
  readonly #swap: SwapMoePolicy | undefined;
  readonly #lru: LruPolicy | undefined;
  readonly #importance: Importance;
  readonly #opts: ResolvedOptions;
  readonly #fixedBytes: number;
  readonly #fullBytes: number;
  readonly #minimumBytes: number;
  #budget: number;
  readonly #staticSets: number[][] | undefined;
  // readback staging buffers
  readonly #logitsStaging: TrackedBuffer;
  readonly #tokenStaging: TrackedBuffer[];
  readonly #topkStaging: TrackedBuffer;
  #closed = false;
  #busy: Promise<unknown> = Promise.resolve();
  /** Generations not finished yet: `close` ends them, as one left suspended holds the engine. */
  readonly #generators = new Set<AsyncGenerator<GenerateChunk>>();
  #tokensSinceRevision = 0;
  #counters = { prefillTokens: 0, decodeTokens: 0, prefillSeconds: 0, decodeSeconds: 0 };

  private constructor(init: {
    spec: ModelSpec;
    tokenizer: Tokenizer;
    modelDir: string;
    gpu: Gpu;
    ckpt: Checkpoint;
    names: ModelNames;
    memory: GpuMemory;
    ctx: KernelContext;
    stepBuffer: TrackedBuffer;
    cache: ExpertCache;
    model: CausalMoe;
    policy: PolicyName;
    importance: Importance;
    opts: ResolvedOptions;
    fixedBytes: number;
    fullBytes: number;
    minimumBytes: number;
    budget: number;
    staticSets: number[][] | undefined;
    staging: { logits: TrackedBuffer; tokens: TrackedBuffer[]; topk: TrackedBuffer };
  }) {
    this.spec = init.spec;
    this.tokenizer = init.tokenizer;
    this.modelDir = init.modelDir;
    this.#gpu = init.gpu;
    this.#ckpt = init.ckpt;
    this.#names = init.names;
    this.#memory = init.memory;
    this.#ctx = init.ctx;
    this.#stepBuffer = init.stepBuffer;
    this.#cache = init.cache;
    this.#model = init.model;
    this.#policy = init.policy;
    this.#importance = init.importance;
    this.#opts = init.opts;
    this.#fixedBytes = init.fixedBytes;
    this.#fullBytes = init.fullBytes;
    this.#minimumBytes = init.minimumBytes;
    this.#budget = init.budget;
    this.#staticSets = init.staticSets;
    this.#logitsStaging = init.staging.logits;
    this.#tokenStaging = init.staging.tokens;
    this.#topkStaging = init.staging.topk;
    if (init.policy === "swapmoe") this.#swap = new SwapMoePolicy();
    if (init.policy === "lru") this.#lru = new LruPolicy(init.cache.moeLayers, init.spec.numExperts);
  }

  static async create(options: EngineOptions): Promise<EngineImpl> {
    validateOptions(options);
    const progress = options.onProgress ?? (() => {});
    const modelDir = options.model ?? defaultModel();
    const policy = options.policy ?? "full";
    progress({ stage: "config", done: 0, total: 1 });
    const spec = await loadConfig(modelDir);
    const moeLayers = spec.sparseLayers.filter((s) => s).length;
    const staticSets = options.residentExperts
      ? validateExpertSets("residentExperts", options.residentExperts, moeLayers, spec.numExperts, spec.topK)
      : undefined;
    if (options.profile) {
      validateExpertSets(
        "profile",
        options.profile.map((r) => r.map((_, i) => i)),
        moeLayers,
        spec.numExperts,
        0,
      );
    }
    if (
      options.profile &&
      !options.profile.every((r) =>
        r.length === spec.numExperts && r.every((v) => Number.isFinite(v) && v >= 0)
      )
    ) {
      throw new OptionError(
        `Invalid profile: expected ${moeLayers} rows of ${spec.numExperts} non-negative numbers`,
      );
    }
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
      const slotBytes = 3 * spec.moeIntermediateSize * spec.hiddenSize * 2;
      const uniformSlots = 32 + 24 * spec.numLayers;
      // readbacks carry the routing statistics behind their payload: one map per readback
      const statsBytes = moeLayers * spec.numExperts * 16;
      const stagingBytes = maxRows * spec.vocabSize * 4 + statsBytes +
        2 * (shape.maxGenerated * 4 + statsBytes) +
        maxRows * spec.topK * 4;
      const fixedBytes = denseBytes(spec, names, (n) => ckpt.info(n).byteLength) +
        runStateBytes(spec, shape, moeLayers) +
        UniformArena.bytes(uniformSlots) + 32 + Math.max(4, moeLayers * spec.numExperts * 4) + stagingBytes;
      const fullBytes = fixedBytes + moeLayers * spec.numExperts * slotBytes;
      const minimumBytes = fixedBytes + moeLayers * spec.topK * slotBytes;
      const staticNeed = staticSets
        ? fixedBytes + staticSets.reduce((a, s) => a + s.length, 0) * slotBytes
        : 0;
      let budget: number;
      if (options.budget !== undefined) budget = parseBudget(options.budget, fullBytes);
      else if (policy === "full") budget = fullBytes;
      else if (staticSets) budget = staticNeed;
      else budget = Math.max(minimumBytes, Math.floor(fullBytes / 2));
      const need = policy === "full" ? fullBytes : staticSets ? staticNeed : minimumBytes;
      if (budget < need) {
        throw new BudgetError(
          `Budget too small: ${budget} bytes (${
            formatBytes(budget)
          }) given, policy "${policy}" needs at least ${need} bytes (${
            formatBytes(need)
          }): dense weights, KV cache for ${contextLength} positions and scratch take ${
            formatBytes(fixedBytes)
          }, one expert ${formatBytes(slotBytes)}`,
        );
      }

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
      memory = new GpuMemory(gpu.device);
      memory.limit = budget;
      const stepBuffer = memory.alloc("step", 32, GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST, "tables");
      const ctx: KernelContext = {
        device: gpu.device,
        pipelines: new PipelineCache(gpu.device),
        memory,
        uniforms: new UniformArena(gpu.device, memory, uniformSlots),
        step: stepBuffer.buffer,
      };
      const read = GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST;
      const staging = {
        logits: memory.alloc("staging.logits", maxRows * spec.vocabSize * 4 + statsBytes, read, "staging"),
        tokens: [0, 1].map((i) =>
          memory!.alloc(`staging.tokens${i}`, shape.maxGenerated * 4 + statsBytes, read, "staging")
        ),
        topk: memory.alloc("staging.topk", maxRows * spec.topK * 4, read, "staging"),
      };
      const store = checkpointExpertStore(
        (n) => ckpt.bytes(n),
        names.layers.filter((l) => l.experts).map((l) => l.experts!),
      );
      const cache = new ExpertCache(gpu.device, memory, spec, store);

      // Slots per layer.
      const opts: ResolvedOptions = {
        planner: options.planner ?? "uniform",
        updateInterval: options.updateInterval ?? 16,
        maxUploadBytesPerStep: options.maxUploadBytesPerStep ?? 2 * slotBytes,
        profile: options.profile,
      };
      const slots = EngineImpl.#plan(
        policy,
        spec,
        moeLayers,
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
        fixedBytes,
        fullBytes,
        minimumBytes,
        budget,
        staticSets,
        staging,
      });
      engine.#fillInitial((done, total) => progress({ stage: "experts", done, total }));
      if (
        memory.bytes !==
          fullBytes - moeLayers * spec.numExperts * slotBytes +
            cache.capacity.reduce((a, b) => a + b, 0) * slotBytes
      ) {
        // The footprint formula and the allocator must agree byte for byte: the budget is a promise.
        throw new SwapMoeError(
          `Internal: GPU bytes ${memory.bytes} disagree with the planned footprint ${fixedBytes} + slots`,
        );
      }
      await gpu.device.queue.onSubmittedWorkDone();
      gpu.assertAlive();
      progress({ stage: "ready", done: 1, total: 1 });
      return engine;
    } catch (e) {
      memory?.freeAll();
      gpu?.device.destroy();
      ckpt.close();
      throw e;
    }
  }

  static #plan(
    policy: PolicyName,
    spec: ModelSpec,
    layers: number,
    expertShare: number,
    slotBytes: number,
    staticSets: number[][] | undefined,
    opts: { planner: PlannerKind; profile?: number[][] },
  ): number[] {
    const E = spec.numExperts;
    if (policy === "full") return Array(layers).fill(E);
    if (staticSets) return staticSets.map((s) => s.length);
    const total = Math.floor(expertShare / slotBytes);
    return planSlots(opts.planner, total, layers, E, spec.topK, opts.profile);
  }

  /** Fills the slots: everything (full), the given or profiled set (static), the best guess (swapmoe, lru). */
  #fillInitial(progress: (done: number, total: number) => void): void {
    const cache = this.#cache;
    const cap = cache.capacity;
    const total = cap.reduce((a, b) => a + b, 0);
    let done = 0;
    for (let l = 0; l < cache.moeLayers; l++) {
      let set: number[];
      if (this.#staticSets) set = this.#staticSets[l]!;
      else if (this.#opts.profile) set = topExperts(this.#opts.profile[l]!, cap[l]!);
      else {
        // no knowledge yet: the most important by what has been seen (nothing at start → lowest ids)
        set = topExperts(this.#importance.score(l), cap[l]!);
      }
      for (const e of set) {
        cache.load(l, e);
        progress(++done, total);
      }
    }
    cache.flush();
  }

  #assertOpen(): void {
    if (this.#closed) {
      throw new EngineClosedError("The engine is closed: create a new one with createEngine()");
    }
    this.#gpu.assertAlive();
  }

  /** Runs `fn` after every earlier call finished (calls never interleave on the GPU state). */
  #serial<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.#busy.then(fn, fn).catch(async (e) => {
      throw await this.#gpu.explain(e);
    });
    this.#busy = run.catch(() => {});
    return run;
  }

  #writeStep(shape: CallShape, headRow0: number, genIndex: number): void {
    this.#gpu.device.queue.writeBuffer(this.#stepBuffer.buffer, 0, packStep(shape, headRow0, genIndex));
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
    const device = this.#gpu.device;
    const shape: CallShape = { t, headRows, pos0 };
    this.#writeStep(shape, headRow0, genIndex);
    const m = this.#model;
    if (!this.#lru) {
      this.#cache.flush();
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
    const staging = this.#topkStaging.buffer;
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
      const groups = this.#lru.groups(this.#cache, layer.moeLayer, ids);
      for (const [g, group] of groups.entries()) {
        if (g > 0) { for (const e of groups[g - 1]!) this.#cache.evict(layer.moeLayer, e); }
        this.#lru.ensure(this.#cache, layer.moeLayer, group);
        this.#cache.flush();
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

  /** Bytes of the routing statistics, [moeLayers, E, 4] f32. */
  get #statsBytes(): number {
    return this.#cache.moeLayers * this.spec.numExperts * 16;
  }

  /** Inside `enc`: copies the statistics the GPU summed since the last copy to `staging` at `offset`, and clears them. */
  #copyStats(enc: GPUCommandEncoder, staging: GPUBuffer, offset: number): void {
    const stats = this.#model.state.stats.buffer;
    enc.copyBufferToBuffer(stats, 0, staging, offset, this.#statsBytes);
    enc.clearBuffer(stats, 0, this.#statsBytes);
  }

  /** Adds statistics from a mapped staging range covering `tokens` tokens. */
  #takeStats(staging: GPUBuffer, offset: number, tokens: number): void {
    const f = new Float32Array(staging.getMappedRange(offset, this.#statsBytes).slice(0));
    this.#importance.add(f, tokens);
    this.#tokensSinceRevision += tokens;
  }

  /** SwapMoE: revise the virtual experts when due (or when `force`, after a request). */
  #maybeRevise(force: boolean): void {
    if (!this.#swap) return;
    if (!force && this.#tokensSinceRevision < this.#opts.updateInterval) return;
    this.#tokensSinceRevision = 0;
    this.#swap.revise(this.#cache, this.#importance.scores());
  }

  async forward(ids: readonly number[]): Promise<Float32Array> {
    this.#assertOpen();
    this.#checkIds(ids);
    return await this.#serial(async () => {
      this.#assertOpen();
      const t0 = performance.now();
      const V = this.spec.vocabSize;
      const out = new Float32Array(ids.length * V);
      const maxRows = this.#model.shape.maxRows;
      for (let start = 0; start < ids.length; start += maxRows) {
        const t = Math.min(maxRows, ids.length - start);
        this.#gpu.device.queue.writeBuffer(
          this.#model.state.ids.buffer,
          0,
          new Uint32Array(ids.slice(start, start + t)),
        );
        this.#swap?.pump(this.#cache, this.#opts.maxUploadBytesPerStep);
        const staging = this.#logitsStaging.buffer;
        const statsAt = maxRows * V * 4;
        await this.#call(t, start, 0, t, (enc) => {
          enc.copyBufferToBuffer(this.#model.state.logits.buffer, 0, staging, 0, t * V * 4);
          this.#copyStats(enc, staging, statsAt);
        });
        await staging.mapAsync(GPUMapMode.READ);
        out.set(new Float32Array(staging.getMappedRange(0, t * V * 4)), start * V);
        this.#takeStats(staging, statsAt, t);
        staging.unmap();
      }
      this.#maybeRevise(true);
      this.#gpu.assertAlive();
      this.#counters.prefillTokens += ids.length;
      this.#counters.prefillSeconds += (performance.now() - t0) / 1000;
      return out;
    });
  }

  #promptIds(r: GenerateRequest): number[] {
    validateRequest(r);
    const given = [r.ids, r.prompt, r.messages].filter((x) => x !== undefined).length;
    if (given !== 1) throw new OptionError("Invalid request: give exactly one of ids, prompt, messages");
    if (r.ids) return [...r.ids];
    if (r.prompt !== undefined) {
      if (typeof r.prompt !== "string") throw new OptionError("Invalid prompt: expected a string");
      return this.tokenizer.encode(r.prompt);
    }
    const text = this.tokenizer.applyChatTemplate(r.messages!, { addGenerationPrompt: true });
    // the template writes its own special tokens
    return this.tokenizer.encode(text, { addSpecialTokens: false });
  }

  /** Ids that end generation: config.json's and the tokenizer's. */
  get #eos(): Set<number> {
    const t = this.tokenizer.eosTokenId;
    return new Set([...this.spec.eosTokenIds, ...(t !== undefined ? [t] : [])]);
  }

  #sampling(r: GenerateRequest): SamplingParams {
    const temperature = r.temperature ?? 0;
    const topK = r.topK ?? 0;
    const topP = r.topP ?? 1;
    if (typeof temperature !== "number" || !(temperature >= 0 && temperature <= 100)) {
      throw new OptionError(`Invalid temperature: ${temperature}, expected a number in [0, 100]`);
    }
    if (!Number.isSafeInteger(topK) || topK < 0) {
      throw new OptionError(`Invalid topK: ${topK}, expected an integer >= 0`);
    }
    if (typeof topP !== "number" || !(topP > 0 && topP <= 1)) {
      throw new OptionError(`Invalid topP: ${topP}, expected a number in (0, 1]`);
    }
    const seed = r.seed ?? Math.floor(Math.random() * 2 ** 32);
    if (!Number.isSafeInteger(seed) || seed < 0) {
      throw new OptionError(`Invalid seed: ${seed}, expected an integer >= 0`);
    }
    const minTokens = r.minTokens ?? 0;
    if (!Number.isSafeInteger(minTokens) || minTokens < 0) {
      throw new OptionError(`Invalid minTokens: ${minTokens}, expected an integer >= 0`);
    }
    return {
      temperature,
      topK: Math.min(topK, this.spec.vocabSize),
      topP,
      seed,
      minTokens,
      eos: [...this.#eos].slice(0, 4),
    };
  }

  generate(request: GenerateRequest): AsyncGenerator<GenerateChunk> {
    this.#assertOpen();
    const ids = this.#promptIds(request);
    this.#checkIds(ids);
    const sampling = this.#sampling(request);
    const maxTokens = request.maxTokens ?? 128;
    if (!Number.isSafeInteger(maxTokens) || maxTokens < 1) {
      throw new OptionError(`Invalid maxTokens: ${maxTokens}, expected an integer >= 1`);
    }
    const stop = request.stop ?? [];
    if (!Array.isArray(stop) || !stop.every((s) => typeof s === "string" && s.length > 0)) {
      throw new OptionError("Invalid stop: expected a list of non-empty strings");
    }
    const gen: AsyncGenerator<GenerateChunk> = this.#generate(
      ids,
      sampling,
      maxTokens,
      stop,
      request.signal,
      () => this.#generators.delete(gen),
    );
    this.#generators.add(gen);
    return gen;
  }

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
    const prev = this.#busy;
    this.#busy = prev.then(() => held);
    await prev.catch(() => {});
    try {
      this.#assertOpen();
      yield* this.#decode(prompt, sampling, maxTokens, stop, signal);
    } catch (e) {
      throw await this.#gpu.explain(e);
    } finally {
      release();
      done();
    }
  }

  async *#decode(
    prompt: number[],
    sampling: SamplingParams,
    maxTokens: number,
    stop: string[],
    signal: AbortSignal | undefined,
  ): AsyncGenerator<GenerateChunk> {
    const device = this.#gpu.device;
    const st = this.#model.state;
    const ctxLen = this.#model.shape.contextLength;
    const budget = Math.min(maxTokens, ctxLen - prompt.length);
    const eos = this.#eos;
    device.queue.writeBuffer(st.samplingParams.buffer, 0, packSampling(this.spec.vocabSize, sampling));

    // Prefill in chunks; the last chunk computes the last row's logits and samples token 0.
    const tp = performance.now();
    this.#swap?.pump(this.#cache, this.#opts.maxUploadBytesPerStep);
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

    // Decode: the CPU encodes a batch of steps and starts reading it back (tokens and routing
    // statistics in one map), encodes the next batch while the GPU works, then turns tokens into text.
    let td = 0;
    const decoder = this.tokenizer.createStreamDecoder();
    const holdBack = stop.reduce((a, s) => Math.max(a, s.length - 1), 0);
    const statsAt = this.#model.shape.maxGenerated * 4;
    let text = "";
    let emitted = 0; // characters of `text` already yielded
    let generated = 0; // tokens sampled on the GPU (index of the next)
    let consumed = 0; // tokens read back and handled
    let batchNo = 0;
    let finish: FinishReason | undefined;
    const inflight: { staging: GPUBuffer; start: number; n: number; map: Promise<void> }[] = [];

    const submitBatch = async () => {
      const n = Math.min(READ_SIZES[Math.min(batchNo, READ_SIZES.length - 1)]!, budget - generated);
      if (n <= 0) return;
      const startIndex = generated;
      let steps = n;
      for (let i = 0; i < n; i++, generated++) {
        // token 0 was sampled by the prefill; step g feeds token g − 1 back from the GPU
        if (generated === 0) continue;
        if (signal?.aborted) {
          steps = i; // a cancelled request stops encoding at once
          break;
        }
        this.#swap?.pump(this.#cache, this.#opts.maxUploadBytesPerStep);
        const t = performance.now();
        await this.#call(1, prompt.length + generated - 1, 0, 1, (enc) => this.#sampleInto(enc), generated);
        // A software adapter runs the work inside submit: let timers and I/O (a server's other
        // requests, disconnects) run between such steps. A real GPU's submit returns at once.
        if (performance.now() - t > SLOW_SUBMIT_MS) await new Promise((r) => setTimeout(r, 0));
      }
      if (steps === 0) return;
      const staging = this.#tokenStaging[batchNo % 2]!.buffer;
      const enc = device.createCommandEncoder({ label: "readback.tokens" });
      enc.copyBufferToBuffer(st.generated.buffer, startIndex * 4, staging, 0, steps * 4);
      this.#copyStats(enc, staging, statsAt);
      device.queue.submit([enc.finish()]);
      const map = staging.mapAsync(GPUMapMode.READ);
      map.catch(() => {}); // awaited below: a lost device must not reject it unobserved meanwhile
      inflight.push({ staging, start: startIndex, n: steps, map });
      batchNo++;
    };

    try {
      await submitBatch();
      while (inflight.length > 0) {
        if (!finish) await submitBatch();
        const b = inflight.shift()!;
        await b.map;
        const toks = Array.from(new Uint32Array(b.staging.getMappedRange(0, b.n * 4).slice(0)));
        if (!finish) this.#takeStats(b.staging, statsAt, b.start === 0 ? prompt.length + b.n - 1 : b.n);
        b.staging.unmap();
        if (finish) continue; // tokens computed ahead, past the end
        if (b.start === 0) {
          // the prompt is in: the first token came out of the prefill
          this.#counters.prefillTokens += prompt.length;
          this.#counters.prefillSeconds += (performance.now() - tp) / 1000;
          td = performance.now();
          this.#maybeRevise(true);
        } else this.#maybeRevise(false);
        const newIds: number[] = [];
        for (const tok of toks) {
          consumed++;
          if (eos.has(tok) && consumed > sampling.minTokens) {
            finish = "stop";
            break;
          }
          newIds.push(tok);
          text += decoder.push([tok]);
          const hit = stop.map((s) => text.indexOf(s, Math.max(0, emitted - s.length))).filter((i) => i >= 0);
          if (hit.length > 0) {
            text = text.slice(0, Math.min(...hit));
            finish = "stop";
            break;
          }
        }
        if (b.start > 0) this.#counters.decodeTokens += newIds.length + (finish === "stop" ? 1 : 0);
        if (!finish && consumed >= budget) {
          text += decoder.flush();
          finish = "length";
        }
        if (!finish && signal?.aborted) finish = "abort";
        const upto = finish ? text.length : Math.max(emitted, text.length - holdBack);
        const chunk: GenerateChunk = { ids: newIds, text: text.slice(emitted, upto) };
        emitted = upto;
        if (finish) chunk.finishReason = finish;
        yield chunk;
      }
    } finally {
      // a consumer that stops early leaves readbacks in flight: settle them before the next request
      for (const b of inflight) {
        await b.map.catch(() => {});
        if (b.staging.mapState === "mapped") b.staging.unmap();
      }
      await device.queue.onSubmittedWorkDone();
      if (td > 0) this.#counters.decodeSeconds += (performance.now() - td) / 1000;
    }
    this.#gpu.assertAlive();
  }

  #sampleInto(enc: GPUCommandEncoder): void {
    const pass = enc.beginComputePass({ label: "sample" });
    encode(pass, [this.#model.sample], { t: 1, headRows: 1, pos0: 0 });
    pass.end();
  }

  stats(): EngineStats {
    const c = this.#counters;
    const cache = this.#cache;
    const imp = this.#importance;
    return {
      gpuBytes: this.#memory.bytes,
      peakGpuBytes: this.#memory.peakBytes,
      budgetBytes: this.#budget,
      minimumBudgetBytes: this.#minimumBytes,
      fullBytes: this.#fullBytes,
      expertBytes: cache.slotBytes,
      contextLength: this.#model.shape.contextLength,
      gpuBytesByKind: this.#memory.byCategory(),
      policy: this.#policy,
      expertSlots: cache.capacity,
      residentExperts: Array.from({ length: cache.moeLayers }, (_, l) => cache.resident(l)),
      expertUsage: imp.usage.map((r) => Array.from(r)),
      hitRate: this.#lru ? 1 : imp.hitRate,
      routedChoices: imp.choices,
      cacheHitRate: imp.hitRate,
      swaps: this.#swap?.swaps ?? this.#lru?.misses ?? 0,
      bytesUploaded: cache.stats.bytesUploaded,
      uploadSeconds: cache.stats.uploadSeconds,
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
    const bytes = parseBudget(budget, this.#fullBytes);
    const need = this.#policy === "full"
      ? this.#fullBytes
      : this.#staticSets
      ? this.#fixedBytes + this.#staticSets.reduce((a, s) => a + s.length, 0) * this.#cache.slotBytes
      : this.#minimumBytes;
    if (bytes < need) {
      throw new BudgetError(
        `Budget too small: ${bytes} bytes (${
          formatBytes(bytes)
        }) given, policy "${this.#policy}" needs at least ${need} bytes (${formatBytes(need)})`,
      );
    }
    return await this.#serial(async () => {
      this.#assertOpen();
      await this.#gpu.device.queue.onSubmittedWorkDone();
      const slots = EngineImpl.#plan(
        this.#policy,
        this.spec,
        this.#cache.moeLayers,
        bytes - this.#fixedBytes,
        this.#cache.slotBytes,
        this.#staticSets,
        this.#opts,
      );
      // free first, then allocate under the new limit: usage never exceeds max(old, new) budget
      this.#swap?.clear();
      this.#memory.limit = Math.max(bytes, this.#memory.bytes);
      this.#cache.resize(slots);
      this.#memory.limit = bytes;
      this.#budget = bytes;
      this.#ctx.uniforms.reset();
      await this.#model.record(
        this.#ctx,
        this.#names,
        this.#cache,
        this.#policy === "static" || this.#policy === "swapmoe",
      );
      this.#fillInitial(() => {});
      await this.#gpu.device.queue.onSubmittedWorkDone();
      return this.stats();
    });
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    await Promise.all([...this.#generators].map((g) => g.return(undefined).catch(() => {})));
    this.#generators.clear();
    await this.#busy.catch(() => {});
    if (this.#closed) return;
    this.#closed = true;
    try {
      if (!this.#gpu.lost) await this.#gpu.device.queue.onSubmittedWorkDone();
    } finally {
      this.#memory.freeAll();
      this.#gpu.device.destroy();
      this.#ckpt.close();
    }
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}
