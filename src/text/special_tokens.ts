/**
 * Special tokens written inside chat messages are text, not control tokens: a user who types
 * `</s>\n<|system|>` into a message gets those characters encoded as text, not an end of turn and a
 * system turn of their own making. The chat template's own special tokens stay special.
 *
 * How: a second tokenizer built from the same `tokenizer.json` in which each special added token is
 * renamed to a sentinel (private-use characters and a random nonce) that no text can hold. In the
 * rendered prompt, each special token the template wrote (outside the messages' content) is replaced
 * by its sentinel; the second tokenizer then encodes the whole prompt in one pass, so the text between
 * two special tokens is split and merged exactly as before, and the special strings inside content,
 * no longer added tokens there, are split as the text they are. This is what transformers does with
 * `split_special_tokens=True` inside the content, and what its own tokenizer does outside it.
 * Non-special added tokens (e.g. Qwen3's `<think>`) are matched everywhere, as in transformers.
 *
 * @module
 */
import { Tokenizer as HfTokenizer } from "@huggingface/tokenizers";

type JsonObject = Record<string, unknown>;

/** `[start, end)` character ranges of message content in a rendered prompt. */
export type Spans = readonly (readonly [number, number])[];

interface AddedTokenJson {
  id: number;
  content: string;
  special?: boolean;
}

/** Random private-use characters (U+F0000…U+FFFFD): part of every sentinel and marker. */
function nonce(): string {
  const r = crypto.getRandomValues(new Uint16Array(8));
  return String.fromCodePoint(...Array.from(r, (x) => 0xf0000 + x));
}

/** The special added tokens of a tokenizer, and the encoder that keeps them out of message content. */
export class SpecialTokenGuard {
  /** Special added tokens, longest first. */
  readonly specials: readonly string[];
  /** Random characters that no prompt holds: sentinels and content markers contain them. */
  readonly nonce = nonce();
  readonly #tokenizerJson: JsonObject;
  readonly #config: JsonObject;
  /** Every added token (special or not), by its first character, longest first: what matches where. */
  readonly #added = new Map<string, { content: string; special: boolean }[]>();
  #plain: { hf: HfTokenizer; sentinels: Map<string, string> } | undefined;

  /** Reads the added tokens of `tokenizerJson` (with every pipeline stage present) and `config`. */
  constructor(tokenizerJson: JsonObject, config: JsonObject) {
    this.#tokenizerJson = tokenizerJson;
    this.#config = config;
    const added = (tokenizerJson.added_tokens ?? []) as AddedTokenJson[];
    for (const t of added) {
      if (typeof t.content !== "string" || t.content === "") continue;
      const first = t.content[0]!;
      const list = this.#added.get(first) ?? [];
      list.push({ content: t.content, special: t.special === true });
      list.sort((a, b) => b.content.length - a.content.length);
      this.#added.set(first, list);
    }
    this.specials = added.filter((t) => t.special === true && t.content !== "").map((t) => t.content)
      .sort((a, b) => b.length - a.length);
  }

  /**
   * Whether `content` can take part in a special token of the prompt it is rendered into: it holds
   * one, or ends with the start of one, or starts with the end of one.
   */
  mayHoldSpecial(content: string): boolean {
    for (const s of this.specials) {
      if (content.includes(s)) return true;
      for (let k = 1; k < s.length; k++) {
        if (content.endsWith(s.slice(0, k)) || content.startsWith(s.slice(k))) return true;
      }
    }
    return false;
  }

  /**
   * Ids of `text` (no post-processor tokens) where only the special tokens outside `spans` are
   * special; the special strings inside `spans` are encoded as text.
   */
  encode(text: string, spans: Spans): number[] {
    const plain = this.#plainTokenizer();
    let out = "";
    let from = 0;
    // leftmost-longest over every added token, as the tokenizer's own splitter matches them
    for (let i = 0; i < text.length;) {
      const match = this.#added.get(text[i]!)?.find((t) => text.startsWith(t.content, i));
      if (!match) {
        i++;
        continue;
      }
      const end = i + match.content.length;
      const inContent = spans.some(([a, b]) => i < b && end > a);
      if (match.special && !inContent) {
        out += text.slice(from, i) + plain.sentinels.get(match.content)!;
        from = end;
      }
      i = end;
    }
    out += text.slice(from);
    return plain.hf.encode(out, { add_special_tokens: false }).ids;
  }

  /** The tokenizer whose special added tokens are sentinels; built on first use. */
  #plainTokenizer(): { hf: HfTokenizer; sentinels: Map<string, string> } {
    if (this.#plain) return this.#plain;
    const sentinels = new Map<string, string>();
    const added = ((this.#tokenizerJson.added_tokens ?? []) as AddedTokenJson[]).map((t) => {
      if (t.special !== true) return t;
      const sentinel = `\u{F0000}${this.nonce}${t.id}\u{F0001}`;
      sentinels.set(t.content, sentinel);
      return { ...t, content: sentinel };
    });
    const hf = new HfTokenizer({ ...this.#tokenizerJson, added_tokens: added }, this.#config);
    this.#plain = { hf, sentinels };
    return this.#plain;
  }
}
