/**
 * swapmoe: a Deno-native inference engine for Mixture-of-Experts language models under a tunable
 * GPU memory budget, after SwapMoE (Kong et al., ACL 2024).
 *
 * `model` is a Hugging Face checkpoint folder as published (`config.json`, bf16 safetensors,
 * `tokenizer.json`); the package does not carry the bundled model of the repository. Permissions:
 * `--allow-read` of the model folder, `--allow-ffi` (the weights are memory-mapped through libc),
 * `--allow-net` to fetch the WGSL shaders when imported from a URL such as JSR, and optionally
 * `--allow-env` (without it, Mesa's Vulkan drivers may print an `XDG_RUNTIME_DIR` line).
 *
 * @example Generate text under 60% of the all-resident footprint
 * ```ts
 * import { createEngine } from "@swapmoe/swapmoe";
 *
 * await using engine = await createEngine({
 *   model: "./models/OLMoE-1B-7B-0924", // a checkpoint folder
 *   policy: "swapmoe",
 *   budget: "60%",
 * });
 * for await (const chunk of engine.generate({ prompt: "The state of the Union is", maxTokens: 32 })) {
 *   console.log(chunk.text);
 * }
 * console.log(engine.stats().hitRate);
 * ```
 *
 * @module
 */
export {
  createEngine,
  type EncoderDecoderOptions,
  type Engine,
  type EngineOptions,
  type EngineStats,
  type FinishReason,
  type GenerateChunk,
  type GenerateRequest,
  type GenerateUsage,
  type GpuTimeline,
  type Progress,
  type UploadPacing,
} from "./src/runtime/engine.ts";
export { type AccessLog, createHandler, type ServeHandler, type ServerOptions } from "./src/server/server.ts";
export type {
  ChatApi,
  ChatCompletion,
  ChatCompletionChoice,
  ChatCompletionChunk,
  ChatCompletionChunkChoice,
  ChatCompletionContentPartText,
  ChatCompletionCreateParams,
  ChatCompletionCreateParamsBase,
  ChatCompletionCreateParamsNonStreaming,
  ChatCompletionCreateParamsStreaming,
  ChatCompletionMessageParam,
  ChatCompletions,
  ChatCompletionStream,
  Completion,
  CompletionChoice,
  CompletionCreateParams,
  CompletionCreateParamsBase,
  CompletionCreateParamsNonStreaming,
  CompletionCreateParamsStreaming,
  Completions,
  CompletionStream,
  CreateParamsBase,
  OpenAiFinishReason,
  RequestOptions,
  StreamOptions,
  Usage,
} from "./src/server/openai_types.ts";
export { type ModelSpec, SUPPORTED_MODEL_TYPES } from "./src/models/registry.ts";
export type { SpecBase } from "./src/models/family.ts";
export type { DecoderGeometry, DecoderSpec } from "./src/models/decoder_config.ts";
export {
  CAUSAL_MODEL_TYPES,
  type CausalModelType,
  type CausalSpec,
  type QkNorm,
} from "./src/models/causal/config.ts";
export { SWITCH_MODEL_TYPE, type SwitchSpec } from "./src/models/switch/config.ts";
export {
  GPT_OSS_MODEL_TYPE,
  type GptOssSpec,
  type LayerType,
  type YarnScaling,
} from "./src/models/gpt_oss/config.ts";
export type { Budget, BudgetBasis } from "./src/moe/budget.ts";
export { formatBytes, parseBudget } from "./src/moe/budget.ts";
export { POLICIES, type PolicyName } from "./src/moe/policies.ts";
export type { PlannerKind } from "./src/moe/planner.ts";
export type { GpuInfo } from "./src/gpu/device.ts";
export {
  type CachedModel,
  type CachedSnapshot,
  type DownloadProgress,
  type HubSettings,
  listCachedModels,
  pullModel,
  removeCachedModel,
  type ResolvedModel,
  resolveModel,
  type ResolveOptions,
} from "./src/hub/mod.ts";
export {
  type ChatMessage,
  type ChatTemplateOptions,
  type DecodeOptions,
  type EncodeOptions,
  type StreamDecoder,
  type TemplateLimits,
  Tokenizer,
} from "./src/text/tokenizer.ts";
export {
  BudgetError,
  CheckpointError,
  ConfigError,
  DeviceLostError,
  EngineClosedError,
  GpuError,
  HubError,
  NonFiniteError,
  OptionError,
  RequestError,
  ShaderCompileError,
  SwapMoeError,
  TokenizerError,
  WebGpuUnavailableError,
} from "./src/errors.ts";
