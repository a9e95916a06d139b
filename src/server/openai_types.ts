/**
 * The wire types of the OpenAI API subset that swapmoe speaks, over HTTP (`src/server/server.ts`) and
 * in-process (`engine.chat.completions.create`): what `/v1/chat/completions`, `/v1/completions` and
 * `/v1/models` take and answer, field for field as OpenAI's API reference has them. Request bodies
 * are untrusted all the same: `requests.ts` checks them into engine requests.
 *
 * @module
 */

/** Why a choice ended, as OpenAI names it (the engine's `"abort"` never reaches a client). */
export type OpenAiFinishReason = "stop" | "length";

/** Token counts of one request. */
export interface Usage {
  /** Tokens of the prompt (for chat, the messages rendered by the model's chat template). */
  prompt_tokens: number;
  /** Tokens generated; the end-of-sequence token that ended the answer is not counted. */
  completion_tokens: number;
  /** `prompt_tokens + completion_tokens`. */
  total_tokens: number;
}

/** The answer to a chat completion request without `stream`. */
export interface ChatCompletion {
  /** `chatcmpl-` and 32 hex digits, new for every request. */
  id: string;
  /** Always `"chat.completion"`. */
  object: "chat.completion";
  /** Unix seconds. */
  created: number;
  /** The model id that answered. */
  model: string;
  /** One choice (`n` = 1). */
  choices: ChatCompletionChoice[];
  /** The request's token counts. */
  usage: Usage;
}

/** The one choice of a {@link ChatCompletion}. */
export interface ChatCompletionChoice {
  /** Always 0. */
  index: number;
  /**
   * The assistant's reply. A harmony model (gpt-oss) answers in channels: `content` is its `final`
   * (and `commentary`) text, `reasoning_content` its `analysis` (its reasoning, present when it
   * gave any), as vLLM and other OpenAI-compatible servers name it; OpenAI's own API has no such field.
   */
  message: { role: "assistant"; content: string; refusal: null; reasoning_content?: string };
  /** Always null: log probabilities are not supported. */
  logprobs: null;
  /** `"stop"`: end of sequence or a stop string; `"length"`: `max_tokens` or the context. */
  finish_reason: OpenAiFinishReason;
}

/** One chunk of a streamed chat completion (over HTTP, one server-sent event). */
export interface ChatCompletionChunk {
  /** The same for every chunk of one answer. */
  id: string;
  /** Always `"chat.completion.chunk"`. */
  object: "chat.completion.chunk";
  /** Unix seconds, the same for every chunk of one answer. */
  created: number;
  /** The model id that answered. */
  model: string;
  /** One choice; empty in the usage chunk that `stream_options.include_usage` adds at the end. */
  choices: ChatCompletionChunkChoice[];
  /** With `include_usage`: null on every chunk but the last. */
  usage?: Usage | null;
}

/** The one choice of a {@link ChatCompletionChunk}. */
export interface ChatCompletionChunkChoice {
  /** Always 0. */
  index: number;
  /**
   * The first chunk holds the role, the next ones text (`content`, or a harmony model's
   * `reasoning_content`: see {@link ChatCompletionChoice.message}), the one with `finish_reason` nothing.
   */
  delta: { role?: "assistant"; content?: string; reasoning_content?: string };
  /** Always null: log probabilities are not supported. */
  logprobs: null;
  /** Set on the last chunk with a choice; null before. */
  finish_reason: OpenAiFinishReason | null;
}

/** The answer to a (legacy) text completion request; streamed chunks have the same shape. */
export interface Completion {
  /** `cmpl-` and 32 hex digits, the same for every chunk of one answer. */
  id: string;
  /** Always `"text_completion"`. */
  object: "text_completion";
  /** Unix seconds. */
  created: number;
  /** The model id that answered. */
  model: string;
  /** One choice; empty in the usage chunk that `stream_options.include_usage` adds at the end. */
  choices: CompletionChoice[];
  /** The token counts: always without `stream`; with it, null on every chunk but the usage chunk. */
  usage?: Usage | null;
}

/** The one choice of a {@link Completion}. */
export interface CompletionChoice {
  /** Always 0. */
  index: number;
  /** The continuation of the prompt (the prompt itself is not echoed). */
  text: string;
  /** Always null: log probabilities are not supported. */
  logprobs: null;
  /** Set when the answer ends (without `stream`: always); null on the chunks before. */
  finish_reason: OpenAiFinishReason | null;
}

/** A text part of a message's content. */
export interface ChatCompletionContentPartText {
  /** Always `"text"`: the model reads text only. */
  type: "text";
  /** The text. */
  text: string;
}

/** One message of a chat request. */
export interface ChatCompletionMessageParam {
  /** Who speaks; `developer` is read as `system`. */
  role: "system" | "developer" | "user" | "assistant" | "tool";
  /** Text, or text parts joined; null only for an assistant turn. Special tokens typed in are text. */
  content: string | ChatCompletionContentPartText[] | null;
  /** Ignored. */
  name?: string;
}

/** What `stream_options` holds. */
export interface StreamOptions {
  /** Add a last chunk with no choice and the request's usage (and `usage: null` on the others). */
  include_usage?: boolean | null;
}

/** The fields of chat and text completion requests that both take. */
export interface CreateParamsBase {
  /** The model to answer: only the one served (its id: the model folder's name); optional. */
  model?: string | null;
  /** Randomness, in [0, 2]; 0 is greedy; default 1. */
  temperature?: number | null;
  /** Nucleus sampling: the smallest set of tokens with this much probability, in (0, 1]; default 1 (off). */
  top_p?: number | null;
  /** vLLM's extension: sample among the k likeliest tokens; -1 or 0 (default) is off. */
  top_k?: number | null;
  /** vLLM's extension: end of sequence cannot come before this many new tokens; default 0. */
  min_tokens?: number | null;
  /** Seed of the sampler (its low 32 bits); default random. */
  seed?: number | null;
  /** Up to 4 strings that end the answer, not included in it. */
  stop?: string | string[] | null;
  /** Choices per request: only 1. */
  n?: number | null;
  /** With `stream: true`: add a last chunk with the usage. */
  stream_options?: StreamOptions | null;
  /** Ignored (OpenAI's end-user id). */
  user?: string;
}

/** A chat completion request: `messages`, rendered with the model's chat template. */
export interface ChatCompletionCreateParamsBase extends CreateParamsBase {
  /** The conversation so far, at least one message. */
  messages: ChatCompletionMessageParam[];
  /** Most new tokens; default 256, at most what the context has room for. */
  max_completion_tokens?: number | null;
  /** The older name of `max_completion_tokens` (used when that is not given). */
  max_tokens?: number | null;
  /** Stream the answer as {@link ChatCompletionChunk}s. */
  stream?: boolean | null;
}

/** A chat completion request answered whole. */
export interface ChatCompletionCreateParamsNonStreaming extends ChatCompletionCreateParamsBase {
  /** False or absent: one {@link ChatCompletion}. */
  stream?: false | null;
}

/** A chat completion request answered in chunks. */
export interface ChatCompletionCreateParamsStreaming extends ChatCompletionCreateParamsBase {
  /** True: {@link ChatCompletionChunk}s. */
  stream: true;
}

/** A chat completion request, whole or streamed. */
export type ChatCompletionCreateParams =
  | ChatCompletionCreateParamsNonStreaming
  | ChatCompletionCreateParamsStreaming;

/** A text completion request: `prompt`, continued as given (its special tokens stay special). */
export interface CompletionCreateParamsBase extends CreateParamsBase {
  /** Text, or token ids; a list of one of either is read as that one (one prompt per request). */
  prompt: string | number[] | [string] | [number[]];
  /** Most new tokens; default 256, at most what the context has room for. */
  max_tokens?: number | null;
  /** Stream the answer as {@link Completion} chunks. */
  stream?: boolean | null;
}

/** A text completion request answered whole. */
export interface CompletionCreateParamsNonStreaming extends CompletionCreateParamsBase {
  /** False or absent: one {@link Completion}. */
  stream?: false | null;
}

/** A text completion request answered in chunks. */
export interface CompletionCreateParamsStreaming extends CompletionCreateParamsBase {
  /** True: {@link Completion} chunks. */
  stream: true;
}

/** A text completion request, whole or streamed. */
export type CompletionCreateParams = CompletionCreateParamsNonStreaming | CompletionCreateParamsStreaming;

/** The second argument of `create`, as OpenAI's client takes it. */
export interface RequestOptions {
  /**
   * Cancels the request, waiting or running: `create` rejects, or the stream throws, with the
   * signal's reason (an `AbortError` `DOMException` unless one was given).
   */
  signal?: AbortSignal;
}

/** A streamed answer: `for await` its chunks; leaving the loop early ends the generation. */
export type ChatCompletionStream = AsyncGenerator<ChatCompletionChunk, void, undefined>;

/** A streamed text completion: `for await` its chunks; leaving the loop early ends the generation. */
export type CompletionStream = AsyncGenerator<Completion, void, undefined>;

/** `engine.chat`: OpenAI's chat API in-process. */
export interface ChatApi {
  /** Chat completions. */
  readonly completions: ChatCompletions;
}

/** `engine.chat.completions`. */
export interface ChatCompletions {
  /**
   * Answers a chat request as the server's `POST /v1/chat/completions` does, with the same checks:
   * a bad field rejects with a {@link RequestError} naming it (an `OptionError`; the server answers
   * it with a 400), a template that fails with a `TokenizerError`.
   */
  create(body: ChatCompletionCreateParamsNonStreaming, options?: RequestOptions): Promise<ChatCompletion>;
  /** The same, streamed: resolves, once the request is checked, to the stream of chunks. */
  create(body: ChatCompletionCreateParamsStreaming, options?: RequestOptions): Promise<ChatCompletionStream>;
  /** Either, as `body.stream` says. */
  create(
    body: ChatCompletionCreateParams,
    options?: RequestOptions,
  ): Promise<ChatCompletion | ChatCompletionStream>;
}

/** `engine.completions`: OpenAI's (legacy) text completions in-process. */
export interface Completions {
  /**
   * Continues a prompt as the server's `POST /v1/completions` does, with the same checks: a bad field
   * rejects with a {@link RequestError} naming it.
   */
  create(body: CompletionCreateParamsNonStreaming, options?: RequestOptions): Promise<Completion>;
  /** The same, streamed: resolves, once the request is checked, to the stream of chunks. */
  create(body: CompletionCreateParamsStreaming, options?: RequestOptions): Promise<CompletionStream>;
  /** Either, as `body.stream` says. */
  create(body: CompletionCreateParams, options?: RequestOptions): Promise<Completion | CompletionStream>;
}

/** An entry of `GET /v1/models`. */
export interface Model {
  /** The id clients name. */
  id: string;
  /** Always `"model"`. */
  object: "model";
  /** Unix seconds: when the server started. */
  created: number;
  /** Always `"swapmoe"`. */
  owned_by: string;
}

/** `GET /v1/models`. */
export interface ModelList {
  /** Always `"list"`. */
  object: "list";
  /** The one model served. */
  data: Model[];
}

/** `GET` and `PUT /v1/engine/budget` (swapmoe's own route): the engine's memory figures. */
export interface BudgetReport {
  /** Always `"engine.budget"`. */
  object: "engine.budget";
  /** The residency policy. */
  policy: string;
  /** The budget now, in bytes. */
  budgetBytes: number;
  /** Bytes held on the GPU now. */
  gpuBytes: number;
  /** The most bytes held at once since the engine started. */
  peakGpuBytes: number;
  /** The least budget the policy can run with. */
  minimumBudgetBytes: number;
  /** The all-resident footprint (what `"100%"` means). */
  fullBytes: number;
  /** Bytes of one expert slot. */
  expertBytes: number;
  /** Slots per MoE layer. */
  expertSlots: number[];
  /** Per MoE layer, the experts usable now. */
  residentExperts: number[][];
}
