/**
 * The decode loop on a real WebGPU device (lavapipe in CI), with a stand-in for the model: each step
 * writes a scripted token where the sampler would, so the batching of readbacks, the stop rules and
 * the statistics hand-off can be checked exactly.
 */
import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";
import { createGpu } from "../gpu/device.ts";
import { Tokenizer } from "../text/tokenizer.ts";
import { decodeLoop, READ_SIZES } from "./decode_loop.ts";
import type { GenerateChunk, GenerateUsage } from "./types.ts";

const MODEL = fileURLToPath(new URL("../../models/sotu-moe-mini", import.meta.url));
const tokenizer = await Tokenizer.load(MODEL);
const EOS = 2;
/** The prompt length and queue wait the runs report in their usage. */
const PROMPT_TOKENS = 7;
const QUEUE_MS = 50;

/** Runs the loop over `script` (token g is script[g]); returns the chunks, the steps run and the batches read. */
async function run(
  script: number[],
  o: { maxTokens?: number; minTokens?: number; stop?: string[]; abortAfter?: number } = {},
): Promise<{ chunks: GenerateChunk[]; steps: number[]; batches: [number, number][]; decoded: number }> {
  const gpu = await createGpu();
  const device = gpu.device;
  try {
    const maxTokens = o.maxTokens ?? script.length;
    const generated = device.createBuffer({
      size: 4 * maxTokens,
      usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST,
    });
    const statsAt = 8 * Math.ceil(maxTokens / 2); // mapped ranges start at multiples of 8
    const staging = [0, 1].map(() =>
      device.createBuffer({ size: statsAt + 16, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST })
    );
    const stats = device.createBuffer({
      size: 16,
      usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST,
    });
    const steps: number[] = [];
    const batches: [number, number][] = [];
    let decoded = 0;
    const abort = new AbortController();
    const chunks: GenerateChunk[] = [];
    const startedAt = performance.now();
    for await (
      const c of decodeLoop({
        device,
        tokenizer,
        eos: new Set([EOS]),
        minTokens: o.minTokens ?? 0,
        stop: o.stop ?? [],
        signal: abort.signal,
        maxTokens,
        generated,
        staging,
        statsAt,
        step: (g) => {
          steps.push(g);
          // the "sampler": token g, and one statistic per step so each batch's count can be checked
          device.queue.writeBuffer(generated, 4 * g, Uint32Array.of(script[g] ?? 0));
          device.queue.writeBuffer(stats, 0, Float32Array.of(g + 1));
          if (o.abortAfter !== undefined && g === o.abortAfter) abort.abort();
          return Promise.resolve();
        },
        copyStats: (enc, into, offset) => enc.copyBufferToBuffer(stats, 0, into, offset, 16),
        onBatch: (into, offset, start, n) => {
          const last = new Float32Array(into.getMappedRange(offset, 16))[0];
          assert.equal(last, start + n, "the statistics copied with a batch are those of its last step");
          batches.push([start, n]);
        },
        onDecoded: (tokens) => (decoded = tokens),
        request: { promptTokens: PROMPT_TOKENS, askedAt: startedAt - QUEUE_MS, startedAt },
      })
    ) chunks.push(c);
    return { chunks, steps, batches, decoded };
  } finally {
    device.destroy();
  }
}

/** Tokens that decode to plain words, none of them end of sequence. */
const words = tokenizer.encode(" the people of the United States and the Congress of the Union", {
  addSpecialTokens: false,
});
const script = (n: number) => Array.from({ length: n }, (_, i) => words[i % words.length]!);

Deno.test("decode loop: readbacks in batches of 1, 2, 4, 8, 16, 16, …; every step once, in order", async () => {
  assert.deepEqual(READ_SIZES, [1, 2, 4, 8, 16]);
  const r = await run(script(40));
  assert.deepEqual(r.batches, [[0, 1], [1, 2], [3, 4], [7, 8], [15, 16], [31, 9]]);
  assert.deepEqual(r.steps, Array.from({ length: 40 }, (_, g) => g));
  assert.deepEqual(r.chunks.map((c) => c.ids.length), [1, 2, 4, 8, 16, 9]);
  assert.deepEqual(r.chunks.flatMap((c) => c.ids), script(40));
  assert.equal(r.chunks.at(-1)!.finishReason, "length");
  assert.equal(r.chunks.filter((c) => c.finishReason).length, 1, "only the last chunk finishes");
  assert.equal(r.chunks.map((c) => c.text).join(""), tokenizer.decode(script(40)));
  assert.equal(r.decoded, 39, "tokens after the first batch");
});

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

Deno.test("decode loop: the last chunk carries the usage: tokens handed out, time to first token, rates", async () => {
  const r = await run(script(40));
  const u = usageOf(r.chunks);
  assert.equal(u.completionTokens, 40);
  assert.ok(u.timeToFirstTokenSeconds > u.queueSeconds, "the first token comes after the wait");
  assert.ok(u.prefillTokensPerSecond > 0);
  assert.ok(u.decodeTokensPerSecond > 0);
  // the rates are the counts over the times they name
  const firstAfterStart = u.timeToFirstTokenSeconds - u.queueSeconds;
  assert.ok(Math.abs(u.prefillTokensPerSecond * firstAfterStart - PROMPT_TOKENS) < 1e-6);
  assert.ok(39 / u.decodeTokensPerSecond <= u.totalSeconds - u.timeToFirstTokenSeconds + 1e-9);

  // one token: nothing after the first to time
  const one = usageOf((await run(script(1))).chunks);
  assert.equal(one.completionTokens, 1);
  assert.equal(one.decodeTokensPerSecond, 0);
  assert.ok(one.timeToFirstTokenSeconds > 0);
});

Deno.test("decode loop: end of sequence is not a completion token; a stop string's last token is, once", async () => {
  const s = script(20);
  s[5] = EOS;
  const eos = await run(s);
  assert.equal(usageOf(eos.chunks).completionTokens, 5);
  assert.equal(eos.decoded, 5, "tokens 1 … 5 were read after the first, the end of sequence among them");

  const full = tokenizer.decode(script(30));
  const stop = " Congress";
  const hit = await run(script(30), { stop: [stop] });
  const ids = hit.chunks.flatMap((c) => c.ids);
  // the ids run to the token that completed the stop string
  assert.ok(tokenizer.decode(ids).includes(stop));
  assert.ok(!tokenizer.decode(ids.slice(0, -1)).includes(stop));
  assert.equal(usageOf(hit.chunks).completionTokens, ids.length);
  assert.equal(hit.decoded, ids.length - 1, "tokens after the first, the stop string's last counted once");
  assert.ok(full.includes(stop));
});

Deno.test("decode loop: end of sequence stops the stream; steps computed ahead are dropped", async () => {
  const s = script(20);
  s[5] = EOS;
  const r = await run(s);
  assert.deepEqual(r.chunks.flatMap((c) => c.ids), s.slice(0, 5));
  assert.equal(r.chunks.at(-1)!.finishReason, "stop");
  // the batch after the one holding EOS was already encoded (double buffering), no later one
  assert.ok(r.steps.length <= 15, `ran ${r.steps.length} steps`);
});

Deno.test("decode loop: end of sequence is ignored before minTokens", async () => {
  const s = script(12);
  s[1] = EOS;
  s[6] = EOS;
  const r = await run(s, { minTokens: 4 });
  assert.deepEqual(r.chunks.flatMap((c) => c.ids), s.slice(0, 6));
  assert.equal(r.chunks.at(-1)!.finishReason, "stop");
});

Deno.test("decode loop: a stop string ends the text before it; nothing streamed is taken back", async () => {
  const full = tokenizer.decode(script(30));
  const stop = " Congress";
  const r = await run(script(30), { stop: [stop] });
  const text = r.chunks.map((c) => c.text).join("");
  assert.equal(text, full.slice(0, full.indexOf(stop)));
  assert.equal(r.chunks.at(-1)!.finishReason, "stop");
  // what was streamed is never retracted: every chunk extends a prefix of the final text
  let sofar = "";
  for (const c of r.chunks) {
    sofar += c.text;
    assert.ok(text.startsWith(sofar) && !sofar.includes(stop));
  }
});

Deno.test("decode loop: an abort stops encoding steps and ends with finishReason abort", async () => {
  const r = await run(script(64), { abortAfter: 4 });
  assert.equal(r.chunks.at(-1)!.finishReason, "abort");
  assert.ok(r.steps.length <= 8, `ran ${r.steps.length} steps after an abort at step 4`);
  assert.ok(usageOf(r.chunks).completionTokens <= 8);
});
