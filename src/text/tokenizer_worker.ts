/**
 * A worker that tokenizes for src/text/tokenizer_thread.ts: it loads the tokenizer of one folder, then
 * answers each request with the ids that {@link Tokenizer.encode} or {@link Tokenizer.encodeChat} give
 * (the same code on the same files: the same ids), or with the error they throw.
 *
 * @module
 */
import { type ChatMessage, type ChatTemplateOptions, type EncodeOptions, Tokenizer } from "./tokenizer.ts";

/** What the worker is asked: first the folder, then requests. */
export type TokenizerJob =
  | { type: "load"; dir: string }
  | { type: "encode"; id: number; text: string; options: EncodeOptions }
  | { type: "encodeChat"; id: number; messages: ChatMessage[]; options: ChatTemplateOptions };

/** What the worker answers a request: its ids, or the error (by name and message). */
export type TokenizerAnswer =
  | { id: number; ids: Uint32Array<ArrayBuffer> }
  | { id: number; error: { name: string; message: string } };

const scope = self as unknown as {
  onmessage: ((ev: MessageEvent<TokenizerJob>) => void) | null;
  postMessage(message: TokenizerAnswer, transfer?: Transferable[]): void;
};

let tokenizer: Promise<Tokenizer> | undefined;

scope.onmessage = async (ev) => {
  const job = ev.data;
  if (job.type === "load") {
    tokenizer = Tokenizer.load(job.dir);
    tokenizer.catch(() => {}); // told to each request below
    return;
  }
  try {
    const t = await tokenizer!;
    const ids = Uint32Array.from(
      job.type === "encode" ? t.encode(job.text, job.options) : t.encodeChat(job.messages, job.options),
    );
    scope.postMessage({ id: job.id, ids }, [ids.buffer]);
  } catch (e) {
    const error = e instanceof Error ? e : new Error(String(e));
    scope.postMessage({ id: job.id, error: { name: error.name, message: error.message } });
  }
};
