/**
 * The OpenAI-compatible server end to end on loopback: the official `openai` client for chat and
 * text completions (plain and streamed) and the model list; raw `fetch` for every bad request;
 * concurrent clients, disconnects, a full queue, the API key, runtime budget changes, shutdown with
 * a request in flight. The engine runs the bundled model on whatever WebGPU adapter there is.
 */
import assert from "node:assert/strict";
// not in deno.json's imports: a package the tests alone use stays out of deno.lock, so a plain run
// does not install it (its lockfile entry is in deno.extra.lock, which `deno task test` uses)
// deno-lint-ignore no-import-prefix
import OpenAI from "npm:openai@7.59.0";
import { createEngine, type Engine, type EngineOptions } from "../mod.ts";
import { createServer, type Server, type ServerOptions } from "../src/server/server.ts";
import { parseServeArgs } from "../src/cli/serve.ts";
import { UsageError } from "../src/cli/command.ts";

/** A small KV cache keeps the engine light and makes context overflows cheap to provoke. */
const CONTEXT = 256;
const PROMPT = "The state of the Union is";
const CHAT = "/v1/chat/completions";
const COMPLETIONS = "/v1/completions";
const BUDGET = "/v1/engine/budget";
const MESSAGES = [{ role: "user" as const, content: "What is the state of the Union?" }];

/** Fields of vLLM's that the server honours and OpenAI's types do not know; the client sends them as given. */
function vllm(fields: { min_tokens: number }): Record<never, never> {
  return fields;
}

interface Ctx {
  base: string;
  engine: Engine;
  server: Server;
  client: OpenAI;
}

async function withServer(
  options: { engine?: EngineOptions; server?: ServerOptions },
  fn: (ctx: Ctx) => Promise<void>,
): Promise<void> {
  // one generation at a time unless a test asks for more (the queue's tests count on it)
  const engine = await createEngine({
    policy: "full",
    contextLength: CONTEXT,
    maxBatchSequences: 1,
    ...options.engine,
  });
  const server = createServer(engine, { contextLength: CONTEXT, ...options.server });
  try {
    const http = server.listen({ hostname: "127.0.0.1", port: 0 });
    const base = `http://127.0.0.1:${http.addr.port}`;
    const client = new OpenAI({
      baseURL: `${base}/v1`,
      apiKey: options.server?.apiKey ?? "unused",
      maxRetries: 0, // the client retries 503s by default: the queue test wants to see them
      timeout: 120_000,
    });
    await fn({ base, engine, server, client });
  } finally {
    await server.close();
    await engine.close();
  }
}

function post(base: string, path: string, body: unknown, init: RequestInit = {}): Promise<Response> {
  return fetch(base + path, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(body),
    ...init,
  });
}

/** Asserts OpenAI's error shape and returns the error object. */
async function errorOf(
  res: Response,
): Promise<{ message: string; type: string; param: unknown; code: unknown }> {
  const body = await res.json();
  assert.ok(body && typeof body.error === "object", `no error object: ${JSON.stringify(body)}`);
  const e = body.error;
  assert.equal(typeof e.message, "string");
  assert.ok(e.message.length > 0);
  assert.equal(typeof e.type, "string");
  assert.ok("param" in e && "code" in e, `param and code must be present: ${JSON.stringify(e)}`);
  return e;
}

/** A metric's value from the exposition text (the first sample whose line starts with `prefix`). */
function metric(text: string, prefix: string): number {
  const line = text.split("\n").find((l) => l.startsWith(prefix + " ") || l.startsWith(prefix + "{"));
  assert.ok(line, `no metric ${prefix}`);
  return Number(line.slice(line.lastIndexOf(" ") + 1));
}

async function metrics(base: string, init: RequestInit = {}): Promise<string> {
  const res = await fetch(`${base}/metrics`, init);
  assert.equal(res.status, 200);
  return await res.text();
}

/** Reads SSE `data:` payloads from a streamed response until `until` says stop (or the stream ends). */
async function readEvents(res: Response, until: (data: string) => boolean = () => false): Promise<string[]> {
  const reader = res.body!.pipeThrough(new TextDecoderStream()).getReader();
  const events: string[] = [];
  let buf = "";
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) return events;
      buf += value;
      let i;
      while ((i = buf.indexOf("\n\n")) >= 0) {
        const block = buf.slice(0, i);
        buf = buf.slice(i + 2);
        const data = block.split("\n").filter((l) => l.startsWith("data: ")).map((l) => l.slice(6)).join(
          "\n",
        );
        events.push(data);
        if (until(data)) return events;
      }
    }
  } finally {
    await reader.cancel().catch(() => {});
  }
}

Deno.test("openai client: models, chat and completions, plain and streamed, with usage; /metrics and /health", async () => {
  await withServer({}, async ({ base, engine, client }) => {
    const models = await client.models.list();
    assert.deepEqual(models.data.map((m) => m.id), ["sotu-moe-mini"]);
    assert.equal((await client.models.retrieve("sotu-moe-mini")).id, "sotu-moe-mini");

    // chat: the chat template is the engine's; prompt_tokens counts the rendered template
    const rendered = engine.tokenizer.applyChatTemplate(MESSAGES, { addGenerationPrompt: true });
    const chatPromptTokens = engine.tokenizer.encode(rendered, { addSpecialTokens: false }).length;
    const chat = await client.chat.completions.create({
      model: "sotu-moe-mini",
      messages: MESSAGES,
      max_tokens: 4,
      temperature: 0,
    });
    assert.equal(chat.object, "chat.completion");
    assert.equal(chat.model, "sotu-moe-mini");
    assert.equal(chat.choices.length, 1);
    const choice = chat.choices[0]!;
    assert.equal(choice.message.role, "assistant");
    assert.equal(typeof choice.message.content, "string");
    assert.ok(["stop", "length"].includes(choice.finish_reason));
    assert.equal(chat.usage?.prompt_tokens, chatPromptTokens);
    assert.ok(chat.usage!.completion_tokens <= 4);
    assert.equal(chat.usage?.total_tokens, chatPromptTokens + chat.usage!.completion_tokens);

    // streamed chat, greedy: the same text, a role first, the finish reason last, then the usage chunk
    const stream = await client.chat.completions.create({
      model: "sotu-moe-mini",
      messages: MESSAGES,
      max_completion_tokens: 4,
      temperature: 0,
      stream: true,
      stream_options: { include_usage: true },
    });
    let text = "";
    let role: string | undefined;
    let finish: string | null = null;
    let usage: OpenAI.CompletionUsage | null | undefined;
    for await (const c of stream) {
      if (c.choices.length === 0) usage = c.usage;
      for (const ch of c.choices) {
        role ??= ch.delta.role;
        text += ch.delta.content ?? "";
        finish = ch.finish_reason ?? finish;
      }
    }
    assert.equal(role, "assistant");
    assert.equal(text, choice.message.content);
    assert.equal(finish, choice.finish_reason);
    assert.deepEqual(usage, chat.usage);

    // text completions, plain and streamed; min_tokens (vLLM's) keeps end-of-sequence away
    const promptTokens = engine.tokenizer.encode(PROMPT).length;
    const done = await client.completions.create({
      model: "sotu-moe-mini",
      prompt: PROMPT,
      max_tokens: 5,
      temperature: 0,
      stop: ["\n\n\n"],
      ...vllm({ min_tokens: 5 }),
    });
    assert.equal(done.object, "text_completion");
    assert.equal(done.choices[0]!.finish_reason, "length");
    assert.ok(done.choices[0]!.text.length > 0);
    assert.deepEqual(done.usage, {
      prompt_tokens: promptTokens,
      completion_tokens: 5,
      total_tokens: promptTokens + 5,
    });
    const streamed = await client.completions.create({
      model: "sotu-moe-mini",
      prompt: PROMPT,
      max_tokens: 5,
      temperature: 0,
      stream: true,
      ...vllm({ min_tokens: 5 }),
    });
    let streamedText = "";
    let streamedFinish: string | null = null;
    for await (const c of streamed) {
      streamedText += c.choices[0]?.text ?? "";
      streamedFinish = c.choices[0]?.finish_reason ?? streamedFinish;
    }
    assert.equal(streamedText, done.choices[0]!.text);
    assert.equal(streamedFinish, "length");

    // the raw stream ends with data: [DONE]
    const raw = await post(base, COMPLETIONS, { prompt: PROMPT, max_tokens: 2, stream: true });
    assert.equal(raw.status, 200);
    assert.match(raw.headers.get("content-type") ?? "", /^text\/event-stream/);
    const events = await readEvents(raw);
    assert.equal(events.at(-1), "[DONE]");

    const health = await fetch(`${base}/health`);
    assert.equal(health.status, 200);
    assert.equal((await health.json()).status, "ok");

    const text2 = await metrics(base);
    for (const line of text2.trimEnd().split("\n")) {
      assert.match(
        line,
        /^(# (HELP|TYPE) \w+ .+|\w+(\{(\w+="[^"]*",?)*\})? [-+\d.eE]+|\w+(\{.*\})? (NaN|[+-]Inf))$/,
      );
    }
    assert.equal(metric(text2, 'swapmoe_requests_total{route="/v1/chat/completions",status="200"}'), 2);
    assert.equal(metric(text2, 'swapmoe_requests_total{route="/v1/completions",status="200"}'), 3);
    assert.equal(metric(text2, "swapmoe_completion_tokens_total"), 2 * chat.usage!.completion_tokens + 12);
    assert.equal(metric(text2, "swapmoe_gpu_bytes"), engine.stats().gpuBytes);
    assert.equal(metric(text2, "swapmoe_budget_bytes"), engine.stats().budgetBytes);
    assert.equal(metric(text2, "swapmoe_expert_hit_rate"), 1);
    for (
      const name of [
        "swapmoe_expert_swaps_total",
        "swapmoe_expert_uploaded_bytes_total",
        "swapmoe_queue_length",
        "swapmoe_tokens_per_second",
        "swapmoe_time_to_first_token_seconds_count",
      ]
    ) metric(text2, name);
    assert.ok(metric(text2, 'swapmoe_tokens_per_second{phase="decode"}') > 0);
  });
});

interface BadRequest {
  name: string;
  method?: string;
  path: string;
  /** JSON-encoded unless `raw` is given. */
  body?: unknown;
  raw?: string | Uint8Array<ArrayBuffer>;
  status: number;
  param?: string;
  /** What the message must say, when the status alone does not tell the fault. */
  message?: RegExp;
}

const chat = (extra: Record<string, unknown>) => ({ model: "sotu-moe-mini", messages: MESSAGES, ...extra });
const completion = (extra: Record<string, unknown>) => ({ prompt: PROMPT, ...extra });

/** Every bad request, and the status it must get. Exported for the report's table. */
export const BAD_REQUESTS: BadRequest[] = [
  { name: "invalid JSON", path: CHAT, raw: '{"messages": [', status: 400 },
  { name: "empty body", path: CHAT, raw: "", status: 400 },
  { name: "body not UTF-8", path: CHAT, raw: new Uint8Array([0x7b, 0xff, 0xfe, 0x7d]), status: 400 },
  { name: "body a JSON list", path: CHAT, body: [1, 2], status: 400 },
  { name: "missing messages", path: CHAT, body: { model: "sotu-moe-mini" }, status: 400, param: "messages" },
  { name: "empty messages", path: CHAT, body: chat({ messages: [] }), status: 400, param: "messages" },
  { name: "messages a string", path: CHAT, body: chat({ messages: "hi" }), status: 400, param: "messages" },
  {
    name: "message a string",
    path: CHAT,
    body: chat({ messages: ["hi"] }),
    status: 400,
    param: "messages[0]",
  },
  {
    name: "message without role",
    path: CHAT,
    body: chat({ messages: [{ content: "hi" }] }),
    status: 400,
    param: "messages[0].role",
  },
  {
    name: "unknown role",
    path: CHAT,
    body: chat({ messages: [{ role: "wizard", content: "hi" }] }),
    status: 400,
    param: "messages[0].role",
  },
  {
    name: "content a number",
    path: CHAT,
    body: chat({ messages: [{ role: "user", content: 5 }] }),
    status: 400,
    param: "messages[0].content",
  },
  {
    name: "user message without content",
    path: CHAT,
    body: chat({ messages: [{ role: "user" }] }),
    status: 400,
    param: "messages[0].content",
  },
  {
    name: "image content part",
    path: CHAT,
    body: chat({ messages: [{ role: "user", content: [{ type: "image_url", image_url: { url: "x" } }] }] }),
    status: 400,
    param: "messages[0].content[0].type",
  },
  { name: "model a number", path: CHAT, body: chat({ model: 5 }), status: 400, param: "model" },
  { name: "unknown model", path: CHAT, body: chat({ model: "gpt-4o" }), status: 404, param: "model" },
  {
    name: "max_tokens negative",
    path: CHAT,
    body: chat({ max_tokens: -1 }),
    status: 400,
    param: "max_tokens",
  },
  { name: "max_tokens 0", path: CHAT, body: chat({ max_tokens: 0 }), status: 400, param: "max_tokens" },
  { name: "max_tokens 1.5", path: CHAT, body: chat({ max_tokens: 1.5 }), status: 400, param: "max_tokens" },
  { name: 'max_tokens "10"', path: CHAT, body: chat({ max_tokens: "10" }), status: 400, param: "max_tokens" },
  { name: "max_tokens 1e9", path: CHAT, body: chat({ max_tokens: 1e9 }), status: 400, param: "max_tokens" },
  {
    name: "max_completion_tokens 100000",
    path: CHAT,
    body: chat({ max_completion_tokens: 100000 }),
    status: 400,
    param: "max_completion_tokens",
  },
  {
    name: "prompt + max_tokens beyond the context",
    path: CHAT,
    body: chat({ max_tokens: CONTEXT - 2 }),
    status: 400,
    param: "max_tokens",
  },
  {
    name: "prompt alone beyond the context",
    path: COMPLETIONS,
    body: completion({ prompt: "war ".repeat(2 * CONTEXT) }),
    status: 400,
    param: "prompt",
  },
  {
    name: "temperature -0.5",
    path: CHAT,
    body: chat({ temperature: -0.5 }),
    status: 400,
    param: "temperature",
  },
  {
    name: "temperature 2.5",
    path: CHAT,
    body: chat({ temperature: 2.5 }),
    status: 400,
    param: "temperature",
  },
  {
    name: 'temperature "hot"',
    path: CHAT,
    body: chat({ temperature: "hot" }),
    status: 400,
    param: "temperature",
  },
  { name: "top_p 0", path: CHAT, body: chat({ top_p: 0 }), status: 400, param: "top_p" },
  { name: "top_p 1.5", path: CHAT, body: chat({ top_p: 1.5 }), status: 400, param: "top_p" },
  { name: "top_k -2", path: CHAT, body: chat({ top_k: -2 }), status: 400, param: "top_k" },
  { name: "n 2", path: CHAT, body: chat({ n: 2 }), status: 400, param: "n" },
  { name: 'stream "yes"', path: CHAT, body: chat({ stream: "yes" }), status: 400, param: "stream" },
  {
    name: "stream_options true",
    path: CHAT,
    body: chat({ stream: true, stream_options: true }),
    status: 400,
    param: "stream_options",
  },
  { name: "stop a number", path: CHAT, body: chat({ stop: 5 }), status: 400, param: "stop" },
  { name: 'stop [""]', path: CHAT, body: chat({ stop: [""] }), status: 400, param: "stop" },
  {
    name: "five stop strings",
    path: CHAT,
    body: chat({ stop: ["a", "b", "c", "d", "e"] }),
    status: 400,
    param: "stop",
  },
  { name: "seed 1.5", path: CHAT, body: chat({ seed: 1.5 }), status: 400, param: "seed" },
  { name: "logprobs true", path: CHAT, body: chat({ logprobs: true }), status: 400, param: "logprobs" },
  {
    name: "tools",
    path: CHAT,
    body: chat({ tools: [{ type: "function", function: { name: "f" } }] }),
    status: 400,
    param: "tools",
  },
  {
    name: "presence_penalty 0.5",
    path: CHAT,
    body: chat({ presence_penalty: 0.5 }),
    status: 400,
    param: "presence_penalty",
  },
  { name: "completions: missing prompt", path: COMPLETIONS, body: {}, status: 400, param: "prompt" },
  {
    name: "completions: prompt a number",
    path: COMPLETIONS,
    body: { prompt: 5 },
    status: 400,
    param: "prompt",
  },
  {
    name: "completions: two prompts",
    path: COMPLETIONS,
    body: { prompt: ["a", "b"] },
    status: 400,
    param: "prompt",
  },
  {
    name: "completions: token id out of range",
    path: COMPLETIONS,
    body: { prompt: [1, 99999] },
    status: 400,
    param: "prompt",
  },
  {
    name: "completions: echo",
    path: COMPLETIONS,
    body: completion({ echo: true }),
    status: 400,
    param: "echo",
  },
  {
    name: "completions: best_of 2",
    path: COMPLETIONS,
    body: completion({ best_of: 2 }),
    status: 400,
    param: "best_of",
  },
  {
    name: "completions: unknown model",
    path: COMPLETIONS,
    body: completion({ model: "davinci" }),
    status: 404,
  },
  {
    name: "body over 1 MiB",
    path: CHAT,
    raw: JSON.stringify(chat({ pad: "x".repeat(2 << 20) })),
    status: 413,
  },
  // CONTEXT 256 tokens × 72 bytes (4 × the longest token, 18 bytes): refused before it is tokenized
  {
    name: "prompt of more bytes than the context can hold",
    path: COMPLETIONS,
    body: completion({ prompt: "x ".repeat(10_000) }),
    status: 400,
    param: "prompt",
    message:
      /^Prompt too long: 20000 bytes of text, more than the 18432 that the context of 256 tokens can hold/,
  },
  {
    name: "messages of more bytes than the context can hold",
    path: CHAT,
    body: chat({
      messages: [{ role: "user", content: "x ".repeat(5000) }, { role: "user", content: "y".repeat(9000) }],
    }),
    status: 400,
    param: "messages",
    message: /^Prompt too long: 19000 bytes of text, more than the 18432/,
  },
  // under the byte bound but over 16 Ki characters: tokenized on the tokenizer's thread, then refused
  {
    name: "prompt tokenized on the tokenizer's thread, of more tokens than the context holds",
    path: COMPLETIONS,
    body: completion({ prompt: "x ".repeat(9000) }),
    status: 400,
    param: "prompt",
    message: /^Prompt too long: \d+ tokens, the context holds 256 including at least one new token/,
  },
  {
    name: "messages tokenized on the tokenizer's thread, of more tokens than the context holds",
    path: CHAT,
    body: chat({ messages: [{ role: "user", content: "y ".repeat(9000) }] }),
    status: 400,
    param: "messages",
    message: /^Prompt too long: \d+ tokens, the context holds 256/,
  },
  { name: "GET on a POST route", method: "GET", path: CHAT, status: 405 },
  { name: "DELETE /v1/models", method: "DELETE", path: "/v1/models", status: 405 },
  { name: "POST /health", method: "POST", path: "/health", body: {}, status: 405 },
  { name: "unknown route", path: "/v1/embeddings", body: { input: "x" }, status: 404 },
  { name: "unknown model route", method: "GET", path: "/v1/models/gpt-4o", status: 404 },
  { name: "budget: POST", path: BUDGET, body: { budget: "50%" }, status: 405 },
  { name: "budget: missing", method: "PUT", path: BUDGET, body: {}, status: 400, param: "budget" },
  { name: "budget: true", method: "PUT", path: BUDGET, body: { budget: true }, status: 400, param: "budget" },
  {
    name: 'budget: "lots"',
    method: "PUT",
    path: BUDGET,
    body: { budget: "lots" },
    status: 400,
    param: "budget",
  },
  { name: "budget: -1", method: "PUT", path: BUDGET, body: { budget: -1 }, status: 400, param: "budget" },
  ...[1.5, "1.5", "1.5B", 1e300, 2 ** 53 + 5, "99999999999999999999", "9".repeat(400)].map((budget) => ({
    name: `budget: ${JSON.stringify(budget).slice(0, 24)}`,
    method: "PUT",
    path: BUDGET,
    body: { budget },
    status: 400,
    param: "budget",
    message:
      /^Invalid budget: .*expected a whole number of bytes \(at most 2\^53 - 1\), a size such as "512MiB"/,
  })),
  {
    name: 'budget: "50%" under policy full',
    method: "PUT",
    path: BUDGET,
    body: { budget: "50%" },
    status: 400,
    param: "budget",
  },
];

Deno.test("bad requests get OpenAI-shaped errors with the right status, and the server carries on", async (t) => {
  await withServer({}, async ({ base, client }) => {
    for (const bad of BAD_REQUESTS) {
      await t.step(`${bad.name} → ${bad.status}`, async () => {
        const method = bad.method ?? "POST";
        const body = method === "GET"
          ? undefined
          : bad.raw ?? (bad.body === undefined ? undefined : JSON.stringify(bad.body));
        const res = await fetch(base + bad.path, {
          method,
          body,
          headers: { "content-type": "application/json" },
        });
        assert.equal(res.status, bad.status, `${bad.name}: ${res.status}`);
        const e = await errorOf(res);
        assert.equal(e.type, "invalid_request_error");
        if (bad.param !== undefined) assert.equal(e.param, bad.param, e.message);
        if (bad.message !== undefined) assert.match(e.message, bad.message);
        if (res.status === 405) assert.ok(res.headers.get("allow"));
      });
    }
    const budget = await fetch(base + BUDGET, {
      method: "PUT",
      body: JSON.stringify({ budget: "50%" }),
    });
    assert.match((await errorOf(budget)).message, /^Budget too small: .* policy "full" needs at least/);
    const ok = await client.completions.create({ model: "sotu-moe-mini", prompt: PROMPT, max_tokens: 1 });
    assert.equal(ok.choices.length, 1);
    assert.equal((await fetch(`${base}/health`).then((r) => r.json())).status, "ok");
  });
});

Deno.test("four concurrent streaming clients are all answered, one at a time and whole", async () => {
  await withServer({}, async ({ base, client }) => {
    const one = async () => {
      const s = await client.completions.create({
        model: "sotu-moe-mini",
        prompt: PROMPT,
        max_tokens: 4,
        temperature: 0,
        stream: true,
        stream_options: { include_usage: true },
        ...vllm({ min_tokens: 4 }),
      });
      let text = "";
      let tokens = 0;
      for await (const c of s) {
        text += c.choices[0]?.text ?? "";
        tokens = c.usage?.completion_tokens ?? tokens;
      }
      return { text, tokens };
    };
    const results = await Promise.all([one(), one(), one(), one()]);
    // greedy and serialised: four identical answers, none cut or interleaved
    for (const r of results) assert.deepEqual(r, results[0]);
    assert.equal(results[0]!.tokens, 4);
    const m = await metrics(base);
    assert.equal(metric(m, 'swapmoe_requests_total{route="/v1/completions",status="200"}'), 4);
    assert.ok(metric(m, "swapmoe_queue_wait_seconds_sum") > 0, "three of them waited");
    assert.equal(metric(m, "swapmoe_queue_length"), 0);
  });
});

Deno.test("--parallel 3: requests decode together, three at a time, each answer what it is alone", async () => {
  await withServer({ engine: { maxBatchSequences: 3 } }, async ({ base, engine, client }) => {
    const one = async (i: number) => {
      const s = await client.completions.create({
        model: "sotu-moe-mini",
        prompt: `${PROMPT} ${"and ".repeat(i)}`,
        max_tokens: 6 + i,
        temperature: 0,
        stream: true,
        stream_options: { include_usage: true },
        ...vllm({ min_tokens: 6 + i }),
      });
      let text = "";
      let tokens = 0;
      for await (const c of s) {
        text += c.choices[0]?.text ?? "";
        tokens = c.usage?.completion_tokens ?? tokens;
        most = Math.max(most, engine.stats().activeSequences);
      }
      return { text, tokens };
    };
    let most = 0;
    const alone = [];
    for (let i = 0; i < 5; i++) alone.push(await one(i));
    most = 0;
    const together = await Promise.all([0, 1, 2, 3, 4].map(one));
    assert.deepEqual(together, alone);
    assert.equal(most, 3, "three generations decoded together, the others waited");
    const m = await metrics(base);
    assert.equal(metric(m, "swapmoe_requests_parallel"), 3);
    assert.equal(metric(m, 'swapmoe_requests_total{route="/v1/completions",status="200"}'), 10);
    assert.equal(metric(m, "swapmoe_queue_length"), 0);
    assert.equal(metric(m, "swapmoe_requests_running"), 0);
  });
});

Deno.test("--parallel 2 --max-queue 1: two run, one waits, the rest get 503 at once", async () => {
  await withServer({ engine: { maxBatchSequences: 2 }, server: { maxQueue: 1 } }, async ({ base }) => {
    const slow = { prompt: PROMPT, max_tokens: 6, min_tokens: 6 };
    const responses = await Promise.all([1, 2, 3, 4, 5].map(() => post(base, COMPLETIONS, slow)));
    assert.deepEqual(responses.map((r) => r.status).sort(), [200, 200, 200, 503, 503]);
    for (const r of responses) {
      if (r.status === 200) assert.equal((await r.json()).usage.completion_tokens, 6);
      else assert.equal((await errorOf(r)).code, "queue_full");
    }
  });
});

Deno.test("parallel beyond the engine's maxBatchSequences is refused", async () => {
  await using engine = await createEngine({ policy: "full", contextLength: CONTEXT, maxBatchSequences: 2 });
  assert.throws(
    () => createServer(engine, { parallel: 3 }),
    /Invalid parallel: 3, the engine decodes 2 sequences at once \(its maxBatchSequences\)/,
  );
});

Deno.test("a client that disconnects, mid-stream or while queued, cancels its generation", async () => {
  await withServer({}, async ({ base, engine }) => {
    const health = async () => await fetch(`${base}/health`).then((r) => r.json());
    /** Polls /health (slow while a CPU adapter decodes: the engine holds the event loop per batch). */
    const until = async (ok: (h: { running: number; waiting: number }) => boolean) => {
      while (!ok(await health())) await new Promise((r) => setTimeout(r, 50));
    };
    const streaming = new AbortController();
    const res = await post(base, COMPLETIONS, {
      prompt: PROMPT,
      max_tokens: 200,
      min_tokens: 200,
      stream: true,
    }, {
      signal: streaming.signal,
    });
    assert.equal(res.status, 200);
    const reader = res.body!.getReader();
    assert.ok((await reader.read()).value, "the first event");

    // a second client waits behind it and leaves before its turn: it drops out of the line (its answer
    // began at admission: status 200 and the headers, the body to come)
    const queued = new AbortController();
    const waiting = await post(base, COMPLETIONS, { prompt: PROMPT, max_tokens: 2 }, {
      signal: queued.signal,
    });
    assert.equal(waiting.status, 200);
    await until((h) => h.waiting === 1);
    queued.abort();
    await assert.rejects(waiting.text(), { name: "AbortError" });
    await until((h) => h.waiting === 0 && h.running === 1);

    // the streaming client leaves: the rest of its 240 tokens would take many seconds on this adapter
    const decodedAtAbort = engine.stats().decodeTokens;
    streaming.abort();
    await reader.closed.catch(() => {});
    const t0 = performance.now();
    const next = await post(base, COMPLETIONS, { prompt: PROMPT, max_tokens: 2 });
    assert.equal(next.status, 200);
    assert.equal((await next.json()).usage.completion_tokens, 2);
    const waited = performance.now() - t0;
    assert.ok(waited < 20_000, `the next request took ${waited} ms`);
    // the engine stops between batches (at most 16 tokens each, two in flight, one more while the server
    // notices: the engine holds the event loop for a batch on a CPU adapter)
    const decodedAfter = engine.stats().decodeTokens - decodedAtAbort;
    assert.ok(decodedAfter <= 3 * 16 + 2, `${decodedAfter} tokens decoded after the abort`);
    assert.ok(engine.stats().decodeTokens < 240, `decoded ${engine.stats().decodeTokens} tokens`);
    const m = await metrics(base);
    assert.equal(metric(m, 'swapmoe_requests_total{route="/v1/completions",status="499"}'), 2);
    assert.equal(metric(m, 'swapmoe_requests_total{route="/v1/completions",status="200"}'), 1);
    assert.equal(metric(m, "swapmoe_queue_length"), 0);
    assert.equal(metric(m, "swapmoe_requests_running"), 0);
  });
});

/** A completions body of `bytes` bytes: padded with `user`, a field OpenAI's API defines and the server ignores. */
function padded(bytes: number, fields: Record<string, unknown>): string {
  const body = { ...fields, user: "" };
  body.user = "x".repeat(Math.max(0, bytes - JSON.stringify(body).length));
  return JSON.stringify(body);
}

// Deno's HTTP server sees a client's close before the response has begun only when the whole request
// came in one read with its head: with Deno's fetch as the client, bodies up to ~300 bytes. The server
// begins every admitted answer at once, so that every shape is cancelled.
Deno.test("a client that leaves cancels its generation at every body size, plain or streamed, queued or running", async () => {
  await withServer({}, async ({ base, engine }) => {
    const health = async () => await fetch(`${base}/health`).then((r) => r.json());
    const until = async (what: string, ok: (h: { running: number; waiting: number }) => boolean) => {
      const end = performance.now() + 15_000;
      while (!ok(await health())) {
        assert.ok(performance.now() < end, `${what}: still ${JSON.stringify(await health())} after 15 s`);
        await new Promise((r) => setTimeout(r, 50));
      }
    };
    const long = { prompt: PROMPT, max_tokens: 200, min_tokens: 200 };
    /** Sends a request and resolves once its answer began (the head came), or on its own end. */
    const start = (body: string, signal: AbortSignal) =>
      fetch(base + COMPLETIONS, { method: "POST", body, signal }).catch(() => undefined);
    let cancelled = 0;
    for (const bytes of [100, 400, 4096, 65536]) {
      for (const stream of [false, true]) {
        const shape = `${bytes} bytes, ${stream ? "streamed" : "plain"}`;

        // running: it leaves mid-generation; the engine stops within a few batches
        const running = new AbortController();
        const answer = start(padded(bytes, { ...long, stream }), running.signal);
        await until(`${shape}, running`, (h) => h.running === 1);
        await new Promise((r) => setTimeout(r, 300));
        const decodedAtAbort = engine.stats().decodeTokens;
        running.abort();
        await answer;
        await until(`${shape}, after leaving while running`, (h) => h.running === 0);
        const decodedAfter = engine.stats().decodeTokens - decodedAtAbort;
        assert.ok(decodedAfter <= 3 * 16 + 2, `${shape}: ${decodedAfter} tokens decoded after the abort`);
        cancelled++;

        // queued: it leaves while another request runs; it drops out of the line at once
        const ahead = new AbortController();
        const first = start(JSON.stringify({ ...long, stream: true }), ahead.signal);
        await until(`${shape}, the request ahead`, (h) => h.running === 1);
        const queued = new AbortController();
        const waiting = start(padded(bytes, { ...long, stream }), queued.signal);
        await until(`${shape}, queued`, (h) => h.waiting === 1);
        queued.abort();
        await waiting;
        await until(`${shape}, after leaving the queue`, (h) => h.waiting === 0 && h.running === 1);
        ahead.abort();
        await first;
        await until(`${shape}, after the request ahead left`, (h) => h.running === 0);
        cancelled += 2;
      }
    }
    const m = await metrics(base);
    assert.equal(metric(m, 'swapmoe_requests_total{route="/v1/completions",status="499"}'), cancelled);
    assert.ok(!m.includes('route="/v1/completions",status="200"'), "a generation ran to its end");
  });
});

/** Copies the bundled model into a temporary folder, with `template` as its chat template. */
async function modelWithTemplate(template: string): Promise<string> {
  const dir = await Deno.makeTempDir({ prefix: "swapmoe-template-" });
  const from = new URL("../models/sotu-moe-mini/", import.meta.url).pathname;
  for await (const e of Deno.readDir(from)) {
    if (e.isFile) await Deno.copyFile(from + e.name, `${dir}/${e.name}`);
  }
  await Deno.writeTextFile(`${dir}/chat_template.jinja`, template);
  return dir;
}

Deno.test("a template error names the file, not the folder the server keeps the model in", async () => {
  const dir = await modelWithTemplate('{{ raise_exception("No chat for you") }}');
  try {
    await withServer({ engine: { model: dir } }, async ({ base }) => {
      const res = await post(base, CHAT, { messages: MESSAGES, max_tokens: 1 });
      assert.equal(res.status, 400);
      const e = await errorOf(res);
      assert.match(e.message, /^Chat template failed to render: chat_template\.jinja: .*No chat for you/);
      assert.ok(!e.message.includes(dir), e.message);
      assert.ok(!e.message.includes("/tmp"), e.message);
    });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a chat request with default settings gets a non-empty answer (generation_config's min_new_tokens)", async () => {
  // as `deno task serve` starts: swapmoe at 70% (with fewer tokens by default, to be quick on lavapipe)
  const options = { engine: { policy: "swapmoe", budget: "70%" }, server: { defaultMaxTokens: 24 } } as const;
  await withServer(options, async ({ base, client }) => {
    const messages = [{ role: "user" as const, content: "The state of the Union" }];
    // the README's curl, as written
    const res = await post(base, CHAT, { messages, max_tokens: 16 });
    assert.equal(res.status, 200);
    const body = await res.json();
    assert.ok(body.choices[0].message.content.trim().length > 0, JSON.stringify(body));
    assert.ok(body.usage.completion_tokens >= 8, JSON.stringify(body.usage));
    // the openai client with nothing but the messages (OpenAI's temperature 1, the server's max_tokens)
    for (let i = 0; i < 3; i++) {
      const chat = await client.chat.completions.create({ model: "sotu-moe-mini", messages });
      assert.ok(chat.choices[0]!.message.content!.trim().length > 0, `request ${i}: empty content`);
      assert.ok(chat.usage!.completion_tokens >= 8, `request ${i}: ${chat.usage!.completion_tokens} tokens`);
    }
  });
});

Deno.test("a full queue answers 503 at once (--max-queue 1)", async () => {
  await withServer({ server: { maxQueue: 1 } }, async ({ base }) => {
    const slow = { prompt: PROMPT, max_tokens: 6, min_tokens: 6 };
    const responses = await Promise.all([1, 2, 3, 4].map(() => post(base, COMPLETIONS, slow)));
    const statuses = responses.map((r) => r.status).sort();
    assert.deepEqual(statuses, [200, 200, 503, 503]);
    for (const r of responses) {
      if (r.status === 200) {
        assert.equal((await r.json()).usage.completion_tokens, 6);
        continue;
      }
      assert.equal(r.headers.get("retry-after"), "1");
      const e = await errorOf(r);
      assert.equal(e.code, "queue_full");
      assert.equal(e.type, "server_error");
    }
    assert.equal((await post(base, COMPLETIONS, { prompt: PROMPT, max_tokens: 1 })).status, 200);
    await fetch(`${base}/health`).then((r) => r.body?.cancel());
  });
});

Deno.test("budget: GET and PUT /v1/engine/budget change it while serving (swapmoe)", async () => {
  await withServer({ engine: { policy: "swapmoe", budget: "60%" } }, async ({ base, engine, client }) => {
    const get = async () => {
      const r = await fetch(base + BUDGET);
      assert.equal(r.status, 200);
      return await r.json();
    };
    const before = await get();
    assert.equal(before.policy, "swapmoe");
    assert.equal(before.budgetBytes, Math.floor(before.fullBytes * 0.6));
    assert.ok(before.gpuBytes <= before.budgetBytes);
    for (const k of ["minimumBudgetBytes", "fullBytes", "expertSlots", "residentExperts"]) {
      assert.ok(k in before, k);
    }

    const put = async (budget: unknown) =>
      await fetch(base + BUDGET, { method: "PUT", body: JSON.stringify({ budget }) });
    const grown = await put("80%");
    assert.equal(grown.status, 200);
    const g = await grown.json();
    assert.equal(g.budgetBytes, Math.floor(before.fullBytes * 0.8));
    assert.ok(
      g.expertSlots.reduce((a: number, b: number) => a + b) >
        before.expertSlots.reduce((a: number, b: number) => a + b),
    );
    assert.deepEqual(await get(), { ...g, peakGpuBytes: (await get()).peakGpuBytes });
    assert.equal(engine.stats().budgetBytes, g.budgetBytes);

    const done = await client.completions.create({ model: "sotu-moe-mini", prompt: PROMPT, max_tokens: 3 });
    assert.equal(done.usage?.completion_tokens !== undefined, true);

    // bytes work too: the minimum itself
    const min = await put(before.minimumBudgetBytes);
    assert.equal(min.status, 200);
    assert.equal((await min.json()).budgetBytes, before.minimumBudgetBytes);
    const tooSmall = await put(before.minimumBudgetBytes - 1);
    assert.equal(tooSmall.status, 400);
    const e = await errorOf(tooSmall);
    assert.match(e.message, /^Budget too small: .*needs at least \d+ bytes/);
    assert.equal(e.code, "budget_too_small");
    assert.equal((await get()).budgetBytes, before.minimumBudgetBytes);

    const chatAfter = await client.chat.completions.create({
      model: "sotu-moe-mini",
      messages: MESSAGES,
      max_tokens: 2,
    });
    assert.equal(chatAfter.choices.length, 1);
    const m = await metrics(base);
    assert.equal(metric(m, "swapmoe_budget_bytes"), before.minimumBudgetBytes);
  });
});

Deno.test("--api-key: 401 without the bearer token, before 404 and 405, except /health", async () => {
  await withServer({ server: { apiKey: "sekret" } }, async ({ base, client }) => {
    assert.equal((await fetch(`${base}/health`).then(async (r) => [r.status, await r.json()]))[0], 200);
    // /health stays open to probes, whatever the method
    assert.equal(
      (await fetch(`${base}/health`, { method: "POST" }).then(async (r) => [r.status, await r.json()]))[0],
      405,
    );
    for (
      const [path, init] of [
        ["/v1/models", {}],
        ["/metrics", {}],
        [BUDGET, {}],
        [CHAT, { method: "POST", body: JSON.stringify(chat({ max_tokens: 1 })) }],
        ["/v1/models", { headers: { authorization: "Bearer wrong" } }],
        ["/v1/models", { headers: { authorization: "sekret" } }],
        // without the key, no route is told apart from another: not 404, not 405
        ["/v1/embeddings", { method: "POST", body: "{}" }],
        ["/admin", {}],
        [CHAT, { method: "GET" }],
        ["/v1/models", { method: "DELETE" }],
        ["/v1/models/gpt-4o", {}],
      ] as [string, RequestInit][]
    ) {
      const res = await fetch(base + path, init);
      assert.equal(res.status, 401, `${init.method ?? "GET"} ${path}`);
      assert.equal((await errorOf(res)).code, "invalid_api_key");
    }
    const authed = { headers: { authorization: "Bearer sekret" } };
    assert.equal(
      (await fetch(`${base}/admin`, authed).then(async (r) => [r.status, await r.json()]))[0],
      404,
    );
    const wrong = new OpenAI({ baseURL: `${base}/v1`, apiKey: "wrong", maxRetries: 0 });
    await assert.rejects(wrong.models.list(), (e: unknown) => e instanceof OpenAI.AuthenticationError);
    assert.deepEqual((await client.models.list()).data.map((m) => m.id), ["sotu-moe-mini"]);
    const done = await client.completions.create({ model: "sotu-moe-mini", prompt: PROMPT, max_tokens: 1 });
    assert.equal(done.choices.length, 1);
  });
});

Deno.test("close() with a stream in flight ends it and shuts down promptly", async () => {
  const engine = await createEngine({ policy: "full", contextLength: CONTEXT });
  const server = createServer(engine, { contextLength: CONTEXT });
  try {
    const http = server.listen({ port: 0 });
    const base = `http://127.0.0.1:${http.addr.port}`;
    const res = await post(base, COMPLETIONS, {
      prompt: PROMPT,
      max_tokens: 200,
      min_tokens: 200,
      stream: true,
    });
    const reading = readEvents(res);
    await new Promise((r) => setTimeout(r, 500));
    const t0 = performance.now();
    await server.close();
    const events = await reading;
    assert.ok(performance.now() - t0 < 20_000);
    assert.ok(events.at(-1)?.includes("server_shutting_down"), String(events.at(-1)));
    assert.throws(() => server.listen({ port: 0 }), /shutting down/);
    await server.close(); // idempotent
  } finally {
    await server.close();
    await engine.close();
  }
});

Deno.test("serve flags: parsed strictly, bad ones are usage errors", () => {
  const a = parseServeArgs(["--port", "0", "--policy", "swapmoe", "--budget", "60%", "--max-queue", "1"]);
  assert.equal(a.port, 0);
  assert.equal(a.host, "127.0.0.1");
  assert.deepEqual(a.engine, { policy: "swapmoe", budget: "60%" });
  assert.equal(a.server.maxQueue, 1);
  assert.equal(a.server.apiKey, undefined);
  assert.equal(parseServeArgs([]).port, 8000);
  assert.equal(parseServeArgs([], { apiKey: "k" }).server.apiKey, "k");
  assert.equal(parseServeArgs(["--api-key", "x"], { apiKey: "k" }).server.apiKey, "x");
  assert.equal(parseServeArgs(["--context-length", "512"]).engine.contextLength, 512);
  assert.equal(parseServeArgs(["--parallel", "8"]).engine.maxBatchSequences, 8);
  assert.equal(parseServeArgs([]).engine.maxBatchSequences, undefined, "from the budget");
  for (
    const bad of [
      ["--bogus"],
      ["--port"],
      ["--port", "abc"],
      ["--port", "70000"],
      ["--port", "-1"],
      ["--policy", "nope"],
      ["--budget", "lots"],
      ["--max-queue", "-1"],
      ["--parallel", "0"],
      ["--parallel", "two"],
      ["--max-tokens", "0"],
      ["--context-length", "0"],
      ["--model", "/nonexistent"],
      ["--api-key", ""],
      ["--host", ""],
      ["positional"],
    ]
  ) {
    assert.throws(() => parseServeArgs(bad), UsageError, bad.join(" "));
  }
});

Deno.test("swapmoe: /metrics reports how its uploads are paced, the step time once measured", async () => {
  await withServer({ engine: { policy: "swapmoe", budget: "70%" } }, async ({ base, engine }) => {
    const before = await metrics(base);
    const pacing = engine.stats().uploadPacing!;
    assert.equal(metric(before, "swapmoe_upload_share"), pacing.share);
    assert.equal(metric(before, "swapmoe_upload_rate_bytes_per_second"), pacing.bytesPerSecond);
    assert.ok(metric(before, "swapmoe_upload_bytes_per_step") > 0);
    // no decode step measured without uploads yet: no sample rather than a made-up one
    assert.doesNotMatch(before, /^swapmoe_decode_step_seconds /m);
    // two 16-step batches of decoding measure it
    const res = await post(base, COMPLETIONS, { prompt: PROMPT, max_tokens: 64, min_tokens: 64 });
    assert.equal(res.status, 200);
    assert.equal((await res.json()).usage.completion_tokens, 64);
    const after = await metrics(base);
    assert.equal(metric(after, "swapmoe_decode_step_seconds"), engine.stats().uploadPacing!.stepSeconds);
    assert.ok(metric(after, "swapmoe_decode_step_seconds") > 0);
    // the waiting between the steps' passes, where the GPU's clock timed them
    const { idleSeconds, clock } = engine.stats().uploadPacing!;
    if (clock === "gpu") {
      assert.equal(metric(after, "swapmoe_decode_step_idle_seconds"), idleSeconds);
      assert.ok(idleSeconds! >= 0 && idleSeconds! < engine.stats().uploadPacing!.stepSeconds!);
    } else {
      assert.equal(idleSeconds, null);
      assert.doesNotMatch(after, /^swapmoe_decode_step_idle_seconds /m);
    }
  });
});
