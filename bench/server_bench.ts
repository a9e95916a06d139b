/**
 * Serving many users at once (issue 14): starts the engine and the OpenAI-compatible server in-process
 * on loopback, then for each concurrency level runs that many streaming clients at once, each sending
 * `--rounds` text completions one after another. Prints a Markdown table; `--out` writes JSON.
 *
 *   deno run -A bench/server_bench.ts [--model DIR] [--policy full] [--budget 8GiB] [--precision int4] [--parallel 16] \
 *     [--levels 1,4,8,16] [--tokens 128] [--prompt 32] [--rounds 1] [--context 512] [--direct] \
 *     [--out results.json]
 *
 * The engine decodes up to `--parallel` streams together (`maxBatchSequences`; default: the most
 * level). Each request is `--prompt` token ids (different for every stream and round) and generates
 * exactly `--tokens` tokens, greedy (`min_tokens` holds end-of-sequence off). Clients are plain `fetch`
 * with server-sent events parsed here: the GPU machine has no npm registry for OpenAI's client, and
 * the wire format is the same.
 *
 * Per request, from the client's side: time to first token (send → first generated text, queue wait
 * included) and, for each later token, its inter-token latency: the gap since the previous event over
 * the tokens the event brought (the engine reads tokens back in batches of up to 16, so an event
 * carries several). Per level: aggregate throughput (every completion token over the level's wall
 * time), aggregate decode throughput (tokens after each stream's first, over the time from the first
 * stream's first token to the last stream's last), time to first token p50 / p99 / max, inter-token
 * p50 / p99, the largest gap between two events. `--direct` adds a first row of the same single
 * request straight to `engine.generate`, no HTTP.
 *
 * Counting tokens in the text: an event's text does not say how many tokens it holds, and a model
 * whose vocabulary is larger than its tokenizer's (bench/synth.ts writes the bundled 4,096-token
 * tokenizer beside a 50,304-row OLMoE head) decodes most sampled ids to nothing. So the bench serves a
 * shadow of the model folder (its files linked, in a temporary folder) with a tokenizer in which every
 * id but the special ones decodes to ` t<id>`: each event's tokens are counted, and the engine's work
 * is the same.
 *
 * @module
 */
import { parseArgs } from "node:util";
import { basename, join, resolve } from "node:path";
import { createEngine, type Engine, formatBytes, type PolicyName } from "../mod.ts";
import { createServer } from "../src/server/server.ts";

/** One streamed request, seen from the client. */
interface RequestTiming {
  ttftMs: number;
  /** One per token after the first event's: ms since the previous event, over that event's tokens. */
  itlMs: number[];
  maxGapMs: number;
  /** When (`performance.now()`) its first and last tokens arrived. */
  first: number;
  last: number;
  /** Tokens in the first event. */
  firstTokens: number;
  tokens: number;
}

/** One concurrency level. */
export interface LevelRecord {
  /** `engine` (`engine.generate` in-process) or `http` (streamed through the server). */
  setup: "engine" | "http";
  clients: number;
  requests: number;
  tokens: number;
  wallSeconds: number;
  /** All completion tokens over the wall time. */
  tokensPerSecond: number;
  /** Tokens after each stream's first event, from the earliest first token to the latest last token. */
  decodeTokensPerSecond: number;
  ttftMs: { p50: number; p99: number; max: number };
  itlMs: { p50: number; p99: number; mean: number };
  maxGapMs: number;
}

function quantile(xs: number[], q: number): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil(q * s.length) - 1))] ?? NaN;
}

/** Tokens in a piece of text from the counting tokenizer: one ` t<id>` each. */
function countTokens(text: string): number {
  return text.match(/ t\d+/g)?.length ?? 0;
}

/** Prompt ids for stream `s`, round `r`: `n` ids spread over the vocabulary, none of them special. */
function promptIds(n: number, vocab: number, s: number, r: number): number[] {
  let x = (s * 7919 + r * 104729 + 1) >>> 0;
  return Array.from({ length: n }, () => {
    x = (x * 1664525 + 1013904223) >>> 0;
    return 16 + (x % (vocab - 16));
  });
}

/** Timing of a request from the times and token counts of its events; `tokens` from its usage. */
function timing(t0: number, events: { at: number; n: number }[], tokens: number): RequestTiming {
  const first = events[0];
  if (!first) throw new Error("No token came back");
  const itl: number[] = [];
  let maxGap = 0;
  for (let i = 1; i < events.length; i++) {
    const gap = events[i]!.at - events[i - 1]!.at;
    maxGap = Math.max(maxGap, gap);
    for (let k = 0; k < events[i]!.n; k++) itl.push(gap / events[i]!.n);
  }
  return {
    ttftMs: first.at - t0,
    itlMs: itl,
    maxGapMs: maxGap,
    first: first.at,
    last: events.at(-1)!.at,
    firstTokens: first.n,
    tokens,
  };
}

async function streamOnce(base: string, ids: number[], tokens: number): Promise<RequestTiming> {
  const t0 = performance.now();
  const res = await fetch(`${base}/v1/completions`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({
      prompt: ids,
      max_tokens: tokens,
      min_tokens: tokens,
      temperature: 0,
      stream: true,
      stream_options: { include_usage: true },
    }),
  });
  if (res.status !== 200) throw new Error(`HTTP ${res.status}: ${await res.text()}`);
  const reader = res.body!.pipeThrough(new TextDecoderStream()).getReader();
  const events: { at: number; n: number }[] = [];
  let buf = "";
  let generated = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    buf += value;
    let i;
    while ((i = buf.indexOf("\n\n")) >= 0) {
      const data = buf.slice(0, i).replace(/^data: /, "");
      buf = buf.slice(i + 2);
      if (data === "[DONE]") continue;
      const event = JSON.parse(data);
      if (event.error) throw new Error(event.error.message);
      if (event.usage) generated = event.usage.completion_tokens;
      const text: string | undefined = event.choices?.[0]?.text;
      if (text) events.push({ at: performance.now(), n: Math.max(1, countTokens(text)) });
    }
  }
  return timing(t0, events, generated);
}

/** The same request straight to `engine.generate`, no HTTP in between. */
async function direct(engine: Engine, ids: number[], tokens: number): Promise<RequestTiming> {
  const t0 = performance.now();
  const events: { at: number; n: number }[] = [];
  let generated = 0;
  for await (const c of engine.generate({ ids, maxTokens: tokens, minTokens: tokens, temperature: 0 })) {
    if (c.ids.length === 0) continue;
    events.push({ at: performance.now(), n: c.ids.length });
    generated += c.ids.length;
  }
  return timing(t0, events, generated);
}

async function level(
  clients: number,
  rounds: number,
  one: (stream: number, round: number) => Promise<RequestTiming>,
): Promise<Omit<LevelRecord, "setup">> {
  const t0 = performance.now();
  const timings = (await Promise.all(
    Array.from({ length: clients }, async (_, s) => {
      const out: RequestTiming[] = [];
      for (let r = 0; r < rounds; r++) out.push(await one(s, r));
      return out;
    }),
  )).flat();
  const wallSeconds = (performance.now() - t0) / 1000;
  const total = timings.reduce((a, t) => a + t.tokens, 0);
  const decoded = timings.reduce((a, t) => a + t.tokens - t.firstTokens, 0);
  const span = Math.max(...timings.map((t) => t.last)) - Math.min(...timings.map((t) => t.first));
  const itl = timings.flatMap((t) => t.itlMs);
  const ttft = timings.map((t) => t.ttftMs);
  return {
    clients,
    requests: timings.length,
    tokens: total,
    wallSeconds,
    tokensPerSecond: total / wallSeconds,
    decodeTokensPerSecond: span > 0 ? decoded / (span / 1000) : 0,
    ttftMs: { p50: quantile(ttft, 0.5), p99: quantile(ttft, 0.99), max: Math.max(...ttft) },
    itlMs: {
      p50: quantile(itl, 0.5),
      p99: quantile(itl, 0.99),
      mean: itl.reduce((a, b) => a + b, 0) / itl.length,
    },
    maxGapMs: Math.max(...timings.map((t) => t.maxGapMs)),
  };
}

/**
 * A temporary folder linking the files of the model in `dir`, with a tokenizer.json in which every id
 * but the special ones decodes to ` t<id>` (removed by the returned `cleanup`).
 */
async function countingModel(dir: string): Promise<{ dir: string; cleanup: () => Promise<void> }> {
  const config = JSON.parse(await Deno.readTextFile(join(dir, "config.json")));
  const vocab: number = config.vocab_size;
  const tok = JSON.parse(await Deno.readTextFile(join(dir, "tokenizer.json")));
  const added = new Map<number, string>((tok.added_tokens ?? []).map((t: { id: number; content: string }) => [
    t.id,
    t.content,
  ]));
  const entries: Record<string, number> = {};
  // "Ġ" is a space in the byte-level alphabet: id 123 decodes to " t123"
  for (let id = 0; id < vocab; id++) entries[added.get(id) ?? `Ġt${id}`] = id;
  tok.model.vocab = entries;
  tok.model.merges = [];
  const shadow = await Deno.makeTempDir({ prefix: "server-bench-" });
  for await (const e of Deno.readDir(dir)) {
    if (e.name !== "tokenizer.json") await Deno.symlink(resolve(dir, e.name), join(shadow, e.name));
  }
  await Deno.writeTextFile(join(shadow, "tokenizer.json"), JSON.stringify(tok));
  return { dir: shadow, cleanup: () => Deno.remove(shadow, { recursive: true }) };
}

if (import.meta.main) {
  const { values } = parseArgs({
    args: Deno.args,
    strict: true,
    options: {
      model: { type: "string" },
      policy: { type: "string", default: "full" },
      budget: { type: "string" },
      precision: { type: "string" },
      parallel: { type: "string" },
      levels: { type: "string", default: "1,4" },
      tokens: { type: "string", default: "32" },
      prompt: { type: "string", default: "32" },
      rounds: { type: "string", default: "1" },
      context: { type: "string", default: "512" },
      direct: { type: "boolean", default: false },
      out: { type: "string" },
    },
  });
  const tokens = Number(values.tokens);
  const promptTokens = Number(values.prompt);
  const rounds = Number(values.rounds);
  const contextLength = Number(values.context);
  const levels = values.levels.split(",").map(Number);
  const parallel = values.parallel === undefined ? Math.max(...levels) : Number(values.parallel);
  const modelDir = values.model ?? new URL("../models/sotu-moe-mini", import.meta.url).pathname;
  const model = await countingModel(modelDir);
  try {
    const t0 = performance.now();
    await using engine = await createEngine({
      model: model.dir,
      policy: values.policy as PolicyName,
      budget: values.budget,
      expertPrecision: values.precision,
      contextLength,
      maxBatchSequences: parallel,
    });
    const loadSeconds = (performance.now() - t0) / 1000;
    await using server = createServer(engine, {
      contextLength,
      maxQueue: Math.max(...levels),
      modelId: basename(modelDir.replace(/\/+$/, "")),
    });
    const http = server.listen({ port: 0 });
    const base = `http://127.0.0.1:${http.addr.port}`;
    const vocab = engine.spec.vocabSize;
    // warm-up: pipelines compiled, caches filled, a full batch's shapes seen once
    await streamOnce(base, promptIds(promptTokens, vocab, 99, 0), 4);
    await Promise.all(
      Array.from(
        { length: parallel },
        (_, s) => streamOnce(base, promptIds(promptTokens, vocab, 90 + s, 1), 4),
      ),
    );
    const s = engine.stats();
    console.log(
      `server bench: ${server.modelId} · policy ${s.policy} · experts ${s.expertPrecision} · budget ${
        formatBytes(s.budgetBytes)
      } of ${formatBytes(s.fullBytes)} (KV caches ${
        formatBytes(s.gpuBytesByKind.kv ?? 0)
      } for ${s.maxBatchSequences} sequences of ${s.contextLength} positions) · ${s.gpu.description} · prompt ${promptTokens}, ${tokens} tokens/request · ${rounds} rounds/client · load ${
        loadSeconds.toFixed(1)
      } s\n`,
    );
    const records: LevelRecord[] = [];
    if (values.direct) {
      records.push({
        setup: "engine",
        ...await level(1, rounds, (st, r) => direct(engine, promptIds(promptTokens, vocab, st, r), tokens)),
      });
    }
    for (const c of levels) {
      records.push({
        setup: "http",
        ...await level(c, rounds, (st, r) => streamOnce(base, promptIds(promptTokens, vocab, st, r), tokens)),
      });
    }
    const f = (n: number, d = 0) => n.toFixed(d);
    const one = records.find((r) => r.setup === "http" && r.clients === 1);
    console.log(
      "| setup | streams | requests | tokens | wall s | aggregate tok/s | aggregate decode tok/s | × 1 stream | TTFT p50 ms | TTFT p99 ms | TTFT max ms | ITL p50 ms | ITL p99 ms | largest gap ms |",
    );
    console.log("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (const r of records) {
      const x = one ? r.decodeTokensPerSecond / one.decodeTokensPerSecond : NaN;
      console.log(
        `| ${r.setup} | ${r.clients} | ${r.requests} | ${r.tokens} | ${f(r.wallSeconds, 1)} | ${
          f(r.tokensPerSecond, 1)
        } | ${f(r.decodeTokensPerSecond, 1)} | ${f(x, 2)} | ${f(r.ttftMs.p50)} | ${f(r.ttftMs.p99)} | ${
          f(r.ttftMs.max)
        } | ${f(r.itlMs.p50, 1)} | ${f(r.itlMs.p99, 1)} | ${f(r.maxGapMs)} |`,
      );
    }
    if (values.out) {
      const after = engine.stats();
      await Deno.writeTextFile(
        values.out,
        JSON.stringify(
          {
            adapter: s.gpu.description,
            policy: s.policy,
            precision: s.expertPrecision,
            budgetBytes: s.budgetBytes,
            maxBatchSequences: s.maxBatchSequences,
            contextLength: s.contextLength,
            promptTokens,
            tokensPerRequest: tokens,
            rounds,
            loadSeconds,
            hitRate: after.hitRate,
            swaps: after.swaps,
            bytesUploaded: after.bytesUploaded,
            records,
          },
          null,
          2,
        ) + "\n",
      );
    }
  } finally {
    await model.cleanup();
  }
}
