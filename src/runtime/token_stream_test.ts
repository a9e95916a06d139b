/**
 * A generation's output without a GPU: tokens read back in batches become chunks — text, end of
 * sequence after `minTokens`, stop strings held back and cut, the length limit, NaN logits, an abort —
 * and the last chunk's usage.
 */
import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";
import { NonFiniteError } from "../errors.ts";
import { NON_FINITE_TOKEN } from "../kernels/sample.ts";
import { Tokenizer } from "../text/tokenizer.ts";
import { READ_SIZES, TokenStream } from "./token_stream.ts";
import type { GenerateChunk, GenerateUsage } from "./types.ts";

const MODEL = fileURLToPath(new URL("../../models/sotu-moe-mini", import.meta.url));
const tokenizer = await Tokenizer.load(MODEL);
const EOS = 2;
/** The prompt length and queue wait the runs report in their usage. */
const PROMPT_TOKENS = 7;
const QUEUE_MS = 50;

/** Tokens that decode to plain words, none of them end of sequence. */
const words = tokenizer.encode(" the people of the United States and the Congress of the Union", {
  addSpecialTokens: false,
});
const script = (n: number) => Array.from({ length: n }, (_, i) => words[i % words.length]!);

/**
 * Feeds `tokens` to a stream in batches of 1, 2, 4, 8, 16, 16, … (as the scheduler reads them back), a
 * few milliseconds apart, until it finishes; `abortAfter` aborts from that batch on.
 */
async function run(
  tokens: number[],
  o: { maxTokens?: number; minTokens?: number; stop?: string[]; abortAfter?: number } = {},
): Promise<GenerateChunk[]> {
  const out = new TokenStream({
    tokenizer,
    eos: new Set([EOS]),
    minTokens: o.minTokens ?? 0,
    stop: o.stop ?? [],
    maxTokens: o.maxTokens ?? tokens.length,
    promptTokens: PROMPT_TOKENS,
  });
  // it asked QUEUE_MS before it got its slot, which it got just now
  out.startedAt = performance.now();
  out.askedAt = out.startedAt - QUEUE_MS;
  const chunks: GenerateChunk[] = [];
  let at = 0;
  for (let b = 0; !out.finish; b++) {
    const n = READ_SIZES[Math.min(b, READ_SIZES.length - 1)]!;
    await new Promise((r) => setTimeout(r, 2));
    const batch = tokens.slice(at, at + n);
    if (batch.length === 0) {
      chunks.push(out.abort());
      break;
    }
    at += n;
    chunks.push(
      out.push(batch, Math.max(performance.now(), out.startedAt + 1), b >= (o.abortAfter ?? Infinity)),
    );
  }
  return chunks;
}

/** The last chunk's usage, checked for what every run shares: only the last chunk has one, times in order. */
function usageOf(chunks: GenerateChunk[]): GenerateUsage {
  assert.deepEqual(chunks.map((c) => c.usage !== undefined), chunks.map((c) => c.finishReason !== undefined));
  const u = chunks.at(-1)!.usage!;
  assert.equal(u.promptTokens, PROMPT_TOKENS);
  assert.equal(u.completionTokens, chunks.reduce((n, c) => n + c.ids.length, 0), "the tokens handed out");
  assert.equal(u.totalTokens, PROMPT_TOKENS + u.completionTokens);
  assert.ok(Math.abs(u.queueSeconds - QUEUE_MS / 1000) < 1e-6, `queueSeconds ${u.queueSeconds}`);
  for (const [k, v] of Object.entries(u)) assert.ok(Number.isFinite(v) && v >= 0, `${k}: ${v}`);
  assert.ok(u.totalSeconds >= u.timeToFirstTokenSeconds);
  return u;
}

Deno.test("token stream: a chunk per batch read, every token once, in order, the text decoded", async () => {
  assert.deepEqual(READ_SIZES, [1, 2, 4, 8, 16]);
  const chunks = await run(script(40));
  assert.deepEqual(chunks.map((c) => c.ids.length), [1, 2, 4, 8, 16, 9]);
  assert.deepEqual(chunks.flatMap((c) => c.ids), script(40));
  assert.equal(chunks.at(-1)!.finishReason, "length");
  assert.equal(chunks.filter((c) => c.finishReason).length, 1, "only the last chunk finishes");
  assert.equal(chunks.map((c) => c.text).join(""), tokenizer.decode(script(40)));
});

Deno.test("token stream: the last chunk carries the usage: tokens handed out, time to first token, rates", async () => {
  const u = usageOf(await run(script(40)));
  assert.equal(u.completionTokens, 40);
  assert.ok(u.timeToFirstTokenSeconds > u.queueSeconds, "the first token comes after the wait");
  assert.ok(u.prefillTokensPerSecond > 0);
  assert.ok(u.decodeTokensPerSecond > 0);
  // the rates are the counts over the times they name
  const firstAfterStart = u.timeToFirstTokenSeconds - u.queueSeconds;
  assert.ok(Math.abs(u.prefillTokensPerSecond * firstAfterStart - PROMPT_TOKENS) < 1e-6);
  assert.ok(39 / u.decodeTokensPerSecond <= u.totalSeconds - u.timeToFirstTokenSeconds + 1e-9);
  // one token: nothing after the first to time
  const one = usageOf(await run(script(1)));
  assert.equal(one.completionTokens, 1);
  assert.equal(one.decodeTokensPerSecond, 0);
  assert.ok(one.timeToFirstTokenSeconds > 0);
});

Deno.test("token stream: end of sequence stops it and is not a completion token; ignored before minTokens", async () => {
  const s = script(20);
  s[5] = EOS;
  const eos = await run(s);
  assert.deepEqual(eos.flatMap((c) => c.ids), s.slice(0, 5));
  assert.equal(eos.at(-1)!.finishReason, "stop");
  assert.equal(usageOf(eos).completionTokens, 5);

  const t = script(12);
  t[1] = EOS;
  t[6] = EOS;
  const late = await run(t, { minTokens: 4 });
  assert.deepEqual(late.flatMap((c) => c.ids), [t[0], EOS, ...t.slice(2, 6)]);
  assert.equal(late.at(-1)!.finishReason, "stop");
});

Deno.test("token stream: a stop string ends the text before it; nothing streamed is taken back", async () => {
  const full = tokenizer.decode(script(30));
  const stop = " Congress";
  const chunks = await run(script(30), { stop: [stop] });
  const text = chunks.map((c) => c.text).join("");
  assert.equal(text, full.slice(0, full.indexOf(stop)));
  assert.equal(chunks.at(-1)!.finishReason, "stop");
  // the ids run to the token that completed the stop string, counted once
  const ids = chunks.flatMap((c) => c.ids);
  assert.ok(tokenizer.decode(ids).includes(stop));
  assert.ok(!tokenizer.decode(ids.slice(0, -1)).includes(stop));
  assert.equal(usageOf(chunks).completionTokens, ids.length);
  // what was streamed is never retracted: every chunk extends a prefix of the final text
  let sofar = "";
  for (const c of chunks) {
    sofar += c.text;
    assert.ok(text.startsWith(sofar) && !sofar.includes(stop));
  }
});

Deno.test("token stream: an abort ends it with finishReason abort, after the tokens read", async () => {
  const chunks = await run(script(64), { abortAfter: 2 });
  assert.equal(chunks.at(-1)!.finishReason, "abort");
  assert.equal(usageOf(chunks).completionTokens, 1 + 2 + 4);
  // aborted before anything was read: one empty chunk
  const none = await run([], {});
  assert.deepEqual(none.map((c) => [c.ids, c.finishReason]), [[[], "abort"]]);
});

Deno.test("token stream: a token the sampler flagged (NaN logits) is a NonFiniteError naming its index", () => {
  const out = new TokenStream({
    tokenizer,
    eos: new Set(),
    minTokens: 0,
    stop: [],
    maxTokens: 8,
    promptTokens: 1,
  });
  out.push(script(3), performance.now());
  assert.throws(() => out.push([words[0]!, NON_FINITE_TOKEN], performance.now()), NonFiniteError);
  assert.throws(
    () =>
      new TokenStream({ tokenizer, eos: new Set(), minTokens: 0, stop: [], maxTokens: 8, promptTokens: 1 })
        .push([NON_FINITE_TOKEN], performance.now()),
    /for generated token 0/,
  );
});
