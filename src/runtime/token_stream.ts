/**
 * What one generation does with the tokens read back for it: text through the tokenizer's stream
 * decoder, stop strings (held back while they could still begin), end of sequence once `minTokens`
 * tokens were generated, the length limit, NaN logits (the sampler's NON_FINITE), and the request's
 * usage on its last chunk. The batch scheduler (`batch.ts`) reads tokens back for many generations at
 * once and hands each its own.
 *
 * @module
 */
import { NonFiniteError } from "../errors.ts";
import { NON_FINITE_TOKEN } from "../kernels/sample.ts";
import { StopText } from "../text/stop_text.ts";
import type { Tokenizer } from "../text/tokenizer.ts";
import type { FinishReason, GenerateChunk, GenerateUsage } from "./types.ts";

/** The most steps (so tokens per generation) one readback batch covers. */
export const MAX_READ = 16;
/** Steps per readback batch as a generation goes on (the last repeats): its first token is not held back. */
export const READ_SIZES: readonly number[] = [1, 2, 4, 8, MAX_READ];

/** What a {@link TokenStream} needs to know of its request. */
export interface TokenStreamOptions {
  tokenizer: Tokenizer;
  /** Ids that end generation (once `minTokens` tokens were generated). */
  eos: ReadonlySet<number>;
  minTokens: number;
  stop: readonly string[];
  /** Most tokens to generate. */
  maxTokens: number;
  /** The prompt's length in tokens (its usage). */
  promptTokens: number;
}

/** One generation's output, from the tokens read back for it to the chunks it hands out. */
export class TokenStream {
  readonly #o: TokenStreamOptions;
  readonly #decoder: ReturnType<Tokenizer["createStreamDecoder"]>;
  /** The text, cut at a stop string and held back while it could begin one. */
  readonly #text: StopText;
  /** Tokens read back and handled (the one that stopped generation included). */
  #consumed = 0;
  /** Tokens handed out in chunks' ids. */
  #handedOut = 0;
  /** Tokens handled with the first batch. */
  #firstConsumed = 0;
  /** When (`performance.now()`) the first batch and the last were read back; 0 before. */
  #firstRead = 0;
  #lastRead = 0;
  /** Why it ended, once it did. */
  finish: FinishReason | undefined;
  /** When the request asked for the engine (its first chunk was read), and when it got a slot. */
  askedAt = 0;
  startedAt = 0;

  /** The output of a request with `o`'s settings. */
  constructor(o: TokenStreamOptions) {
    this.#o = o;
    this.#decoder = o.tokenizer.createStreamDecoder();
    this.#text = new StopText(o.stop);
  }

  /** Whether its first tokens came back. */
  get started(): boolean {
    return this.#firstRead > 0;
  }

  /** Tokens handed out after the first batch's: what decode throughput counts. */
  get decodedTokens(): number {
    return this.#consumed - this.#firstConsumed;
  }

  /**
   * Handles the next tokens read back, in order (`now`: when), and returns the chunk to hand out; when
   * they end the generation, the chunk carries `finishReason` and `usage`. With `aborted`, a generation
   * that did not end otherwise ends with `"abort"`.
   * @throws {NonFiniteError} for a token the sampler flagged: the logits were NaN or infinite
   */
  push(tokens: readonly number[], now: number, aborted = false): GenerateChunk {
    const first = this.#firstRead === 0;
    if (first) this.#firstRead = now;
    this.#lastRead = now;
    const o = this.#o;
    const ids: number[] = [];
    for (const tok of tokens) {
      if (tok === NON_FINITE_TOKEN) throw new NonFiniteError(`for generated token ${this.#consumed}`);
      this.#consumed++;
      if (o.eos.has(tok) && this.#consumed > o.minTokens) {
        this.finish = "stop";
        break;
      }
      ids.push(tok);
      if (this.#text.append(this.#decoder.push([tok]))) {
        this.finish = "stop";
        break;
      }
    }
    if (first) this.#firstConsumed = this.#consumed;
    this.#handedOut += ids.length;
    if (!this.finish && this.#consumed >= o.maxTokens) {
      this.#text.append(this.#decoder.flush());
      this.finish = "length";
    }
    if (!this.finish && aborted) this.finish = "abort";
    return this.#chunk(ids);
  }

  /** The last chunk of a generation stopped by its signal with nothing more to read: `"abort"`. */
  abort(): GenerateChunk {
    this.finish ??= "abort";
    return this.#chunk([]);
  }

  /** A chunk of `ids` and the text they complete, all of it once finished. */
  #chunk(ids: number[]): GenerateChunk {
    const chunk: GenerateChunk = { ids, text: this.#text.take(this.finish !== undefined) };
    if (this.finish) {
      chunk.finishReason = this.finish;
      chunk.usage = this.usage();
    }
    return chunk;
  }

  /** The request's counts and timing as of now, for its last chunk. */
  usage(): GenerateUsage {
    const { promptTokens } = this.#o;
    const td = this.#firstRead;
    const askedAt = this.askedAt;
    const startedAt = this.startedAt || askedAt;
    const after = this.decodedTokens;
    return {
      promptTokens,
      completionTokens: this.#handedOut,
      totalTokens: promptTokens + this.#handedOut,
      queueSeconds: (startedAt - askedAt) / 1000,
      timeToFirstTokenSeconds: td > 0 ? (td - askedAt) / 1000 : 0,
      prefillTokensPerSecond: td > startedAt ? promptTokens / ((td - startedAt) / 1000) : 0,
      decodeTokensPerSecond: after > 0 && this.#lastRead > td ? after / ((this.#lastRead - td) / 1000) : 0,
      totalSeconds: (performance.now() - askedAt) / 1000,
    };
  }
}
