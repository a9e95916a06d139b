/**
 * The checkpoint's generation_config.json: `min_new_tokens` is the default of a request's
 * `minTokens` (a request's own value wins), and the bundled model ships one, so that a chat request
 * with default settings gets an answer rather than an end of turn at once.
 */
import assert from "node:assert/strict";
import { createEngine, type GenerateChunk } from "../mod.ts";
import { copyFixture, editJson } from "./support/hostile.ts";

/** The ids of a generation and how it finished. */
async function run(chunks: AsyncIterable<GenerateChunk>): Promise<{ ids: number[]; finish?: string }> {
  const ids: number[] = [];
  let finish: string | undefined;
  for await (const c of chunks) {
    ids.push(...c.ids);
    finish = c.finishReason ?? finish;
  }
  return { ids, finish };
}

Deno.test("generation_config.json: min_new_tokens holds the end of sequence back unless the request says", async () => {
  const dir = await copyFixture("tiny-olmoe");
  try {
    const request = { ids: [1, 2, 3], maxTokens: 12 };
    // the token greedy decoding picks first becomes the end of sequence: generation then ends at once
    let first: number;
    {
      await using engine = await createEngine({ model: dir });
      first = (await run(engine.generate({ ...request, minTokens: 1 }))).ids[0]!;
    }
    editJson(`${dir}/config.json`, (c) => void (c.eos_token_id = first));
    {
      await using engine = await createEngine({ model: dir });
      assert.deepEqual(await run(engine.generate(request)), { ids: [], finish: "stop" });
    }
    editJson(`${dir}/generation_config.json`, (g) => void (g.min_new_tokens = 5));
    await using engine = await createEngine({ model: dir });
    const held = await run(engine.generate(request));
    assert.ok(held.ids.length >= 5, `${held.ids.length} tokens before the end of sequence`);
    assert.ok(!held.ids.slice(0, 5).includes(first), "an end of sequence within min_new_tokens");
    // the request's own minTokens wins over the checkpoint's
    assert.deepEqual(await run(engine.generate({ ...request, minTokens: 0 })), { ids: [], finish: "stop" });
    assert.equal((await run(engine.generate({ ...request, minTokens: 7 }))).ids.length >= 7, true);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("sotu-moe-mini: a chat request with default settings gets a non-empty answer (library)", async () => {
  // every expert (the library's default): what one request gives does not depend on the one before
  await using engine = await createEngine({ contextLength: 256 });
  const messages = [{ role: "user" as const, content: "The state of the Union" }];
  // greedy, as `chat` on the command line: without min_new_tokens the model ends its turn at once
  assert.equal((await run(engine.generate({ messages, minTokens: 0 }))).ids.length, 0, "the model's habit");
  let text = "";
  let ids = 0;
  for await (const c of engine.generate({ messages })) {
    text += c.text;
    ids += c.ids.length;
  }
  assert.ok(ids >= 8, `${ids} tokens`);
  assert.ok(text.trim().length > 0, JSON.stringify(text));
  // OpenAI's API in-process, its defaults (temperature 1), plain and streamed
  for (const seed of [1, 2, 3]) {
    const reply = await engine.chat.completions.create({ messages, max_tokens: 16, seed });
    assert.ok(reply.choices[0]!.message.content!.trim().length > 0, `seed ${seed}: empty content`);
    assert.ok(reply.usage.completion_tokens >= 8, `seed ${seed}: ${reply.usage.completion_tokens} tokens`);
  }
  let streamed = "";
  for await (const c of await engine.chat.completions.create({ messages, max_tokens: 16, stream: true })) {
    streamed += c.choices[0]?.delta.content ?? "";
  }
  assert.ok(streamed.trim().length > 0, "empty streamed content");
});
