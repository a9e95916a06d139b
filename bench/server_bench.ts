/**
 * Serving latency and throughput: starts the engine and the OpenAI-compatible server in-process on
 * loopback, then for each concurrency level runs that many streaming clients at once, each sending
 * `--rounds` text completions one after another. Prints a Markdown table; `--out` writes JSON.
 *
 *   deno run -A bench/server_bench.ts [--model DIR] [--policy full] [--budget 60%] \
 *     [--clients 1,4] [--tokens 32] [--rounds 2] [--out results.json]
 *
 * The first row is the baseline: the same requests straight to `engine.generate`, no HTTP.
 *
 * Per request, from the client's side: time to first token (send → first generated text, queue
 * wait included), inter-token latency ((last text − first text) / (tokens − 1); the engine's first
 * chunk is exactly one token) and the largest gap between two chunks (the engine reads tokens back
 * in batches of up to 16). Aggregate throughput is all completion tokens over the level's wall time.
 * Greedy, with end-of-sequence held off (`min_tokens`), so every request generates `--tokens`.
 *
 * @module
 */
import { parseArgs } from "node:util";
import { createEngine, type Engine, formatBytes, type PolicyName } from "../mod.ts";
import { createServer } from "../src/server/server.ts";

const PROMPT = "The state of the Union is";

/** One streamed request, seen from the client. */
interface RequestTiming {
  ttftMs: number;
  itlMs: number;
  maxGapMs: number;
  totalMs: number;
  tokens: number;
}

/** One concurrency level. */
export interface LevelRecord {
  /** `engine` (the baseline: `engine.generate` in-process) or `http` (streamed through the server). */
  setup: "engine" | "http";
  clients: number;
  requests: number;
  tokens: number;
  wallSeconds: number;
  tokensPerSecond: number;
  ttftMs: { p50: number; p95: number; max: number };
  itlMs: { mean: number; p50: number; p95: number };
  maxGapMs: number;
  perRequestTokensPerSecond: number;
}

function quantile(xs: number[], q: number): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil(q * s.length) - 1))] ?? NaN;
}

async function streamOnce(base: string, tokens: number): Promise<RequestTiming> {
  const t0 = performance.now();
  const res = await fetch(`${base}/v1/completions`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({
      prompt: PROMPT,
      max_tokens: tokens,
      min_tokens: tokens,
      temperature: 0,
      stream: true,
      stream_options: { include_usage: true },
    }),
  });
  if (res.status !== 200) throw new Error(`HTTP ${res.status}: ${await res.text()}`);
  const reader = res.body!.pipeThrough(new TextDecoderStream()).getReader();
  let buf = "";
  let first = 0;
  let last = 0;
  let maxGap = 0;
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
      if (event.choices?.[0]?.text) {
        const now = performance.now();
        if (first === 0) first = now;
        else maxGap = Math.max(maxGap, now - last);
        last = now;
      }
    }
  }
  return {
    ttftMs: first - t0,
    itlMs: generated > 1 ? (last - first) / (generated - 1) : NaN,
    maxGapMs: maxGap,
    totalMs: performance.now() - t0,
    tokens: generated,
  };
}

/** The baseline: the same request straight to `engine.generate`, no HTTP in between. */
async function direct(engine: Engine, tokens: number): Promise<RequestTiming> {
  const t0 = performance.now();
  let first = 0;
  let last = 0;
  let maxGap = 0;
  let generated = 0;
  for await (
    const c of engine.generate({ prompt: PROMPT, maxTokens: tokens, minTokens: tokens, temperature: 0 })
  ) {
    if (c.ids.length === 0) continue;
    const now = performance.now();
    if (first === 0) first = now;
    else maxGap = Math.max(maxGap, now - last);
    last = now;
    generated += c.ids.length;
  }
  return {
    ttftMs: first - t0,
    itlMs: generated > 1 ? (last - first) / (generated - 1) : NaN,
    maxGapMs: maxGap,
    totalMs: performance.now() - t0,
    tokens: generated,
  };
}

async function level(
  clients: number,
  rounds: number,
  one: () => Promise<RequestTiming>,
): Promise<Omit<LevelRecord, "setup">> {
  const t0 = performance.now();
  const timings = (await Promise.all(
    Array.from({ length: clients }, async () => {
      const out: RequestTiming[] = [];
      for (let r = 0; r < rounds; r++) out.push(await one());
      return out;
    }),
  )).flat();
  const wallSeconds = (performance.now() - t0) / 1000;
  const total = timings.reduce((a, t) => a + t.tokens, 0);
  const itl = timings.map((t) => t.itlMs);
  return {
    clients,
    requests: timings.length,
    tokens: total,
    wallSeconds,
    tokensPerSecond: total / wallSeconds,
    ttftMs: {
      p50: quantile(timings.map((t) => t.ttftMs), 0.5),
      p95: quantile(timings.map((t) => t.ttftMs), 0.95),
      max: Math.max(...timings.map((t) => t.ttftMs)),
    },
    itlMs: {
      mean: itl.reduce((a, b) => a + b, 0) / itl.length,
      p50: quantile(itl, 0.5),
      p95: quantile(itl, 0.95),
    },
    maxGapMs: Math.max(...timings.map((t) => t.maxGapMs)),
    perRequestTokensPerSecond: 1000 / (itl.reduce((a, b) => a + b, 0) / itl.length),
  };
}

if (import.meta.main) {
  const { values } = parseArgs({
    args: Deno.args,
    strict: true,
    options: {
      model: { type: "string" },
      policy: { type: "string", default: "full" },
      budget: { type: "string" },
      clients: { type: "string", default: "1,4" },
      tokens: { type: "string", default: "32" },
      rounds: { type: "string", default: "2" },
      out: { type: "string" },
    },
  });
  const tokens = Number(values.tokens);
  const rounds = Number(values.rounds);
  const levels = values.clients.split(",").map(Number);
  await using engine = await createEngine({
    model: values.model,
    policy: values.policy as PolicyName,
    budget: values.budget,
    contextLength: 512,
  });
  await using server = createServer(engine, { contextLength: 512, maxQueue: Math.max(...levels) });
  const http = server.listen({ port: 0 });
  const base = `http://127.0.0.1:${http.addr.port}`;
  await streamOnce(base, 4); // warm-up: pipelines compiled, caches filled
  const s = engine.stats();
  console.log(
    `server bench: ${server.modelId} · policy ${s.policy} · budget ${formatBytes(s.budgetBytes)} of ${
      formatBytes(s.fullBytes)
    } · ${s.gpu.description} · ${tokens} tokens/request · ${rounds} rounds/client · load ${
      Deno.loadavg().map((l) => l.toFixed(2)).join(" ")
    }\n`,
  );
  const records: LevelRecord[] = [
    { setup: "engine", ...await level(1, rounds, () => direct(engine, tokens)) },
  ];
  for (const c of levels) {
    records.push({
      setup: "http",
      ...await level(c, rounds, () => streamOnce(base, tokens)),
    });
  }
  const f = (n: number, d = 0) => n.toFixed(d);
  console.log(
    "| setup | clients | requests | tokens | wall s | aggregate tok/s | per-request tok/s | TTFT p50 ms | TTFT p95 ms | TTFT max ms | ITL mean ms | ITL p95 ms | largest gap ms |",
  );
  console.log("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
  for (const r of records) {
    console.log(
      `| ${r.setup} | ${r.clients} | ${r.requests} | ${r.tokens} | ${f(r.wallSeconds, 1)} | ${
        f(r.tokensPerSecond, 2)
      } | ${f(r.perRequestTokensPerSecond, 2)} | ${f(r.ttftMs.p50)} | ${f(r.ttftMs.p95)} | ${
        f(r.ttftMs.max)
      } | ${f(r.itlMs.mean)} | ${f(r.itlMs.p95)} | ${f(r.maxGapMs)} |`,
    );
  }
  if (values.out) {
    await Deno.writeTextFile(
      values.out,
      JSON.stringify({ adapter: s.gpu.description, records }, null, 2) + "\n",
    );
  }
}
