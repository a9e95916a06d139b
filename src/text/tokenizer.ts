/**
 * A Hugging Face tokenizer folder (`tokenizer.json`, `tokenizer_config.json`, chat template) → text ↔ ids,
 * matching `transformers`' `AutoTokenizer`: encoding through `@huggingface/tokenizers`, chat templates through
 * `@huggingface/jinja`, plus an incremental detokenizer for streaming.
 *
 * @module
 */
import { join } from "node:path";
import { Tokenizer as HfTokenizer } from "@huggingface/tokenizers";
import { ChatTemplate, TemplateLimitError, type TemplateLimits } from "./chat_template.ts";
import { type Spans, SpecialTokenGuard } from "./special_tokens.ts";

export { TEMPLATE_LIMITS, type TemplateLimits } from "./chat_template.ts";
import { TokenizerError } from "../errors.ts";
import { TokenizerThread } from "./tokenizer_thread.ts";
import { readTextFileLimited, TEXT_FILE_LIMITS } from "../checkpoint/text_file.ts";

/** One turn of a conversation, as chat templates expect it. */
export interface ChatMessage {
  /** Who speaks: one of {@link CHAT_ROLES}. */
  role: string;
  /** What they say: plain text, whatever special tokens it spells (see {@link Tokenizer.encodeChat}). */
  content: string;
}

/** The roles of OpenAI's chat API; `developer` is its newer name for `system`. */
export const CHAT_ROLES: readonly string[] = ["system", "developer", "user", "assistant", "tool"];

/**
 * What is wrong with `m` as message `i` of a conversation, or undefined when nothing is: a message is
 * an object with a role of {@link CHAT_ROLES} and string content. `param` names the field at fault.
 */
export function chatMessageFault(m: unknown, i: number): { param: string; message: string } | undefined {
  if (typeof m !== "object" || m === null || Array.isArray(m)) {
    return { param: `messages[${i}]`, message: `Invalid messages[${i}]: expected an object {role, content}` };
  }
  const { role, content } = m as Record<string, unknown>;
  if (typeof role !== "string" || !CHAT_ROLES.includes(role)) {
    return {
      param: `messages[${i}].role`,
      message: `Invalid messages[${i}].role: ${
        JSON.stringify(role)?.slice(0, 40) ?? String(role)
      }, expected one of ${CHAT_ROLES.join(", ")}`,
    };
  }
  if (typeof content !== "string") {
    return {
      param: `messages[${i}].content`,
      message: `Invalid messages[${i}].content: ${
        JSON.stringify(content)?.slice(0, 40) ?? String(content)
      }, expected a string`,
    };
  }
  return undefined;
}

/** Options of {@link Tokenizer.encode}. */
export interface EncodeOptions {
  /** Let the post-processor add the model's special tokens (e.g. a leading `<s>`); default true. */
  addSpecialTokens?: boolean;
}

/** Options of {@link Tokenizer.decode} and {@link Tokenizer.createStreamDecoder}. */
export interface DecodeOptions {
  /** Drop special tokens (`<s>`, `</s>`, …) from the text; default true. */
  skipSpecialTokens?: boolean;
}

/** Options of {@link Tokenizer.applyChatTemplate}. */
export interface ChatTemplateOptions {
  /** Append the prompt that opens the assistant's turn; default false. */
  addGenerationPrompt?: boolean;
  /** Bounds of the render (time, sizes); default {@link TEMPLATE_LIMITS}. */
  limits?: TemplateLimits;
}

/** An incremental detokenizer: feed generated ids, get back the text they complete. */
export interface StreamDecoder {
  /** Adds ids; returns the newly completed text (never a broken UTF-8 or byte-level sequence). */
  push(ids: number[]): string;
  /** Returns whatever text is still held back (possibly with U+FFFD for incomplete bytes) and resets. */
  flush(): string;
}

/** The special-token names of `tokenizer_config.json` that transformers hands to chat templates. */
const SPECIAL_TOKEN_KEYS = [
  "bos_token",
  "eos_token",
  "unk_token",
  "sep_token",
  "pad_token",
  "cls_token",
  "mask_token",
] as const;

type JsonObject = Record<string, unknown>;

function isObject(value: unknown): value is JsonObject {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

/** `ids` when each is a number: tokenizers.js leaves a token without id (no unk_token) undefined. */
function checkedIds(ids: (number | undefined)[]): number[] {
  for (let i = 0; i < ids.length; i++) {
    if (typeof ids[i] !== "number") {
      throw new TokenizerError(`Cannot encode text: a token has no id and the tokenizer has no unk_token`);
    }
  }
  return ids as number[];
}

/** UTF-8 bytes of `text`, without encoding it. */
export function utf8Length(text: string): number {
  let n = 0;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c < 0x80) n += 1;
    else if (c < 0x800) n += 2;
    else if (c >= 0xd800 && c < 0xdc00 && (text.charCodeAt(i + 1) & 0xfc00) === 0xdc00) {
      n += 4; // a surrogate pair: one code point of four bytes
      i++;
    } else n += 3; // the rest of the BMP, and a lone surrogate (written as U+FFFD)
  }
  return n;
}

function describe(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/** Reads a tokenizer file with its kind's size limit; undefined when it does not exist. */
function readLimited(path: string, limit: number): Promise<string | undefined> {
  return readTextFileLimited(
    path,
    limit,
    (detail, cause) => new TokenizerError(`Cannot read tokenizer file: ${path}: ${detail}`, { cause }),
  );
}

async function readText(path: string, limit: number): Promise<string> {
  const text = await readLimited(path, limit);
  if (text === undefined) throw new TokenizerError(`Missing tokenizer file: ${path}`);
  return text;
}

async function readJsonObject(path: string, limit: number): Promise<JsonObject> {
  const text = await readText(path, limit);
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (err) {
    throw new TokenizerError(`Malformed tokenizer file: ${path}: ${describe(err)}`, { cause: err });
  }
  if (!isObject(value)) {
    throw new TokenizerError(`Malformed tokenizer file: ${path}: expected a JSON object`);
  }
  return value;
}

/** A special token in `tokenizer_config.json`: a string, or a serialised `AddedToken` (`{content, …}`). */
function specialTokenContent(value: unknown): string | undefined {
  if (typeof value === "string") return value;
  if (isObject(value) && typeof value.content === "string") return value.content;
  return undefined;
}

/** Where a chat template came from, for error messages, and its source. */
interface TemplateSource {
  readonly origin: string;
  readonly source: string;
}

/** Picks the chat template: `chat_template.jinja` wins over `tokenizer_config.json`'s `chat_template`. */
function pickChatTemplate(
  jinja: string | undefined,
  jinjaPath: string,
  config: JsonObject,
  configPath: string,
): TemplateSource | undefined {
  if (jinja !== undefined) return { origin: jinjaPath, source: jinja };
  const raw = config.chat_template;
  if (raw === undefined || raw === null) return undefined;
  if (typeof raw === "string") return { origin: configPath, source: raw };
  if (Array.isArray(raw)) {
    const named = new Map<string, string>();
    for (const entry of raw) {
      if (!isObject(entry) || typeof entry.name !== "string" || typeof entry.template !== "string") {
        throw new TokenizerError(
          `Malformed tokenizer file: ${configPath}: chat_template entries must be {name, template} strings`,
        );
      }
      named.set(entry.name, entry.template);
    }
    const template = named.get("default");
    if (template === undefined) {
      throw new TokenizerError(
        `Malformed tokenizer file: ${configPath}: chat_template has no "default" entry among ${
          [...named.keys()].map((n) => JSON.stringify(n)).join(", ") || "none"
        }`,
      );
    }
    return { origin: `${configPath} (chat_template "default")`, source: template };
  }
  throw new TokenizerError(
    `Malformed tokenizer file: ${configPath}: chat_template must be a string or a list of {name, template}`,
  );
}

/**
 * Text of this many characters (UTF-16 units) or more is tokenized on a worker thread by the
 * `…OffThread` methods: about 10 ms of encoding on the event loop at most.
 */
export const OFF_THREAD_CHARS = 16 * 1024;

/** `f()`, its throw a rejection. */
function attempt<T>(f: () => T): Promise<T> {
  try {
    return Promise.resolve(f());
  } catch (e) {
    return Promise.reject(e);
  }
}

/**
 * A loaded tokenizer. Encoding and decoding agree with `transformers`' `AutoTokenizer` for the same folder:
 * `encode(text)` is `tokenizer(text).input_ids`, `decode(ids)` is `tokenizer.decode(ids, skip_special_tokens=True)`.
 */
export class Tokenizer {
  /** Size of the id space including added and special tokens: one more than the largest token id. */
  readonly vocabSize: number;
  /** Id of the beginning-of-sequence token, when the config names one. */
  readonly bosTokenId: number | undefined;
  /** Id of the end-of-sequence token, when the config names one. */
  readonly eosTokenId: number | undefined;

  readonly #hf: HfTokenizer;
  #maxTokenBytes: number | undefined;
  readonly #cleanUpSpaces: boolean;
  /** Special tokens handed to chat templates (`bos_token`, `eos_token`, …). */
  readonly #specialTokens: Record<string, string>;
  readonly #templateSource: TemplateSource | undefined;
  #template: ChatTemplate | undefined;
  /** Keeps special tokens typed into messages from being special (see {@link Tokenizer.encodeChat}). */
  readonly #guard: SpecialTokenGuard;
  /** The folder it was loaded from, and the thread that tokenizes long text (started when first needed). */
  readonly #dir: string;
  #thread: TokenizerThread | undefined;

  private constructor(
    dir: string,
    hf: HfTokenizer,
    config: JsonObject,
    configPath: string,
    templateSource: TemplateSource | undefined,
    guard: SpecialTokenGuard,
  ) {
    this.#dir = dir;
    this.#hf = hf;
    this.#guard = guard;
    this.#templateSource = templateSource;
    // transformers (≥ 4.45) defaults clean_up_tokenization_spaces to false; tokenizers.js defaults it to true.
    this.#cleanUpSpaces = config.clean_up_tokenization_spaces === true;

    let maxId = -1;
    for (const id of hf.get_vocab(true).values()) if (id > maxId) maxId = id;
    this.vocabSize = maxId + 1;

    this.#specialTokens = {};
    for (const key of SPECIAL_TOKEN_KEYS) {
      const content = specialTokenContent(config[key]);
      if (content !== undefined) this.#specialTokens[key] = content;
    }
    const extra = config.additional_special_tokens;
    if (Array.isArray(extra)) {
      const contents = extra.map(specialTokenContent).filter((c): c is string => c !== undefined);
      (this.#specialTokens as Record<string, unknown>).additional_special_tokens = contents;
    }

    this.bosTokenId = this.#specialId(config, "bos_token", configPath);
    this.eosTokenId = this.#specialId(config, "eos_token", configPath);
  }

  /** Resolves `bos_token`/`eos_token` to an id, or falls back to `bos_token_id`/`eos_token_id` in the config. */
  #specialId(config: JsonObject, key: "bos_token" | "eos_token", configPath: string): number | undefined {
    const content = this.#specialTokens[key];
    if (content !== undefined) {
      const id = this.#hf.token_to_id(content);
      if (id === undefined) {
        throw new TokenizerError(
          `Malformed tokenizer file: ${configPath}: ${key} ${
            JSON.stringify(content)
          } is not in the vocabulary`,
        );
      }
      return id;
    }
    const id = config[`${key}_id`];
    if (id === undefined || id === null) return undefined;
    if (typeof id !== "number" || !Number.isInteger(id) || id < 0 || id >= this.vocabSize) {
      throw new TokenizerError(
        `Malformed tokenizer file: ${configPath}: ${key}_id must be a token id below ${this.vocabSize}, got ${
          JSON.stringify(id)
        }`,
      );
    }
    return id;
  }

  /**
   * Loads the tokenizer in `dir`: `tokenizer.json` and `tokenizer_config.json` (both required), and the chat
   * template from `chat_template.jinja` or else `tokenizer_config.json`'s `chat_template` (optional).
   *
   * @throws {TokenizerError} when the folder or a required file is missing, or a file is malformed
   */
  static async load(dir: string): Promise<Tokenizer> {
    try {
      const info = await Deno.stat(dir);
      if (!info.isDirectory) throw new TokenizerError(`Tokenizer path is not a folder: ${dir}`);
    } catch (err) {
      if (err instanceof TokenizerError) throw err;
      if (err instanceof Deno.errors.NotFound) {
        throw new TokenizerError(`Tokenizer folder not found: ${dir}`, { cause: err });
      }
      throw new TokenizerError(`Cannot read tokenizer folder: ${dir}: ${describe(err)}`, { cause: err });
    }

    const tokenizerPath = join(dir, "tokenizer.json");
    const configPath = join(dir, "tokenizer_config.json");
    const jinjaPath = join(dir, "chat_template.jinja");
    const [tokenizerJson, config, jinja] = await Promise.all([
      readJsonObject(tokenizerPath, TEXT_FILE_LIMITS.tokenizer),
      readJsonObject(configPath, TEXT_FILE_LIMITS.tokenizerConfig),
      readLimited(jinjaPath, TEXT_FILE_LIMITS.chatTemplate),
    ]);
    for (const key of ["model", "added_tokens"] as const) {
      if (!(key in tokenizerJson)) {
        throw new TokenizerError(`Malformed tokenizer file: ${tokenizerPath}: no "${key}" field`);
      }
    }

    let hf: HfTokenizer;
    // tokenizers.js wants every pipeline stage present; absent stages in tokenizer.json mean "none".
    const complete = {
      normalizer: null,
      pre_tokenizer: null,
      post_processor: null,
      decoder: null,
      ...tokenizerJson,
    };
    try {
      hf = new HfTokenizer(complete, config);
    } catch (err) {
      throw new TokenizerError(`Malformed tokenizer file: ${tokenizerPath}: ${describe(err)}`, {
        cause: err,
      });
    }
    const templateSource = pickChatTemplate(jinja, jinjaPath, config, configPath);
    return new Tokenizer(
      dir,
      hf,
      config,
      configPath,
      templateSource,
      new SpecialTokenGuard(complete, config),
    );
  }

  /**
   * The longest token of the vocabulary in UTF-8 bytes of its vocabulary form (`Ġadministrative`: 16).
   * That form is never shorter than the text the token stands for (a byte-level character or `▁` for
   * one byte, `<0x41>` for one byte), so text of `n` bytes needs at least `n / maxTokenBytes` tokens,
   * unless a normalizer shrinks it or an unknown token stands for a run of characters.
   */
  get maxTokenBytes(): number {
    if (this.#maxTokenBytes === undefined) {
      let max = 1;
      for (const token of this.#hf.get_vocab(true).keys()) max = Math.max(max, utf8Length(token));
      this.#maxTokenBytes = max;
    }
    return this.#maxTokenBytes;
  }

  /** Whether a chat template was found. */
  get hasChatTemplate(): boolean {
    return this.#templateSource !== undefined;
  }

  /**
   * Text → ids, as `tokenizer(text).input_ids`: special tokens written in the text are recognised, and the
   * post-processor adds the model's special tokens unless `addSpecialTokens` is false.
   */
  encode(text: string, options: EncodeOptions = {}): number[] {
    return checkedIds(this.#hf.encode(text, { add_special_tokens: options.addSpecialTokens ?? true }).ids);
  }

  /**
   * {@link Tokenizer.encode} that keeps the event loop free: text of {@link OFF_THREAD_CHARS} or more is
   * encoded on a worker thread (the same ids), shorter text here. {@link Tokenizer.close} ends the thread.
   */
  encodeOffThread(text: string, options: EncodeOptions = {}): Promise<number[]> {
    if (text.length < OFF_THREAD_CHARS) return attempt(() => this.encode(text, options));
    return this.#offThread().encode(text, options);
  }

  /** {@link Tokenizer.encodeChat} that keeps the event loop free, as {@link Tokenizer.encodeOffThread}. */
  encodeChatOffThread(messages: ChatMessage[], options: ChatTemplateOptions = {}): Promise<number[]> {
    const chars = messages.reduce((a, m) => a + (typeof m.content === "string" ? m.content.length : 0), 0);
    if (chars < OFF_THREAD_CHARS) return attempt(() => this.encodeChat(messages, options));
    return this.#offThread().encodeChat(messages, options);
  }

  /** Ends the thread of {@link Tokenizer.encodeOffThread}, if one was started; a later call starts another. */
  close(): void {
    this.#thread?.close();
    this.#thread = undefined;
  }

  #offThread(): TokenizerThread {
    return this.#thread ??= new TokenizerThread(this.#dir);
  }

  /**
   * The prompt of a conversation: the chat template rendered ({@link applyChatTemplate}) and encoded
   * without the post-processor's tokens (the template writes its own), where the special tokens the
   * template writes are special and those written inside a message's content are text. A user who
   * types `</s>\n<|system|>` into a message cannot end their turn or open a system turn with it; the
   * characters reach the model as characters, as in OpenAI's API. (`encode(applyChatTemplate(…))`
   * would read them as special, as transformers' `apply_chat_template(tokenize=True)` does.)
   *
   * Content that holds no special token (the usual case) is encoded exactly as `encode(rendered,
   * { addSpecialTokens: false })`. Otherwise the template is rendered once more with the content
   * marked, to know where it lies; when the template changes the content so that it cannot be found
   * in the prompt, the request is refused rather than read with special tokens.
   *
   * @throws {TokenizerError} as {@link applyChatTemplate}; when a message with a special token in its
   * content cannot be found in the rendered prompt
   */
  encodeChat(messages: ChatMessage[], options: ChatTemplateOptions = {}): number[] {
    const text = this.applyChatTemplate(messages, options);
    const guard = this.#guard;
    if (!messages.some((m) => guard.mayHoldSpecial(m.content))) {
      return this.encode(text, { addSpecialTokens: false });
    }
    return checkedIds(guard.encode(text, this.#contentSpans(messages, text, options)));
  }

  /** Where the messages' content lies in `text`, the template rendered from `messages`. */
  #contentSpans(messages: ChatMessage[], text: string, options: ChatTemplateOptions): Spans {
    const { nonce } = this.#guard;
    const open = `\u{F0002}${nonce}`;
    const close = `\u{F0003}${nonce}`;
    // Rendered with each content between markers: when the markers come out well nested and the
    // text without them is the prompt, they tell the spans exactly.
    const marked = this.applyChatTemplate(
      messages.map((m) => ({ ...m, content: open + m.content + close })),
      options,
    );
    const spans: [number, number][] = [];
    let stripped = "";
    let start = -1;
    let faithful = true;
    for (let i = 0; i < marked.length;) {
      const o = marked.indexOf(open, i);
      const c = marked.indexOf(close, i);
      const next = o < 0 ? c : c < 0 ? o : Math.min(o, c);
      if (next < 0) {
        stripped += marked.slice(i);
        break;
      }
      stripped += marked.slice(i, next);
      if (next === o) {
        faithful &&= start < 0;
        start = stripped.length;
      } else {
        faithful &&= start >= 0;
        spans.push([start, stripped.length]);
        start = -1;
      }
      i = next + open.length; // open and close have one length
    }
    if (faithful && start < 0 && stripped === text) return spans;
    // The template changed the content (trimmed it, cut it): find each content that matters, in order.
    const found: [number, number][] = [];
    let at = 0;
    for (const [i, m] of messages.entries()) {
      if (!this.#guard.mayHoldSpecial(m.content)) continue;
      const content = [m.content, m.content.trim()].find((c) => c !== "" && text.includes(c, at));
      if (content === undefined) {
        throw new TokenizerError(
          `Cannot encode messages[${i}]: its content holds a special token, and the chat template changes the content so that it cannot be found in the prompt to be kept as text; remove the special token`,
        );
      }
      const s = text.indexOf(content, at);
      found.push([s, s + content.length]);
      at = s + content.length;
    }
    return found;
  }

  /**
   * Ids → text, as `tokenizer.decode(ids, skip_special_tokens=…)`. Ids outside the vocabulary (e.g. from a
   * padded embedding) are dropped, as the Rust tokenizers library does.
   */
  decode(ids: ArrayLike<number>, options: DecodeOptions = {}): string {
    const known: number[] = [];
    for (let i = 0; i < ids.length; i++) {
      const id = ids[i]!;
      if (Number.isInteger(id) && id >= 0 && this.#hf.id_to_token(id) !== undefined) known.push(id);
    }
    if (known.length === 0) return ""; // tokenizers.js refuses an empty list
    return this.#hf.decode(known, {
      skip_special_tokens: options.skipSpecialTokens ?? true,
      clean_up_tokenization_spaces: this.#cleanUpSpaces,
    });
  }

  /** The token string of `id` (byte-level form, e.g. `Ġthe`), or undefined when out of range. */
  idToToken(id: number): string | undefined {
    if (!Number.isInteger(id) || id < 0) return undefined;
    return this.#hf.id_to_token(id);
  }

  /** The id of a token string (byte-level form), or undefined when not in the vocabulary. */
  tokenToId(token: string): number | undefined {
    return this.#hf.token_to_id(token);
  }

  /**
   * Renders the chat template as transformers does: with `messages`, `add_generation_prompt` and the special
   * tokens of `tokenizer_config.json` (`bos_token`, `eos_token`, …).
   *
   * The render is bounded in time and size ({@link TEMPLATE_LIMITS}): a template from an untrusted
   * checkpoint cannot hang or exhaust memory.
   *
   * @throws {TokenizerError} when there is no chat template, or it fails to parse or render, or stops at a limit
   */
  applyChatTemplate(messages: ChatMessage[], options: ChatTemplateOptions = {}): string {
    const source = this.#templateSource;
    if (source === undefined) {
      throw new TokenizerError(
        "No chat template: expected chat_template.jinja or a chat_template in tokenizer_config.json",
      );
    }
    if (this.#template === undefined) {
      try {
        this.#template = new ChatTemplate(source.source);
      } catch (err) {
        throw new TokenizerError(`Malformed chat template: ${source.origin}: ${describe(err)}`, {
          cause: err,
        });
      }
    }
    try {
      return this.#template.render({
        ...this.#specialTokens,
        messages: messages.map((m) => ({ ...m })),
        add_generation_prompt: options.addGenerationPrompt ?? false,
      }, options.limits);
    } catch (err) {
      if (err instanceof TemplateLimitError) {
        throw new TokenizerError(`Chat template stopped: ${source.origin}: ${err.message}`, { cause: err });
      }
      throw new TokenizerError(`Chat template failed to render: ${source.origin}: ${describe(err)}`, {
        cause: err,
      });
    }
  }

  /**
   * An incremental detokenizer for streaming generation. Each `push` decodes the new ids together with a few
   * ids of context and returns only the text past that context, holding text back while it ends in an
   * incomplete UTF-8 sequence (U+FFFD); concatenating every `push` and the final `flush` gives
   * `decode(allIds, options)`.
   */
  createStreamDecoder(options: DecodeOptions = {}): StreamDecoder {
    const decodeOptions: DecodeOptions = { skipSpecialTokens: options.skipSpecialTokens ?? true };
    let ids: number[] = [];
    // ids[prefixOffset, readOffset) is context already emitted; ids[readOffset, …) is not yet emitted.
    let prefixOffset = 0;
    let readOffset = 0;

    const pending = (): { text: string; complete: boolean } => {
      const prefix = this.decode(ids.slice(prefixOffset, readOffset), decodeOptions);
      const full = this.decode(ids.slice(prefixOffset), decodeOptions);
      return {
        text: full.slice(prefix.length),
        complete: full.length > prefix.length && !full.endsWith("\uFFFD"),
      };
    };

    return {
      push: (newIds: number[]): string => {
        let out = "";
        for (const id of newIds) {
          ids.push(id);
          const { text, complete } = pending();
          if (!complete) continue;
          out += text;
          prefixOffset = readOffset;
          readOffset = ids.length;
          if (prefixOffset > 0) { // keep only the context that later decodes need
            ids = ids.slice(prefixOffset);
            readOffset -= prefixOffset;
            prefixOffset = 0;
          }
        }
        return out;
      },
      flush: (): string => {
        const { text } = pending();
        ids = [];
        prefixOffset = 0;
        readOffset = 0;
        return text;
      },
    };
  }
}
