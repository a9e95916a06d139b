/**
 * OpenAI's chat and text completions over an {@link Engine}: one mapping for both ways in, the
 * engine's own `engine.chat.completions.create` and `engine.completions.create`, and the HTTP server's
 * `POST /v1/chat/completions` and `POST /v1/completions`. A request goes
 *
 * body → {@link parseJob} (`requests.ts`: every field checked; a {@link RequestError} names the one at
 * fault) → {@link startJob} (the prompt measured, tokenized once and fitted to the context;
 * `engine.generate`) → the engine's chunks → an {@link Answer}: one `ChatCompletion` or `Completion`,
 * or their stream chunks with the usage chunk last.
 *
 * The server adds what HTTP needs around it (body limits, the admission queue, metrics, disconnects,
 * error responses); in-process, an abort of the caller's signal rejects with the signal's reason.
 *
 * @module
 */
import { basename } from "node:path";
import { EngineClosedError, OptionError } from "../errors.ts";
import { promptIdsOffThread } from "../runtime/requests.ts";
import type { Engine, FinishReason, GenerateChunk } from "../runtime/types.ts";
import { type HarmonyReader, harmonyReader } from "../text/harmony.ts";
import { utf8Length } from "../text/tokenizer.ts";
import type {
  ChatApi,
  ChatCompletion,
  ChatCompletionChunk,
  ChatCompletions,
  Completion,
  Completions,
  OpenAiFinishReason,
  RequestOptions,
  Usage,
} from "./openai_types.ts";
import {
  badParam,
  fitContext,
  type Job,
  type Limits,
  parseChatRequest,
  parseCompletionRequest,
} from "./requests.ts";

/** New tokens for a request without `max_tokens` (capped by the room left in the context). */
export const DEFAULT_MAX_TOKENS = 256;
/** The least bytes of text a token is allowed to stand for when prompts are measured before tokenizing. */
const MIN_BYTES_PER_TOKEN = 64;

/** What requests are checked against and answered with. */
export interface ApiSettings extends Limits {
  /** New tokens when a request gives no `max_tokens`. */
  defaultMaxTokens: number;
  /** Longest prompt text, in UTF-8 bytes, checked before tokenizing. */
  maxPromptBytes: number;
}

/**
 * The settings for `engine`: the model id defaults to the model folder's name, the context length
 * to the engine's, the default `max_tokens` to {@link DEFAULT_MAX_TOKENS}.
 */
export function apiSettings(
  engine: Engine,
  o: { modelId?: string; contextLength?: number; defaultMaxTokens?: number } = {},
): ApiSettings {
  const contextLength = o.contextLength ?? engine.stats().contextLength;
  return {
    modelId: o.modelId ?? basename(engine.modelDir.replace(/[\\/]+$/, "")),
    contextLength,
    vocabSize: engine.spec.vocabSize,
    defaultMaxTokens: o.defaultMaxTokens ?? DEFAULT_MAX_TOKENS,
    // Text of more bytes than this cannot fit the context: a token stands for at most maxTokenBytes
    // bytes of text; four times that leaves room for a normalizer that shrinks text (NFKC: 3 to 1).
    maxPromptBytes: contextLength * Math.max(MIN_BYTES_PER_TOKEN, 4 * engine.tokenizer.maxTokenBytes),
  };
}

/** Checks a chat (`"chat"`) or text completion (`"completion"`) request body. */
export function parseJob(kind: Job["kind"], body: unknown, settings: ApiSettings): Job {
  return kind === "chat" ? parseChatRequest(body, settings) : parseCompletionRequest(body, settings);
}

/** A checked request handed to the engine, which is taken when `chunks` is first read. */
export interface StartedJob {
  readonly job: Job;
  /** `chatcmpl-…` or `cmpl-…`. */
  readonly id: string;
  /** Unix seconds. */
  readonly created: number;
  readonly model: string;
  readonly promptTokens: number;
  readonly chunks: AsyncGenerator<GenerateChunk>;
  /** Cancels the generation, waiting or running. */
  readonly signal: AbortSignal | undefined;
  /** A chat answer of a harmony model (gpt-oss): its channels, read from the tokens. */
  readonly harmony: HarmonyReader | undefined;
}

/**
 * Tokenizes the prompt once (text that cannot fit the context is refused by its length first; a long
 * prompt is tokenized on the tokenizer's thread, so that the streams being decoded do not wait), fits
 * `max_tokens` to the context and asks the engine, which checks the request now and is taken when the
 * chunks are first read.
 * @throws {RequestError} for a prompt too long; the engine's `OptionError` or `TokenizerError`
 */
export async function startJob(
  engine: Engine,
  settings: ApiSettings,
  job: Job,
  signal?: AbortSignal,
): Promise<StartedJob> {
  const r = job.request;
  let ids: number[];
  if (r.ids) ids = [...r.ids];
  else {
    const bytes = r.prompt !== undefined
      ? utf8Length(r.prompt)
      : r.messages!.reduce((n, m) => n + utf8Length(m.content), 0);
    const max = settings.maxPromptBytes;
    if (bytes > max) {
      throw badParam(
        job.kind === "chat" ? "messages" : "prompt",
        `Prompt too long: ${bytes} bytes of text, more than the ${max} that the context of ${settings.contextLength} tokens can hold (at most ${
          max / settings.contextLength
        } bytes a token for this tokenizer)`,
        "context_length_exceeded",
      );
    }
    // a long prompt on the tokenizer's thread: the streams being decoded meanwhile keep going
    ids = await promptIdsOffThread(engine.tokenizer, r);
  }
  const maxTokens = fitContext(job, ids.length, settings.contextLength, settings.defaultMaxTokens);
  const { prompt: _, messages: __, ...rest } = r;
  // a harmony answer's stop strings are looked for in its channels' text, not in the markers' words
  // (`analysis`, `final`) the engine's text holds: the reader has them, and the answer ends the generation
  const harmony = job.kind === "chat" ? harmonyReader(engine.tokenizer, r.stop ?? []) : undefined;
  if (harmony) delete rest.stop;
  return {
    job,
    id: `${job.kind === "chat" ? "chatcmpl" : "cmpl"}-${crypto.randomUUID().replaceAll("-", "")}`,
    created: Math.floor(Date.now() / 1000),
    model: settings.modelId,
    promptTokens: ids.length,
    chunks: engine.generate({ ...rest, ids, maxTokens, signal }),
    signal,
    harmony,
  };
}

/**
 * A started job's answer in OpenAI's objects, read once: {@link Answer.whole} or {@link Answer.stream}.
 * Reading it runs the generation; leaving early returns the engine's generator, which settles its GPU
 * work and frees the engine.
 */
export class Answer {
  readonly #s: StartedJob;
  readonly #chunks: AsyncIterable<GenerateChunk>;
  /** How it ended, once it has: OpenAI's reason, or `"abort"` when the job's signal stopped it. */
  finish: FinishReason | undefined;
  /** The token counts, once it ended. */
  usage: Usage | undefined;

  /** The answer to `started`, from `chunks` (default: the engine's, as started). */
  constructor(started: StartedJob, chunks: AsyncIterable<GenerateChunk> = started.chunks) {
    this.#s = started;
    this.#chunks = chunks;
  }

  /** The whole answer, or undefined when the job's signal stopped it. */
  async whole(): Promise<ChatCompletion | Completion | undefined> {
    let text = "";
    let reasoning = "";
    for await (const piece of this.#pieces()) {
      if (piece.reasoning) reasoning += piece.text;
      else text += piece.text;
    }
    if (this.finish === "abort") return undefined;
    const { id, created, model, job } = this.#s;
    const finish_reason = this.finish as OpenAiFinishReason;
    const usage = this.usage!;
    return job.kind === "chat"
      ? {
        id,
        object: "chat.completion",
        created,
        model,
        choices: [{
          index: 0,
          message: {
            role: "assistant",
            content: text,
            refusal: null,
            ...(reasoning ? { reasoning_content: reasoning } : {}),
          },
          logprobs: null,
          finish_reason,
        }],
        usage,
      }
      : {
        id,
        object: "text_completion",
        created,
        model,
        choices: [{ index: 0, text, logprobs: null, finish_reason }],
        usage,
      };
  }

  /**
   * The stream chunks: for chat, the role first; one per piece of text; one with the finish reason;
   * with `stream_options.include_usage`, one without choices holding the usage (and `usage: null` on
   * the others). Nothing follows the text when the job's signal stopped it (`finish` is `"abort"`).
   */
  async *stream(): AsyncGenerator<ChatCompletionChunk | Completion, void, undefined> {
    const { id, created, model, job } = this.#s;
    const withUsage = job.includeUsage ? { usage: null } : {};
    const chunk = (
      text: string | undefined,
      finish: OpenAiFinishReason | null,
      role = false,
      reasoning = false,
    ): ChatCompletionChunk | Completion =>
      job.kind === "chat"
        ? {
          id,
          object: "chat.completion.chunk",
          created,
          model,
          choices: [{
            index: 0,
            delta: finish
              ? {}
              : reasoning
              ? { reasoning_content: text ?? "" }
              : { ...(role ? { role: "assistant" as const } : {}), content: text ?? "" },
            logprobs: null,
            finish_reason: finish,
          }],
          ...withUsage,
        }
        : {
          id,
          object: "text_completion",
          created,
          model,
          choices: [{ index: 0, text: text ?? "", logprobs: null, finish_reason: finish }],
          ...withUsage,
        };
    if (job.kind === "chat") yield chunk("", null, true);
    for await (const piece of this.#pieces()) yield chunk(piece.text, null, false, piece.reasoning);
    if (this.finish === "abort") return;
    yield chunk(undefined, this.finish as OpenAiFinishReason);
    if (job.includeUsage) yield { ...chunk(undefined, null), choices: [], usage: this.usage! };
  }

  /**
   * The text as it comes, `reasoning` for a harmony model's analysis channel; sets `finish` and
   * `usage` at the end.
   */
  async *#pieces(): AsyncGenerator<{ text: string; reasoning: boolean }, void, undefined> {
    const { signal, promptTokens, harmony } = this.#s;
    let tokens = 0;
    for await (const c of this.#chunks) {
      tokens += c.ids.length;
      // leaving the loop returns the engine's generator
      if (signal?.aborted) break;
      if (harmony) {
        const pieces = harmony.push(c.ids);
        if (c.finishReason || harmony.stopped) pieces.push(...harmony.flush());
        for (const p of pieces) yield { text: p.text, reasoning: p.channel === "analysis" };
        if (harmony.stopped && !c.finishReason) {
          // a stop string in a channel: leaving the loop ends the engine's generation
          this.finish = "stop";
          break;
        }
      } else if (c.text) yield { text: c.text, reasoning: false };
      if (c.finishReason) {
        this.finish = c.finishReason;
        // the engine's own counts (the same as counted here)
        tokens = c.usage?.completionTokens ?? tokens;
      }
    }
    if (!this.finish) {
      if (!signal?.aborted) {
        // the engine's generator ended without its last chunk: engine.close() returned it
        throw new EngineClosedError("The engine was closed during the generation");
      }
      this.finish = "abort";
    }
    this.usage = {
      prompt_tokens: promptTokens,
      completion_tokens: tokens,
      total_tokens: promptTokens + tokens,
    };
  }
}

/** `engine.chat`: OpenAI's chat completions in-process, with the server's mapping. */
export function chatApi(engine: Engine): ChatApi {
  return { completions: new InProcess(engine, "chat") as unknown as ChatCompletions };
}

/** `engine.completions`: OpenAI's text completions in-process, with the server's mapping. */
export function completionsApi(engine: Engine): Completions {
  return new InProcess(engine, "completion") as unknown as Completions;
}

/** `create` of {@link ChatCompletions} and {@link Completions}. */
class InProcess {
  readonly #engine: Engine;
  readonly #kind: Job["kind"];
  #settings: ApiSettings | undefined;

  constructor(engine: Engine, kind: Job["kind"]) {
    this.#engine = engine;
    this.#kind = kind;
  }

  async create(
    body: unknown,
    options: RequestOptions = {},
  ): Promise<
    ChatCompletion | Completion | AsyncGenerator<ChatCompletionChunk | Completion, void, undefined>
  > {
    if (typeof options !== "object" || options === null || Array.isArray(options)) {
      throw new OptionError(`Invalid request options: ${String(options)}, expected an object { signal }`);
    }
    const { signal } = options;
    if (signal !== undefined && !(signal instanceof AbortSignal)) {
      throw new OptionError("Invalid signal: expected an AbortSignal");
    }
    signal?.throwIfAborted();
    // read at the first request: the engine's constructor attaches this before it is loaded
    this.#settings ??= apiSettings(this.#engine);
    const job = parseJob(this.#kind, body, this.#settings);
    const answer = new Answer(await startJob(this.#engine, this.#settings, job, signal));
    if (job.stream) return abortableStream(answer, signal);
    const whole = await abortable(answer.whole(), signal);
    if (!whole) throw abortReason(signal);
    return whole;
  }
}

/** `answer`'s stream; an abort of `signal` throws its reason at once, waiting or running. */
async function* abortableStream(
  answer: Answer,
  signal: AbortSignal | undefined,
): AsyncGenerator<ChatCompletionChunk | Completion, void, undefined> {
  const chunks = answer.stream();
  let pending = false;
  try {
    for (;;) {
      pending = true;
      const next = await abortable(chunks.next(), signal);
      pending = false;
      if (next.done) break;
      yield next.value;
    }
    if (answer.finish === "abort") throw abortReason(signal);
  } finally {
    // after an abort a step may still be running (or waiting for the engine): the generator ends
    // behind it, without holding up the caller
    const closing = chunks.return();
    if (pending) closing.catch(() => {});
    else await closing;
  }
}

/** `promise`, or a rejection with `signal`'s reason as soon as it aborts. */
function abortable<T>(promise: Promise<T>, signal: AbortSignal | undefined): Promise<T> {
  if (!signal) return promise;
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => reject(signal.reason);
    if (signal.aborted) onAbort();
    signal.addEventListener("abort", onAbort, { once: true });
    promise.then(resolve, reject).finally(() => signal.removeEventListener("abort", onAbort));
  });
}

function abortReason(signal: AbortSignal | undefined): unknown {
  return signal?.reason ?? new DOMException("The request was aborted", "AbortError");
}
