/**
 * The public types of the engine: its options, requests, output chunks, statistics and interface.
 *
 * @module
 */
import type { ModelSpec } from "../models/registry.ts";
import type { GpuInfo } from "../gpu/device.ts";
import type { Budget } from "../moe/budget.ts";
import type { PlannerKind } from "../moe/planner.ts";
import type { PolicyName } from "../moe/policies.ts";
import type { ChatMessage, Tokenizer } from "../text/tokenizer.ts";
import type { ChatApi, Completions } from "../server/openai_types.ts";

/** Loading progress, for a progress bar. */
export interface Progress {
  /** What is happening now. */
  stage:
    | "download"
    | "config"
    | "checkpoint"
    | "quantize"
    | "tokenizer"
    | "gpu"
    | "weights"
    | "experts"
    | "ready";
  /** Units done for this stage (e.g. weight buffers or experts uploaded). */
  done: number;
  /** Units in all for this stage. */
  total: number;
  /** Bytes done, for the stages that move bytes (`weights`, `experts`). */
  bytes?: number;
  /** Bytes in all for this stage, when `bytes` is given. */
  totalBytes?: number;
  /** A line for the user, e.g. that the hub could not be reached and a cached copy stands in. */
  message?: string;
}

/** Options of {@link createEngine}. */
export interface EngineOptions {
  /**
   * A Hugging Face checkpoint folder as published, or a model on the hub named `org/name[@revision]`
   * (downloaded into the hub cache once: see the README); default: the bundled `sotu-moe-mini`.
   */
  model?: string;
  /** Residency policy; default `"swapmoe"` when a `budget` is given, else `"full"`. */
  policy?: PolicyName;
  /** `static`: the allowed experts per MoE layer (router order). */
  residentExperts?: number[][];
  /**
   * GPU byte budget: bytes, `"512MiB"`, `"2GiB"`, `"50%"` of the all-resident footprint, or experts per
   * MoE layer (`"8/16"`: what holds 8 of the 16 experts of every MoE layer, with everything else).
   */
  budget?: Budget;
  /** Positions the KV cache holds; default the model's `max_position_embeddings`, at most 4096. */
  contextLength?: number;
  /**
   * Most prompt tokens per forward call on the GPU (prefill chunk). Default: 512, 256 or 128, the most
   * whose activations take at most 1/32 of the budget beyond those of 64, else 64. Beside generations
   * that decode, a prompt advances at most 64 rows a step.
   */
  maxBatchTokens?: number;
  /**
   * Most sequences decoded together: concurrent `generate` calls run in one batch, each sequence with
   * KV caches of its own, all of them counted in the budget; a generation past them waits for one to
   * end. Default: as many as have their KV caches within 1/8 of the budget, at most 16, at least 1.
   * Switch Transformers decode one sequence at a time.
   */
  maxBatchSequences?: number;
  /** How `swapmoe`/`static` spread expert slots over layers; default `"uniform"`. */
  planner?: PlannerKind;
  /** An importance profile [layer][expert] for `planner: "profile"` and for planning `static` sets. */
  profile?: number[][];
  /** `swapmoe`: tokens between revisions of the resident set; default 16. */
  updateInterval?: number;
  /**
   * `swapmoe`: most bytes uploaded per decode step (at least one expert each step while swaps wait).
   * Default: paced by what uploads measurably cost the decode steps (`stats().uploadPacing`; they
   * are kept within about 4 % of a step without uploads), and two experts per `forward` call.
   */
  maxUploadBytesPerStep?: number;
  /** `swapmoe`: per-token decay of the importance sums, in (0, 1]; default 0.97. */
  importanceDecay?: number;
  /**
   * The precision the routed experts are held at on the GPU: `"bf16"` (as the checkpoint stores them,
   * the default), `"int8"` or `"int4"` (quantized from it once, kept in a cache: see the README), or a
   * high+low pair such as `"bf16+int4"` or `"int8+int4"`: every expert the budget allows gets a low
   * copy, and the most important also a high one (swapmoe and static only). A checkpoint that stores
   * its experts in mxfp4 (gpt-oss) holds them as `"mxfp4"`.
   */
  expertPrecision?: string;
  /** Loading progress. */
  onProgress?: (p: Progress) => void;
  /**
   * Switch Transformers only: `"ignore"` (default) routes every token as transformers 5.x does (its
   * capacity mask sums over a single-token axis and never drops); `"drop"` gives the tokens past
   * `expert_capacity` per expert, counted in order within one pass of a stack (a whole encoder prompt,
   * a `forward` call's decoder ids, or one generation step), no expert output, as transformers 4.x does.
   */
  expertCapacity?: "ignore" | "drop";
}

/** Options of {@link Engine.forward} that only encoder-decoder models (Switch Transformers) take. */
export interface EncoderDecoderOptions {
  /**
   * The decoder's input ids, teacher-forced: the logits are the decoder's for these rows (default:
   * the decoder start token alone). A decoder-only model refuses them.
   */
  decoderIds?: number[];
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
  /**
   * End-of-sequence cannot be sampled before this many new tokens (transformers' `min_new_tokens`);
   * default: the model's `generation_config.json` `min_new_tokens`, else 0.
   */
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
  /** Set on the last chunk (the one with `finishReason`): the request's token counts and timing. */
  usage?: GenerateUsage;
}

/**
 * One generation's token counts and timing, on its last chunk. Times are wall-clock seconds from the
 * first read of the generator (when the request asks for the engine); a figure with nothing to measure
 * (no token read back, one token only) is 0.
 */
export interface GenerateUsage {
  /** Prompt tokens: the ids given, the prompt or the rendered chat encoded (an encoder's input for encoder-decoders). */
  promptTokens: number;
  /**
   * Tokens handed out in the chunks' `ids`. The end-of-sequence token that stopped generation is not
   * counted (as OpenAI's `completion_tokens`); a token that completed a stop string is.
   */
  completionTokens: number;
  /** `promptTokens + completionTokens`. */
  totalTokens: number;
  /** Waiting for a slot (and the engine) while earlier requests held them. */
  queueSeconds: number;
  /** Until the first generated token was read back: the wait, the prefill and the first step. */
  timeToFirstTokenSeconds: number;
  /** Prompt tokens per second, from taking the engine to the first token (prefill and first step). */
  prefillTokensPerSecond: number;
  /**
   * Tokens per second after the first one: the tokens read back after the first (the one that stopped
   * generation included) over the time from the first to the last.
   */
  decodeTokensPerSecond: number;
  /** Until this last chunk. */
  totalSeconds: number;
}

/** What {@link Engine.stats} reports. */
export interface EngineStats {
  /** Bytes held on the GPU now (every buffer). */
  gpuBytes: number;
  /** The most bytes held at once since the engine started. */
  peakGpuBytes: number;
  /** The budget in force, in bytes. */
  budgetBytes: number;
  /** The smallest budget the policy runs with: every expert under `full`, the sets under `static` with `residentExperts`, else top-k experts per MoE layer. */
  minimumBudgetBytes: number;
  /** The all-resident footprint at the checkpoint's precision: what a `"50%"` budget is a share of. */
  fullBytes: number;
  /** GPU bytes of one expert copy at the high (or only) precision tier. */
  expertBytes: number;
  /** The precision tiers the experts are held at: `"bf16"`, `"int4"`, `"bf16+int4"`, … */
  expertPrecision: string;
  /** GPU bytes of one expert copy at each tier's precision. */
  expertBytesByPrecision: Record<string, number>;
  /** GPU bytes of the expert slots at each precision (part of `gpuBytesByKind.experts`). */
  gpuBytesByPrecision: Record<string, number>;
  /** Positions the KV cache holds (prompt plus generated tokens of one request). */
  contextLength: number;
  /** Sequences decoded together (`maxBatchSequences`), each with KV caches of its own. */
  maxBatchSequences: number;
  /** Most prompt rows per forward call (`maxBatchTokens`, or the default the budget chose). */
  maxBatchTokens: number;
  /** Generations holding one of those sequences' slots now. */
  activeSequences: number;
  /** GPU bytes by what they hold. */
  gpuBytesByKind: Record<string, number>;
  /** The residency policy. */
  policy: PolicyName;
  /** Slots per MoE layer (all tiers). */
  expertSlots: number[];
  /** Slots per MoE layer at each precision. */
  expertSlotsByPrecision: Record<string, number[]>;
  /** Per MoE layer, the experts usable now (a copy at some precision). */
  residentExperts: number[][];
  /** Per precision and MoE layer, the experts with a copy at that precision. */
  residentByPrecision: Record<string, number[][]>;
  /** Per MoE layer and expert, how often the unmasked router chose it since the engine started. */
  expertUsage: number[][];
  /** Share of (token, top-k choice) pairs served by the expert the unmasked router chose (at any precision). */
  hitRate: number;
  /** Share of (token, top-k choice) pairs served by the chosen expert at the high precision tier. */
  highPrecisionHitRate: number;
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
  /**
   * `swapmoe` with paced uploads (no `maxUploadBytesPerStep`): the measured upload rate, the share of
   * a decode step's time that uploads may take now, and the bytes that makes a step.
   */
  uploadPacing?: UploadPacing;
  /** The decode batches on the GPU's clock, where the device has timestamp queries ({@link GpuTimeline}). */
  gpuTimeline?: GpuTimeline;
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
  /** The model's constants, from its `config.json`: each family's own, told apart by `modelType`. */
  readonly spec: ModelSpec;
  /** The model's tokenizer and chat template. */
  readonly tokenizer: Tokenizer;
  /** The model folder. */
  readonly modelDir: string;
  /** Whether the model is an encoder-decoder: its prompt goes to an encoder, and `forward` takes `decoderIds`. */
  readonly encoderDecoder: boolean;
  /**
   * Logits [T × V] row-major for every position of `ids`, as one request from position 0. An
   * encoder-decoder (Switch) encodes `ids` and returns the decoder's logits [T_dec × V] for
   * `options.decoderIds` (default: the decoder start token alone). The logits come back as computed,
   * NaN or infinite ones included (`perplexity` and `generate` raise `NonFiniteError` for those).
   */
  forward(ids: readonly number[], options?: EncoderDecoderOptions): Promise<Float32Array>;
  /**
   * Streams generated tokens; the last chunk carries the request's `usage`. Logits that are NaN or
   * infinite (non-finite weights, or an overflow) throw `NonFiniteError` rather than give tokens.
   *
   * The generation asks for a slot when its first chunk is read, and decodes together with the other
   * generations that hold one (up to `maxBatchSequences`; the next wait in order), giving the tokens it
   * would give alone. It runs ahead of its consumer by a few batches at most; while its consumer is
   * away and another generation or `forward` needs its slot, it gives the slot up, and later rebuilds
   * its KV cache (a prefill over its prompt and tokens) and goes on with the tokens it would have given
   * alone. An iterator dropped without `return()` blocks nothing; iterators read in turn all progress.
   */
  generate(request: GenerateRequest): AsyncGenerator<GenerateChunk>;
  /**
   * OpenAI's chat completions in-process: `engine.chat.completions.create({ messages, stream })`
   * answers with the objects and stream chunks the server's `POST /v1/chat/completions` sends, usage
   * included, after the same checks (a bad field is a `RequestError`, an `OptionError`).
   */
  readonly chat: ChatApi;
  /** OpenAI's (legacy) text completions in-process: `engine.completions.create({ prompt })`, as `chat`. */
  readonly completions: Completions;
  /** Memory, residency, routing and speed figures as of now. */
  stats(): EngineStats;
  /** Changes the budget while the engine lives: shrinking evicts, growing adds slots. */
  setBudget(budget: Budget): Promise<EngineStats>;
  /** Waits for running work, then frees every GPU buffer, the device and the mapped weights; idempotent. */
  close(): Promise<void>;
}

/**
 * The GPU's own clock on the decode batches (`EngineStats.gpuTimeline`), from the timestamps each step's
 * pass writes where the device has timestamp queries: how long steps take on the GPU, and how long it
 * sat idle between one batch and the next while generations were decoding (waiting for the host). Totals
 * since the engine loaded.
 */
export interface GpuTimeline {
  /** Steps timed: each batch's steps after its first. */
  steps: number;
  /** Their seconds on the GPU, from the end of a batch's first step to the end of its last. */
  stepSeconds: number;
  /** Times one batch ended and the next began on the GPU with the scheduler running throughout. */
  gaps: number;
  /** Seconds between those batches: from a batch's last step's end to the next batch's first step's beginning. */
  gapSeconds: number;
}

/** How `swapmoe` paces its uploads now (`EngineStats.uploadPacing`). */
export interface UploadPacing {
  /** `writeBuffer` rate measured on expert uploads, bytes per second. */
  bytesPerSecond: number;
  /**
   * Share of a decode step's time (measured without uploads) that uploads may take: raised while what
   * uploads add to the steps stays within 4 % of a step (on the GPU's clock: the GPU's waiting between
   * passes beyond the steps without uploads), halved when it does not.
   */
  share: number;
  /** Seconds a decode step takes without uploads, as last measured (null: not measured yet). */
  stepSeconds: number | null;
  /**
   * On the GPU's clock: of `stepSeconds`, the seconds the GPU waited between passes (null: not
   * measured, or timed on the host's clock).
   */
  idleSeconds: number | null;
  /** Bytes a decode step earns for uploads. */
  bytesPerStep: number;
  /**
   * What timed the steps: the GPU's timestamps around each step's pass (where the device has timestamp
   * queries), or the host's clock between readbacks.
   */
  clock: "gpu" | "host";
}
