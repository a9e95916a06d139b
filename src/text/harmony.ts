/**
 * gpt-oss's harmony response format, read token by token.
 *
 * The assistant's output is a series of messages, each a header and a body:
 * `<|channel|>analysis<|message|>…<|end|><|start|>assistant<|channel|>final<|message|>…<|return|>`.
 * The chat template's generation prompt (`<|start|>assistant`) opens the first header. A body ends at
 * `<|end|>` (another message follows), `<|return|>` or `<|call|>` (the last: both end generation). The
 * channel says what a body is: `final` the answer, `analysis` the model's reasoning, `commentary`
 * preambles and tool calls. Read as plain text, the markers vanish (they are special tokens) and the
 * channels run together ("analysisThe user asks…assistantfinalHello"), so an answer is split by channel:
 * the server puts `final` (and `commentary`) in `content` and `analysis` in `reasoning_content`.
 *
 * @module
 */
import type { StreamDecoder, Tokenizer } from "./tokenizer.ts";

/** The ids of harmony's markers in a vocabulary. */
export interface HarmonyMarkers {
  start: number;
  channel: number;
  message: number;
  /** Ends of a body: `<|end|>`, and `<|return|>` and `<|call|>` where the vocabulary has them. */
  ends: ReadonlySet<number>;
}

/** Harmony's markers in `tokenizer`'s vocabulary, or undefined when it lacks any of the four it needs. */
export function harmonyMarkers(tokenizer: Pick<Tokenizer, "tokenToId">): HarmonyMarkers | undefined {
  const id = (t: string) => tokenizer.tokenToId(t);
  const start = id("<|start|>"),
    channel = id("<|channel|>"),
    message = id("<|message|>"),
    end = id("<|end|>");
  if (start === undefined || channel === undefined || message === undefined || end === undefined) {
    return undefined;
  }
  const ends = new Set([end, id("<|return|>"), id("<|call|>")].filter((x) => x !== undefined));
  return { start, channel, message, ends };
}

/** A reader for an answer of `tokenizer`'s model when its vocabulary has harmony's markers, else undefined. */
export function harmonyReader(
  tokenizer: Pick<Tokenizer, "tokenToId" | "decode" | "createStreamDecoder">,
): HarmonyReader | undefined {
  const markers = harmonyMarkers(tokenizer);
  return markers && new HarmonyReader(markers, tokenizer);
}

/** Text of one channel, in the order it came. */
export interface HarmonyPiece {
  channel: string;
  text: string;
}

/** Splits an assistant's harmony output into its channels' text as its tokens arrive. */
export class HarmonyReader {
  readonly #m: HarmonyMarkers;
  readonly #tokenizer: Pick<Tokenizer, "decode" | "createStreamDecoder">;
  /** In a header (ids since its `<|start|>`, or since the beginning), or in a body (its channel). */
  #header: number[] | undefined = [];
  #channel = "";
  #body: StreamDecoder | undefined;
  /** Whether any body began: an output that never opens one is not harmony, and is handed out whole. */
  #bodies = 0;

  constructor(markers: HarmonyMarkers, tokenizer: Pick<Tokenizer, "decode" | "createStreamDecoder">) {
    this.#m = markers;
    this.#tokenizer = tokenizer;
  }

  /** Reads `ids`; returns the text they complete, by channel. */
  push(ids: readonly number[]): HarmonyPiece[] {
    const out: HarmonyPiece[] = [];
    const emit = (channel: string, text: string) => {
      if (!text) return;
      const last = out.at(-1);
      if (last?.channel === channel) last.text += text;
      else out.push({ channel, text });
    };
    for (const id of ids) {
      if (this.#body) {
        if (this.#m.ends.has(id)) {
          emit(this.#channel, this.#body.flush());
          this.#body = undefined; // between messages until the next <|start|>
        } else emit(this.#channel, this.#body.push([id]));
      } else if (id === this.#m.start) {
        this.#header = [];
      } else if (id === this.#m.message) {
        this.#channel = this.#channelOf(this.#header ?? []);
        this.#header = undefined;
        this.#body = this.#tokenizer.createStreamDecoder();
        this.#bodies++;
      } else if (!this.#m.ends.has(id)) {
        (this.#header ??= []).push(id);
      }
    }
    return out;
  }

  /** The end of the output: what a body still held, or a whole output that was never harmony. */
  flush(): HarmonyPiece[] {
    if (this.#body) {
      const text = this.#body.flush();
      this.#body = undefined;
      return text ? [{ channel: this.#channel, text }] : [];
    }
    if (this.#bodies === 0 && this.#header && this.#header.length > 0) {
      const text = this.#tokenizer.decode(this.#header);
      this.#header = [];
      return text ? [{ channel: "final", text }] : [];
    }
    return [];
  }

  /** A header's channel: the word after `<|channel|>` (`final` when it names none). */
  #channelOf(header: readonly number[]): string {
    const at = header.indexOf(this.#m.channel);
    if (at < 0) return "final";
    const name = this.#tokenizer.decode(header.slice(at + 1)).trim().split(/\s+/)[0];
    return name || "final";
  }
}
