/**
 * swapmoe: a Deno-native inference engine for Mixture-of-Experts language models under a tunable
 * GPU memory budget, after SwapMoE (Kong et al., ACL 2024).
 *
 * @example Generate text with the bundled model
 * ```ts
 * import { createEngine } from "@swapmoe/swapmoe";
 *
 * await using engine = await createEngine({ policy: "swapmoe", budget: "60%" });
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
  type Progress,
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
export {
  CAUSAL_MODEL_TYPES,
  type CausalModelType,
  type CausalSpec,
  type QkNorm,
} from "./src/models/causal/config.ts";
export { SWITCH_MODEL_TYPE, type SwitchSpec } from "./src/models/switch/config.ts";
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
  OptionError,
  RequestError,
  ShaderCompileError,
  SwapMoeError,
  TokenizerError,
  WebGpuUnavailableError,
} from "./src/errors.ts";
