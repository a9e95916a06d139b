/**
 * Tokenizing off the event loop. Encoding runs at about 0.6–0.7 ms per KiB of text on this project's
 * CPU machine, and while it runs nothing else does: a server decoding for other clients stops sending
 * them tokens until a long prompt is tokenized. A {@link TokenizerThread} runs the same tokenizer (the
 * same code on the same folder's files, so the same ids) on a worker thread.
 *
 * @module
 */
import { OptionError, TokenizerError } from "../errors.ts";
import type { ChatMessage, ChatTemplateOptions, EncodeOptions } from "./tokenizer.ts";
import type { TokenizerAnswer, TokenizerJob } from "./tokenizer_worker.ts";

/** Errors the worker may report, rebuilt by name (any other is a TokenizerError). */
const ERRORS: Record<string, new (message: string) => Error> = { OptionError, TokenizerError };

/** One tokenizer on a worker thread; {@link TokenizerThread.close} ends the thread. */
export class TokenizerThread {
  readonly #worker: Worker;
  readonly #pending = new Map<number, { resolve: (ids: number[]) => void; reject: (e: Error) => void }>();
  #next = 0;
  #failed: Error | undefined;

  /** A thread with the tokenizer of `dir` (loaded there; a load error comes with the first request). */
  constructor(dir: string) {
    this.#worker = new Worker(new URL("./tokenizer_worker.ts", import.meta.url), { type: "module" });
    this.#worker.onmessage = (ev: MessageEvent<TokenizerAnswer>) => {
      const a = ev.data;
      const p = this.#pending.get(a.id);
      if (!p) return;
      this.#pending.delete(a.id);
      if ("ids" in a) p.resolve(Array.from(a.ids));
      else p.reject(new (ERRORS[a.error.name] ?? TokenizerError)(a.error.message));
    };
    this.#worker.onerror = (ev) => {
      ev.preventDefault();
      this.#fail(new TokenizerError(`The tokenizer thread failed: ${ev.message}`));
    };
    this.#post({ type: "load", dir });
  }

  /** {@link Tokenizer.encode} of `text`, on the thread. */
  encode(text: string, options: EncodeOptions = {}): Promise<number[]> {
    return this.#ask((id) => ({ type: "encode", id, text, options }));
  }

  /** {@link Tokenizer.encodeChat} of `messages`, on the thread. */
  encodeChat(messages: ChatMessage[], options: ChatTemplateOptions = {}): Promise<number[]> {
    return this.#ask((id) => ({ type: "encodeChat", id, messages, options }));
  }

  /** Ends the thread; requests not answered yet fail. */
  close(): void {
    this.#worker.terminate();
    this.#fail(new TokenizerError("The tokenizer thread was closed"));
  }

  #ask(job: (id: number) => TokenizerJob): Promise<number[]> {
    if (this.#failed) return Promise.reject(this.#failed);
    const id = this.#next++;
    return new Promise((resolve, reject) => {
      this.#pending.set(id, { resolve, reject });
      this.#post(job(id));
    });
  }

  #post(job: TokenizerJob): void {
    this.#worker.postMessage(job);
  }

  #fail(e: Error): void {
    this.#failed ??= e;
    for (const p of this.#pending.values()) p.reject(e);
    this.#pending.clear();
  }
}
