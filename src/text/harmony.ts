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
import { StopText } from "./stop_text.ts";
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

/**
 * A reader for an answer of `tokenizer`'s model when its vocabulary has harmony's markers, else
 * undefined; a body's text ends at the first of `stop`.
 */
export function harmonyReader(
  tokenizer: Pick<Tokenizer, "tokenToId" | "decode" | "createStreamDecoder">,
  stop: readonly string[] = [],
): HarmonyReader | undefined {
  const markers = harmonyMarkers(tokenizer);
  return markers && new HarmonyReader(markers, tokenizer, stop);
}

/** Text of one channel, in the order it came. */
export interface HarmonyPiece {
  channel: string;
  text: string;
}

/**
 * Splits an assistant's harmony output into its channels' text as its tokens arrive. A stop string
 * ends the output where it begins in a body (its reader, the server, then ends the generation); text
 * that could begin one is held back until the next tokens or the end.
 */
export class HarmonyReader {
  readonly #m: HarmonyMarkers;
  readonly #tokenizer: Pick<Tokenizer, "decode" | "createStreamDecoder">;
  readonly #stop: readonly string[];
  /** In a header (ids since its `<|start|>`, or since the beginning), or in a body (its channel). */
  #header: number[] | undefined = [];
  #channel = "";
  /** The body being read: its tokens' text, and that text cut at a stop string. */
  #body: { decoder: StreamDecoder; text: StopText } | undefined;
  /** Whether any body began: an output that never opens one is not harmony, and is handed out whole. */
  #bodies = 0;
  /** Whether a body reached a stop string: the output ends there. */
  #stopped = false;

  constructor(
    markers: HarmonyMarkers,
    tokenizer: Pick<Tokenizer, "decode" | "createStreamDecoder">,
    stop: readonly string[] = [],
  ) {
    this.#m = markers;
    this.#tokenizer = tokenizer;
    this.#stop = stop;
  }

  /** Whether a body reached one of the stop strings: the output ends there, and later ids are ignored. */
  get stopped(): boolean {
    return this.#stopped;
  }

  /** Reads `ids`; returns the text they complete, by channel. */
  push(ids: readonly number[]): HarmonyPiece[] {
    const out: HarmonyPiece[] = [];
    for (const id of ids) {
      if (this.#stopped) break;
      if (this.#body) {
        if (this.#m.ends.has(id)) {
          this.#endBody(out);
        } else {
          this.#body.text.append(this.#body.decoder.push([id]));
          emit(out, this.#channel, this.#body.text.take());
          if (this.#body.text.stopped) this.#endBody(out);
        }
      } else if (id === this.#m.start) {
        this.#header = [];
      } else if (id === this.#m.message) {
        this.#channel = this.#channelOf(this.#header ?? []);
        this.#header = undefined;
        this.#body = { decoder: this.#tokenizer.createStreamDecoder(), text: new StopText(this.#stop) };
        this.#bodies++;
      } else if (!this.#m.ends.has(id)) {
        (this.#header ??= []).push(id);
      }
    }
    return out;
  }

  /** The end of the output: what a body still held, or a whole output that was never harmony. */
  flush(): HarmonyPiece[] {
    const out: HarmonyPiece[] = [];
    if (this.#body) this.#endBody(out);
    else if (!this.#stopped && this.#bodies === 0 && this.#header && this.#header.length > 0) {
      const text = new StopText(this.#stop);
      text.append(this.#tokenizer.decode(this.#header));
      this.#header = [];
      emit(out, "final", text.take(true));
    }
    return out;
  }

  /** Ends the body being read: the rest of its text; between messages until the next `<|start|>`. */
  #endBody(out: HarmonyPiece[]): void {
    const body = this.#body!;
    body.text.append(body.decoder.flush());
    emit(out, this.#channel, body.text.take(true));
    this.#stopped ||= body.text.stopped;
    this.#body = undefined;
  }

  /** A header's channel: the word after `<|channel|>` (`final` when it names none). */
  #channelOf(header: readonly number[]): string {
    const at = header.indexOf(this.#m.channel);
    if (at < 0) return "final";
    const name = this.#tokenizer.decode(header.slice(at + 1)).trim().split(/\s+/)[0];
    return name || "final";
  }
}

/** Adds `text` of `channel` to `out`, to its last piece when that is of the same channel. */
function emit(out: HarmonyPiece[], channel: string, text: string): void {
  if (!text) return;
  const last = out.at(-1);
  if (last?.channel === channel) last.text += text;
  else out.push({ channel, text });
}
