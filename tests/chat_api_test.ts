/**
 * The in-process OpenAI API and the usage on `generate`'s last chunk, on the bundled model:
 * `engine.chat.completions.create` and `engine.completions.create` answer with what the server sends
 * for the same request and seed (field by field, but the id and the time), plain and streamed; bad
 * requests throw the typed errors whose status, param, code and message the server answers with; a
 * signal cancels a request waiting or running; and `createHandler` serves from a `Deno.serve` of the
 * caller's own, to the official `openai` client.
 */
import assert from "node:assert/strict";
import OpenAI from "npm:openai@7.59.0";
import {
  type ChatCompletion,
  type ChatCompletionChunk,
  type Completion,
  createEngine,
  createHandler,
  type Engine,
  EngineClosedError,
  type GenerateChunk,
  OptionError,
  RequestError,
  SwapMoeError,
} from "../mod.ts";
import { createServer } from "../src/server/server.ts";

const CONTEXT = 256;
const PROMPT = "The state of the Union is";
const MESSAGES = [{ role: "user" as const, content: "What is the state of the Union?" }];

async function withEngine(fn: (engine: Engine) => Promise<void>): Promise<void> {
  const engine = await createEngine({ policy: "full", contextLength: CONTEXT });
  try {
    await fn(engine);
  } finally {
    await engine.close();
  }
}

/** Serves `engine` on a free loopback port for `fn`, through `createServer`. */
async function withServer(engine: Engine, fn: (base: string) => Promise<void>): Promise<void> {
  const server = createServer(engine, { contextLength: CONTEXT });
  try {
    const http = server.listen({ port: 0 });
    await fn(`http://127.0.0.1:${http.addr.port}`);
  } finally {
    await server.close();
  }
}

function post(base: string, path: string, body: unknown): Promise<Response> {
  return fetch(base + path, { method: "POST", body: JSON.stringify(body) });
}

/** The `data:` payloads of a server-sent event stream, parsed, without the closing `[DONE]`. */
async function events(res: Response): Promise<unknown[]> {
  const text = await res.text();
  const data = text.split("\n\n").filter((b) => b.startsWith("data: ")).map((b) => b.slice(6));
  assert.equal(data.at(-1), "[DONE]");
  return data.slice(0, -1).map((d) => JSON.parse(d));
}

/** `o` without the fields that differ between two answers to the same request: the id and the time. */
function sansId<T extends { id: string; created: number }>(o: T): Omit<T, "id" | "created"> {
  const { id: _, created: __, ...rest } = o;
  return rest;
}

/** Asserts one id for every chunk, of the right kind, created now. */
function assertOneAnswer(chunks: { id: string; created: number }[], prefix: string): void {
  assert.ok(chunks.length > 0);
  assert.match(chunks[0]!.id, new RegExp(`^${prefix}-[0-9a-f]{32}$`));
  for (const c of chunks) assert.equal(c.id, chunks[0]!.id);
  for (const c of chunks) assert.equal(c.created, chunks[0]!.created);
  assert.ok(Math.abs(chunks[0]!.created - Date.now() / 1000) < 600);
}

async function collect<T>(stream: AsyncIterable<T>): Promise<T[]> {
  const out: T[] = [];
  for await (const c of stream) out.push(c);
  return out;
}

Deno.test("generate: the last chunk carries the request's usage (tokens handed out, time to first token, rates)", async () => {
  await withEngine(async (engine) => {
    const promptTokens = engine.tokenizer.encode(PROMPT).length;
    const chunks: GenerateChunk[] = [];
    for await (const c of engine.generate({ prompt: PROMPT, maxTokens: 6, minTokens: 6, seed: 1 })) {
      chunks.push(c);
    }
    assert.deepEqual(
      chunks.map((c) => c.usage !== undefined),
      chunks.map((c) => c.finishReason !== undefined),
    );
    const last = chunks.at(-1)!;
    assert.equal(last.finishReason, "length");
    const u = last.usage!;
    assert.equal(u.promptTokens, promptTokens);
    assert.equal(u.completionTokens, 6);
    assert.equal(u.totalTokens, promptTokens + 6);
    assert.equal(chunks.flatMap((c) => c.ids).length, 6);
    assert.ok(u.timeToFirstTokenSeconds > 0);
    assert.ok(u.totalSeconds >= u.timeToFirstTokenSeconds);
    assert.ok(u.queueSeconds >= 0 && u.queueSeconds < u.timeToFirstTokenSeconds);
    for (const rate of [u.prefillTokensPerSecond, u.decodeTokensPerSecond]) {
      assert.ok(Number.isFinite(rate) && rate > 0, `rate ${rate}`);
    }

    // a request that waits behind another counts its wait; the prompt as ids counts as given
    const first = engine.generate({ ids: [1, 5, 9], maxTokens: 4, minTokens: 4 });
    const second = engine.generate({ ids: [1, 5], maxTokens: 2, minTokens: 2 });
    const firstDone = collect(first);
    const secondChunks = await collect(second);
    const firstUsage = (await firstDone).at(-1)!.usage!;
    const secondUsage = secondChunks.at(-1)!.usage!;
    assert.equal(firstUsage.promptTokens, 3);
    assert.equal(firstUsage.completionTokens, 4);
    assert.equal(secondUsage.promptTokens, 2);
    assert.equal(secondUsage.completionTokens, 2);
    assert.ok(secondUsage.queueSeconds > 0, "the second waited for the first");

    // cancelled before it started: one empty chunk, nothing generated
    const ac = new AbortController();
    ac.abort();
    const aborted = await collect(engine.generate({ prompt: PROMPT, maxTokens: 4, signal: ac.signal }));
    assert.equal(aborted.length, 1);
    assert.equal(aborted[0]!.finishReason, "abort");
    assert.equal(aborted[0]!.usage!.completionTokens, 0);
    assert.equal(aborted[0]!.usage!.timeToFirstTokenSeconds, 0);
  });
});

Deno.test("chat.completions.create and completions.create answer as the server does, plain and streamed", async () => {
  await withEngine(async (engine) => {
    await withServer(engine, async (base) => {
      const sampled = { temperature: 0.9, top_p: 0.95, seed: 7, min_tokens: 6 };
      const chatBody = { model: "sotu-moe-mini", messages: MESSAGES, max_tokens: 6, ...sampled };

      const local: ChatCompletion = await engine.chat.completions.create(chatBody);
      const served = await (await post(base, "/v1/chat/completions", chatBody)).json();
      assertOneAnswer([local], "chatcmpl");
      assert.notEqual(local.id, served.id);
      assert.deepEqual(sansId(local), sansId(served));
      const rendered = engine.tokenizer.applyChatTemplate(MESSAGES, { addGenerationPrompt: true });
      const promptTokens = engine.tokenizer.encode(rendered, { addSpecialTokens: false }).length;
      assert.deepEqual(local.usage, {
        prompt_tokens: promptTokens,
        completion_tokens: 6,
        total_tokens: promptTokens + 6,
      });
      assert.equal(local.choices[0]!.finish_reason, "length");
      assert.ok(local.choices[0]!.message.content.length > 0);

      // streamed with include_usage: the role, the text, the finish reason, then the usage chunk
      const streamBody = { ...chatBody, stream: true as const, stream_options: { include_usage: true } };
      const localChunks: ChatCompletionChunk[] = await collect(
        await engine.chat.completions.create(streamBody),
      );
      const servedChunks = await events(
        await post(base, "/v1/chat/completions", streamBody),
      ) as ChatCompletionChunk[];
      assertOneAnswer(localChunks, "chatcmpl");
      assert.deepEqual(localChunks.map(sansId), servedChunks.map(sansId));
      assert.equal(localChunks[0]!.choices[0]!.delta.role, "assistant");
      assert.equal(
        localChunks.map((c) => c.choices[0]?.delta.content ?? "").join(""),
        local.choices[0]!.message.content,
      );
      assert.equal(localChunks.at(-2)!.choices[0]!.finish_reason, "length");
      assert.deepEqual(localChunks.at(-1)!.choices, []);
      assert.deepEqual(localChunks.at(-1)!.usage, local.usage);
      assert.ok(localChunks.slice(0, -1).every((c) => c.usage === null));

      // text completions, whole and streamed without usage
      const completionBody = { prompt: PROMPT, max_tokens: 5, ...sampled, stop: ["\n\n\n"] };
      const text: Completion = await engine.completions.create(completionBody);
      const servedText = await (await post(base, "/v1/completions", completionBody)).json();
      assertOneAnswer([text], "cmpl");
      assert.deepEqual(sansId(text), sansId(servedText));
      assert.equal(text.usage!.completion_tokens, 5);
      const textChunks = await collect(await engine.completions.create({ ...completionBody, stream: true }));
      const servedTextChunks = await events(
        await post(base, "/v1/completions", { ...completionBody, stream: true }),
      ) as Completion[];
      assertOneAnswer(textChunks, "cmpl");
      assert.deepEqual(textChunks.map(sansId), servedTextChunks.map(sansId));
      assert.equal(textChunks.map((c) => c.choices[0]!.text).join(""), text.choices[0]!.text);
      assert.ok(textChunks.every((c) => !("usage" in c)));
    });
  });
});

/** Bad bodies for both ways in: the in-process error must be what the server answers. */
const BAD: {
  name: string;
  path: "/v1/chat/completions" | "/v1/completions";
  body: unknown;
  param: string | null;
}[] = [
  { name: "missing messages", path: "/v1/chat/completions", body: {}, param: "messages" },
  { name: "body a list", path: "/v1/chat/completions", body: [1], param: "body" },
  {
    name: "unknown role",
    path: "/v1/chat/completions",
    body: { messages: [{ role: "wizard", content: "x" }] },
    param: "messages[0].role",
  },
  {
    name: "image part",
    path: "/v1/chat/completions",
    body: { messages: [{ role: "user", content: [{ type: "image_url" }] }] },
    param: "messages[0].content[0].type",
  },
  {
    name: "unknown model",
    path: "/v1/chat/completions",
    body: { messages: MESSAGES, model: "gpt-4o" },
    param: "model",
  },
  {
    name: "temperature 3",
    path: "/v1/chat/completions",
    body: { messages: MESSAGES, temperature: 3 },
    param: "temperature",
  },
  {
    name: 'max_tokens "10"',
    path: "/v1/chat/completions",
    body: { messages: MESSAGES, max_tokens: "10" },
    param: "max_tokens",
  },
  {
    name: "max_tokens past the context",
    path: "/v1/chat/completions",
    body: { messages: MESSAGES, max_tokens: CONTEXT - 2 },
    param: "max_tokens",
  },
  { name: "n 2", path: "/v1/chat/completions", body: { messages: MESSAGES, n: 2 }, param: "n" },
  {
    name: "tools",
    path: "/v1/chat/completions",
    body: { messages: MESSAGES, tools: [{ type: "function" }] },
    param: "tools",
  },
  {
    name: "stop a number",
    path: "/v1/chat/completions",
    body: { messages: MESSAGES, stop: 5 },
    param: "stop",
  },
  {
    name: "stream_options true",
    path: "/v1/chat/completions",
    body: { messages: MESSAGES, stream: true, stream_options: true },
    param: "stream_options",
  },
  {
    name: "prompt too many bytes",
    path: "/v1/completions",
    body: { prompt: "x ".repeat(10_000) },
    param: "prompt",
  },
  {
    name: "prompt too many tokens",
    path: "/v1/completions",
    body: { prompt: "war ".repeat(2 * CONTEXT) },
    param: "prompt",
  },
  { name: "two prompts", path: "/v1/completions", body: { prompt: ["a", "b"] }, param: "prompt" },
  { name: "token id out of range", path: "/v1/completions", body: { prompt: [1, 99999] }, param: "prompt" },
  { name: "echo", path: "/v1/completions", body: { prompt: PROMPT, echo: true }, param: "echo" },
];

Deno.test("bad requests throw the typed errors the server answers with (status, param, code, message)", async (t) => {
  await withEngine(async (engine) => {
    await withServer(engine, async (base) => {
      for (const bad of BAD) {
        await t.step(bad.name, async () => {
          const create = bad.path === "/v1/chat/completions"
            ? engine.chat.completions.create(bad.body as never)
            : engine.completions.create(bad.body as never);
          const e = await create.then(() => assert.fail("no error"), (e) => e);
          assert.ok(e instanceof RequestError, String(e));
          assert.ok(e instanceof OptionError && e instanceof SwapMoeError);
          assert.equal(e.name, "RequestError");
          assert.equal(e.param, bad.param);
          const res = await post(base, bad.path, bad.body);
          const { error } = await res.json();
          assert.deepEqual(
            { status: e.status, param: e.param, code: e.code, message: e.message },
            { status: res.status, param: error.param, code: error.code, message: error.message },
          );
        });
      }
      // the second argument is OpenAI's request options: { signal }
      await assert.rejects(
        engine.chat.completions.create({ messages: MESSAGES }, "fast" as never),
        (e) => e instanceof OptionError && /^Invalid request options/.test(e.message),
      );
      await assert.rejects(
        engine.chat.completions.create({ messages: MESSAGES }, { signal: {} as AbortSignal }),
        (e) => e instanceof OptionError && /^Invalid signal/.test(e.message),
      );
      assert.equal(engine.stats().tokens, 0, "no bad request reached the GPU");
    });
  });
  const closed = await createEngine({ policy: "full", contextLength: CONTEXT });
  await closed.close();
  await assert.rejects(closed.chat.completions.create({ messages: MESSAGES }), EngineClosedError);
});

Deno.test("a signal cancels an in-process request before, while waiting and while running, plain or streamed", async () => {
  await withEngine(async (engine) => {
    const long = { messages: MESSAGES, max_tokens: 200, min_tokens: 200 };
    const reason = new Error("changed my mind");

    // aborted before: rejected with the reason, nothing runs
    await assert.rejects(
      engine.chat.completions.create(long, { signal: AbortSignal.abort(reason) }),
      (e) => e === reason,
    );
    assert.equal(engine.stats().tokens, 0);

    // running, plain: rejected with an AbortError at once; the engine stops within a few batches
    const running = new AbortController();
    const plain = engine.chat.completions.create(long, { signal: running.signal });
    while (engine.stats().decodeTokens === 0 && engine.stats().prefillTokens === 0) {
      await new Promise((r) => setTimeout(r, 50));
    }
    running.abort();
    await assert.rejects(plain, (e) => e instanceof DOMException && e.name === "AbortError");

    // running, streamed: the next read throws the reason; a waiting request is cancelled without
    // waiting for the running one
    const streaming = new AbortController();
    const stream = await engine.chat.completions.create({ ...long, stream: true }, {
      signal: streaming.signal,
    });
    const it = stream[Symbol.asyncIterator]();
    assert.equal((await it.next()).value?.choices[0]?.delta.role, "assistant");
    assert.equal(typeof (await it.next()).value?.choices[0]?.delta.content, "string", "text came");
    const waiting = new AbortController();
    const queued = engine.completions.create({ prompt: PROMPT, max_tokens: 2 }, { signal: waiting.signal });
    waiting.abort(reason);
    await assert.rejects(queued, (e) => e === reason);
    const decodedAtAbort = engine.stats().decodeTokens;
    streaming.abort(reason);
    await assert.rejects(it.next(), (e) => e === reason);
    assert.equal((await it.next()).done, true, "the stream is over");

    // the engine is free again: a new request completes, and few tokens ran after the aborts
    const after = await engine.completions.create({ prompt: PROMPT, max_tokens: 2, min_tokens: 2 });
    assert.equal(after.usage!.completion_tokens, 2);
    const decodedAfter = engine.stats().decodeTokens - decodedAtAbort;
    assert.ok(decodedAfter <= 3 * 16 + 2, `${decodedAfter} tokens decoded after the abort`);
    assert.ok(engine.stats().decodeTokens < 200, `decoded ${engine.stats().decodeTokens} tokens`);

    // leaving a stream early ends its generation too
    const left = await engine.completions.create({
      prompt: PROMPT,
      max_tokens: 200,
      min_tokens: 200,
      stream: true,
    });
    for await (const c of left) if (c.choices[0]?.text) break;
    const next = await engine.completions.create({ prompt: PROMPT, max_tokens: 1 });
    assert.equal(next.choices.length, 1);
    assert.ok(engine.stats().decodeTokens < 300);
  });
});

Deno.test("createHandler serves from the caller's own Deno.serve: the openai client, /health; its signal stops it", async () => {
  await withEngine(async (engine) => {
    const stop = new AbortController();
    const handler = createHandler(engine, { signal: stop.signal });
    const http = Deno.serve(
      { port: 0, hostname: "127.0.0.1", signal: stop.signal, onListen: () => {} },
      handler,
    );
    try {
      const base = `http://127.0.0.1:${http.addr.port}`;
      const health = await fetch(`${base}/health`);
      assert.equal(health.status, 200);
      assert.deepEqual(await health.json(), { status: "ok", model: "sotu-moe-mini", running: 0, waiting: 0 });

      const client = new OpenAI({ baseURL: `${base}/v1`, apiKey: "unused", maxRetries: 0 });
      const chat = await client.chat.completions.create({
        model: "sotu-moe-mini",
        messages: MESSAGES,
        max_tokens: 3,
        temperature: 0,
      });
      assert.equal(chat.object, "chat.completion");
      assert.equal(chat.usage!.total_tokens, chat.usage!.prompt_tokens + chat.usage!.completion_tokens);
      // in-process, greedy: the same answer
      const local = await engine.chat.completions.create({
        messages: MESSAGES,
        max_tokens: 3,
        temperature: 0,
      });
      assert.equal(local.choices[0]!.message.content, chat.choices[0]!.message.content);
      assert.deepEqual(local.usage, chat.usage);

      // the handler answers without a listener too
      const direct = await handler(new Request("http://any/v1/models"));
      assert.deepEqual((await direct.json()).data.map((m: { id: string }) => m.id), ["sotu-moe-mini"]);
    } finally {
      stop.abort();
      await http.finished;
    }
    const after = await handler(new Request("http://any/v1/models"));
    assert.equal(after.status, 503);
    assert.equal((await after.json()).error.code, "server_shutting_down");
    assert.throws(() => createHandler(engine, { maxQueue: -1 }), OptionError);
  });
});

Deno.test("engine.close() during an in-process stream ends it with an EngineClosedError, not a made-up finish", async () => {
  const engine = await createEngine({ policy: "full", contextLength: CONTEXT });
  try {
    const stream = await engine.completions.create({
      prompt: PROMPT,
      max_tokens: 200,
      min_tokens: 200,
      stream: true,
    });
    const it = stream[Symbol.asyncIterator]();
    assert.ok((await it.next()).value?.choices[0]?.text, "text came");
    await engine.close();
    await assert.rejects(it.next(), EngineClosedError);
  } finally {
    await engine.close();
  }
});
