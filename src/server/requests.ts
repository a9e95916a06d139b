/**
 * Untrusted request bodies → engine requests, for the server and the in-process API alike. Every
 * field OpenAI's API defines for chat and text completions is either honoured, checked and refused
 * with a {@link RequestError} naming it (`n > 1`, `logprobs`, `tools`, penalties; the server answers
 * 400), or harmless and ignored (`user`, `metadata`, `store`); unknown fields are ignored as vLLM does.
 * Defaults are OpenAI's: `temperature` 1, `top_p` 1. Two of vLLM's extensions are honoured: `top_k`
 * and `min_tokens`.
 *
 * @module
 */
import type { GenerateRequest } from "../runtime/types.ts";
import { BUDGET_FORMS, parseBudget } from "../moe/budget.ts";
import { type ChatMessage, chatMessageFault } from "../text/tokenizer.ts";
import { RequestError } from "../errors.ts";

/** A checked generation request: what the engine is asked, and how to answer. */
export interface Job {
  kind: "chat" | "completion";
  /** For the engine; `maxTokens` is settled by {@link fitContext}, the prompt ids and `signal` when it starts. */
  request: GenerateRequest;
  /** `max_tokens` / `max_completion_tokens` as asked, and which of them was used. */
  maxTokens?: number;
  maxTokensParam: string;
  stream: boolean;
  /** `stream_options.include_usage`. */
  includeUsage: boolean;
}

/** What a request is checked against. */
export interface Limits {
  /** The only model id served. */
  modelId: string;
  /** Positions the engine's KV cache holds: prompt + new tokens must fit. */
  contextLength: number;
  /** Token ids of a `prompt` given as ids must be below this. */
  vocabSize: number;
}

type Body = Record<string, unknown>;

/** Most stop sequences per request, as OpenAI's API. */
const MAX_STOPS = 4;

/** A bad value of the field `param`: `Invalid temperature: 3, expected a number in [0, 2]`. */
export function badParam(param: string, message: string, code = "invalid_value"): RequestError {
  return new RequestError(message, { param, code });
}

function isObject(v: unknown): v is Body {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

/** A value for a message, cut short: bodies may hold megabytes. */
function show(v: unknown): string {
  const s = JSON.stringify(v) ?? String(v);
  return s.length > 40 ? `${s.slice(0, 37)}...` : s;
}

/** The field, with JSON null read as absent (clients send `"stop": null`). */
function field(body: Body, key: string): unknown {
  const v = body[key];
  return v === null ? undefined : v;
}

function wrongType(param: string, v: unknown, expected: string): RequestError {
  return badParam(param, `Invalid ${param}: ${show(v)}, expected ${expected}`, "invalid_type");
}

function number(body: Body, key: string, ok: (v: number) => boolean, expected: string): number | undefined {
  const v = field(body, key);
  if (v === undefined) return undefined;
  if (typeof v !== "number" || !Number.isFinite(v)) throw wrongType(key, v, expected);
  if (!ok(v)) throw badParam(key, `Invalid ${key}: ${show(v)}, expected ${expected}`);
  return v;
}

function integer(body: Body, key: string, lo: number, hi: number, expected?: string): number | undefined {
  const v = field(body, key);
  const want = expected ?? `an integer in [${lo}, ${hi}]`;
  if (v === undefined) return undefined;
  if (typeof v !== "number" || !Number.isInteger(v)) throw wrongType(key, v, want);
  if (v < lo || v > hi) throw badParam(key, `Invalid ${key}: ${show(v)}, expected ${want}`);
  return v;
}

function boolean(body: Body, key: string): boolean | undefined {
  const v = field(body, key);
  if (v === undefined) return undefined;
  if (typeof v !== "boolean") throw wrongType(key, v, "true or false");
  return v;
}

/** Refuses fields the engine cannot honour when they ask for anything but the default. */
function refuseUnsupported(body: Body, keys: readonly string[]): void {
  for (const key of keys) {
    const v = field(body, key);
    const neutral = v === undefined || v === false || v === 0 || v === "" ||
      (Array.isArray(v) && v.length === 0) ||
      (isObject(v) && (Object.keys(v).length === 0 || (key === "response_format" && v.type === "text")));
    if (!neutral) {
      throw badParam(
        key,
        `Unsupported parameter: ${key} is not supported by this server`,
        "unsupported_parameter",
      );
    }
  }
}

function checkModel(body: Body, limits: Limits): void {
  const model = field(body, "model");
  if (model === undefined) return; // OpenAI requires it; a single-model server can do without
  if (typeof model !== "string") throw wrongType("model", model, "a model id string");
  if (model !== limits.modelId) {
    throw new RequestError(`The model "${model}" does not exist: this server serves "${limits.modelId}"`, {
      param: "model",
      code: "model_not_found",
      status: 404,
    });
  }
}

function parseStop(body: Body): string[] | undefined {
  const v = field(body, "stop");
  if (v === undefined) return undefined;
  const list = typeof v === "string" ? [v] : v;
  const expected = `a non-empty string or a list of at most ${MAX_STOPS} non-empty strings`;
  if (!Array.isArray(list) || !list.every((s) => typeof s === "string")) throw wrongType("stop", v, expected);
  if (list.length > MAX_STOPS || list.some((s) => s === "")) {
    throw badParam("stop", `Invalid stop: ${show(v)}, expected ${expected}`);
  }
  return list.length > 0 ? list : undefined;
}

/** The fields both endpoints share: sampling, stop, n, streaming, the token limit. */
function common(body: Body, limits: Limits, maxKeys: readonly string[]): Omit<Job, "kind" | "request"> & {
  request: GenerateRequest;
} {
  checkModel(body, limits);
  const n = integer(body, "n", 1, Number.MAX_SAFE_INTEGER, "1 (only one choice per request)");
  if (n !== undefined && n !== 1) {
    throw badParam("n", `Invalid n: ${n}, only n = 1 is supported`, "unsupported_value");
  }
  const temperature = number(body, "temperature", (t) => t >= 0 && t <= 2, "a number in [0, 2]");
  const topP = number(body, "top_p", (p) => p > 0 && p <= 1, "a number in (0, 1]");
  // vLLM's extension: -1 or 0 turns top-k off
  const topK = integer(body, "top_k", -1, Number.MAX_SAFE_INTEGER, "an integer >= -1 (-1 or 0: off)");
  const seed = integer(
    body,
    "seed",
    Number.MIN_SAFE_INTEGER,
    Number.MAX_SAFE_INTEGER,
    "an integer",
  );
  // vLLM's extension: end-of-sequence cannot come before this many new tokens
  const minTokens = integer(body, "min_tokens", 0, limits.contextLength);
  const stop = parseStop(body);
  const stream = boolean(body, "stream") ?? false;
  const options = field(body, "stream_options");
  if (options !== undefined && !isObject(options)) {
    throw wrongType("stream_options", options, 'an object such as {"include_usage": true}');
  }
  const includeUsage = options ? boolean(options, "include_usage") ?? false : false;

  let maxTokens: number | undefined;
  let maxTokensParam = maxKeys[maxKeys.length - 1]!;
  for (const key of maxKeys) {
    const v = integer(
      body,
      key,
      1,
      limits.contextLength,
      `an integer in [1, ${limits.contextLength}] (the context length)`,
    );
    if (v !== undefined) {
      maxTokens = v;
      maxTokensParam = key;
      break;
    }
  }
  const request: GenerateRequest = {
    temperature: temperature ?? 1,
    topP: topP ?? 1,
    topK: Math.max(0, topK ?? 0),
    stop,
  };
  if (minTokens !== undefined) request.minTokens = minTokens;
  // the sampler keeps 32 bits of the seed; OpenAI's seeds are any integer
  if (seed !== undefined) request.seed = seed >>> 0;
  return { request, maxTokens, maxTokensParam, stream, includeUsage };
}

function messageContent(v: unknown, role: string, i: number): string {
  const param = `messages[${i}].content`;
  const expected = "a string or a list of text parts";
  if (typeof v === "string") return v;
  if (v === null || v === undefined) {
    if (role === "assistant") return ""; // an assistant turn that only called tools
    throw badParam(param, `Missing ${param}: expected ${expected}`, "missing_required_parameter");
  }
  if (!Array.isArray(v)) throw wrongType(param, v, expected);
  return v.map((part, j) => {
    if (!isObject(part) || typeof part.type !== "string") {
      throw wrongType(`${param}[${j}]`, part, "a content part");
    }
    if (part.type !== "text") {
      throw badParam(
        `${param}[${j}].type`,
        `Unsupported content part: "${part.type}", this model reads text only`,
        "unsupported_value",
      );
    }
    if (typeof part.text !== "string") throw wrongType(`${param}[${j}].text`, part.text, "a string");
    return part.text;
  }).join("");
}

function parseMessages(v: unknown): ChatMessage[] {
  if (v === undefined || v === null) {
    throw badParam(
      "messages",
      "Missing messages: expected a non-empty list of {role, content}",
      "missing_required_parameter",
    );
  }
  if (!Array.isArray(v)) throw wrongType("messages", v, "a non-empty list of {role, content}");
  if (v.length === 0) throw badParam("messages", "Invalid messages: empty, expected at least one message");
  return v.map((m, i) => {
    if (!isObject(m)) throw wrongType(`messages[${i}]`, m, "an object {role, content}");
    const role = m.role;
    if (typeof role !== "string") throw wrongType(`messages[${i}].role`, role, "a role string");
    // the library's rule for roles (content parts become its string content below)
    const fault = chatMessageFault({ role, content: "" }, i);
    if (fault) throw badParam(fault.param, fault.message, "unsupported_value");
    return { role: role === "developer" ? "system" : role, content: messageContent(m.content, role, i) };
  });
}

function body(json: unknown): Body {
  if (!isObject(json)) throw wrongType("body", json, "a JSON object");
  return json;
}

/** Checks a `POST /v1/chat/completions` body. */
export function parseChatRequest(json: unknown, limits: Limits): Job {
  const b = body(json);
  const messages = parseMessages(b.messages);
  refuseUnsupported(b, [
    "logprobs",
    "top_logprobs",
    "tools",
    "functions",
    "response_format",
    "frequency_penalty",
    "presence_penalty",
    "logit_bias",
    "audio",
    "prediction",
  ]);
  const c = common(b, limits, ["max_completion_tokens", "max_tokens"]);
  return { kind: "chat", ...c, request: { ...c.request, messages } };
}

/** Checks a `POST /v1/completions` body: `prompt` is a string or token ids, one prompt per request. */
export function parseCompletionRequest(json: unknown, limits: Limits): Job {
  const b = body(json);
  const v = field(b, "prompt");
  const expected = "a string, or a list of token ids";
  const isIds = (x: unknown): x is number[] =>
    Array.isArray(x) && x.length > 0 && x.every((t) => typeof t === "number");
  let prompt: Pick<GenerateRequest, "prompt" | "ids">;
  if (v === undefined) {
    throw badParam("prompt", `Missing prompt: expected ${expected}`, "missing_required_parameter");
  } else if (typeof v === "string") prompt = { prompt: v };
  else if (Array.isArray(v) && v.length === 1 && typeof v[0] === "string") prompt = { prompt: v[0] };
  else if (isIds(v) || (Array.isArray(v) && v.length === 1 && isIds(v[0]))) {
    const ids: number[] = isIds(v) ? v : v[0];
    const bad = ids.find((t) => !Number.isInteger(t) || t < 0 || t >= limits.vocabSize);
    if (bad !== undefined) {
      throw badParam(
        "prompt",
        `Invalid token id: ${show(bad)}, expected an integer in [0, ${limits.vocabSize})`,
      );
    }
    prompt = { ids: [...ids] };
  } else if (Array.isArray(v) && v.length > 1 && v.every((p) => typeof p === "string" || isIds(p))) {
    throw badParam(
      "prompt",
      `Invalid prompt: ${v.length} prompts, only one per request is supported`,
      "unsupported_value",
    );
  } else throw wrongType("prompt", v, expected);
  refuseUnsupported(b, ["logprobs", "echo", "suffix", "frequency_penalty", "presence_penalty", "logit_bias"]);
  const bestOf = integer(b, "best_of", 1, Number.MAX_SAFE_INTEGER);
  if (bestOf !== undefined && bestOf !== 1) {
    throw badParam("best_of", `Invalid best_of: ${bestOf}, only 1 is supported`, "unsupported_value");
  }
  const c = common(b, limits, ["max_tokens"]);
  return { kind: "completion", ...c, request: { ...c.request, ...prompt } };
}

/**
 * The number of new tokens to ask for: `max_tokens` when the prompt and it fit in the context,
 * else a 400; without `max_tokens`, `defaultMaxTokens` or what room is left.
 */
export function fitContext(
  job: Job,
  promptTokens: number,
  contextLength: number,
  defaultMaxTokens: number,
): number {
  const room = contextLength - promptTokens;
  if (room < 1) {
    throw badParam(
      job.kind === "chat" ? "messages" : "prompt",
      `Prompt too long: ${promptTokens} tokens, the context holds ${contextLength} including at least one new token`,
      "context_length_exceeded",
    );
  }
  if (job.maxTokens === undefined) return Math.min(defaultMaxTokens, room);
  if (job.maxTokens > room) {
    throw badParam(
      job.maxTokensParam,
      `Too many tokens: ${promptTokens} prompt tokens + ${job.maxTokens} ${job.maxTokensParam} exceed the context length ${contextLength}`,
      "context_length_exceeded",
    );
  }
  return job.maxTokens;
}

/**
 * Checks the `budget` of `PUT /v1/engine/budget` before it reaches the engine: a number or a string
 * the engine's budget parser accepts (whole bytes up to 2^53 − 1, a size, a share, experts per layer);
 * `fullBytes` is the all-resident footprint a percentage refers to.
 */
export function checkBudget(budget: unknown, fullBytes: number): asserts budget is number | string {
  if (typeof budget !== "string" && typeof budget !== "number") {
    throw badParam(
      "budget",
      budget === undefined
        ? `Missing budget: expected {"budget": ...} with ${BUDGET_FORMS}`
        : `Invalid budget: ${show(budget)}, expected ${BUDGET_FORMS}`,
      budget === undefined ? "missing_required_parameter" : "invalid_type",
    );
  }
  try {
    parseBudget(budget, fullBytes);
  } catch (e) {
    throw badParam("budget", (e as Error).message);
  }
}
