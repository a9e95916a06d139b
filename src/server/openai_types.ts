/**
 * The wire types of the OpenAI API subset the server speaks: what `/v1/chat/completions`,
 * `/v1/completions` and `/v1/models` answer, field for field as OpenAI's API reference has them.
 * Requests are untrusted JSON: `requests.ts` checks them into engine requests.
 *
 * @module
 */

/** Why a choice ended, as OpenAI names it (the engine's `"abort"` never reaches a client). */
export type OpenAiFinishReason = "stop" | "length";

/** Token counts of one request. */
export interface Usage {
  prompt_tokens: number;
  completion_tokens: number;
  total_tokens: number;
}

/** `POST /v1/chat/completions` without `stream`. */
export interface ChatCompletion {
  id: string;
  object: "chat.completion";
  /** Unix seconds. */
  created: number;
  model: string;
  choices: {
    index: number;
    message: { role: "assistant"; content: string; refusal: null };
    logprobs: null;
    finish_reason: OpenAiFinishReason;
  }[];
  usage: Usage;
}

/** One server-sent event of a streamed chat completion. */
export interface ChatCompletionChunk {
  id: string;
  object: "chat.completion.chunk";
  created: number;
  model: string;
  /** Empty in the usage chunk that `stream_options.include_usage` adds at the end. */
  choices: {
    index: number;
    delta: { role?: "assistant"; content?: string };
    logprobs: null;
    finish_reason: OpenAiFinishReason | null;
  }[];
  /** With `include_usage`: null on every chunk but the last. */
  usage?: Usage | null;
}

/** `POST /v1/completions` (legacy text completions); streamed chunks have the same shape. */
export interface Completion {
  id: string;
  object: "text_completion";
  created: number;
  model: string;
  choices: {
    index: number;
    text: string;
    logprobs: null;
    finish_reason: OpenAiFinishReason | null;
  }[];
  usage?: Usage | null;
}

/** An entry of `GET /v1/models`. */
export interface Model {
  id: string;
  object: "model";
  created: number;
  owned_by: string;
}

/** `GET /v1/models`. */
export interface ModelList {
  object: "list";
  data: Model[];
}

/** `GET` and `PUT /v1/engine/budget` (swapmoe's own route): the engine's memory figures. */
export interface BudgetReport {
  object: "engine.budget";
  policy: string;
  /** The budget now, in bytes. */
  budgetBytes: number;
  /** Bytes held on the GPU now. */
  gpuBytes: number;
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
