import assert from "node:assert/strict";
import type { GenerateChunk } from "../runtime/types.ts";
import { harmonyMarkers, HarmonyReader } from "../text/harmony.ts";
import { ids, tokenizer } from "../../tests/support/harmony_vocab.ts";
import { Answer, type StartedJob } from "./openai.ts";
import type { ChatCompletion, ChatCompletionChunk } from "./openai_types.ts";

const OUTPUT =
  "<|channel|>analysis<|message|>The user asks<|end|><|start|>assistant<|channel|>final<|message|>Hello there";

/** A chat job answered by the harmony output above, read back in chunks of three tokens. */
function started(stream: boolean, harmony = true, stop: string[] = []): StartedJob {
  const all = ids(OUTPUT);
  async function* chunks(): AsyncGenerator<GenerateChunk> {
    for (let i = 0; i < all.length; i += 3) {
      const last = i + 3 >= all.length;
      yield {
        ids: all.slice(i, i + 3),
        text: "(plain text, unused for harmony)",
        ...(last ? { finishReason: "stop" as const } : {}),
      };
    }
  }
  return {
    job: {
      kind: "chat",
      request: { maxTokens: 32, stop },
      maxTokensParam: "max_tokens",
      stream,
      includeUsage: false,
    },
    id: "chatcmpl-test",
    created: 0,
    model: "gpt-oss",
    promptTokens: 7,
    chunks: chunks(),
    signal: undefined,
    harmony: harmony ? new HarmonyReader(harmonyMarkers(tokenizer)!, tokenizer, stop) : undefined,
  };
}

Deno.test("openai: a harmony answer's final channel is the content, its analysis the reasoning_content", async () => {
  const whole = (await new Answer(started(false)).whole()) as ChatCompletion;
  const message = whole.choices[0]!.message;
  assert.equal(message.content, "Hello there");
  assert.equal(message.reasoning_content, "The user asks");
  assert.equal(whole.usage.completion_tokens, ids(OUTPUT).length);
});

Deno.test("openai: streamed, the analysis comes as reasoning_content deltas before the content", async () => {
  const deltas: ChatCompletionChunk["choices"][number]["delta"][] = [];
  for await (const c of new Answer(started(true)).stream()) {
    deltas.push((c as ChatCompletionChunk).choices[0]!.delta);
  }
  assert.deepEqual(deltas[0], { role: "assistant", content: "" });
  const reasoning = deltas.map((d) => d.reasoning_content ?? "").join("");
  const content = deltas.map((d) => d.content ?? "").join("");
  assert.equal(reasoning, "The user asks");
  assert.equal(content, "Hello there");
  const firstContent = deltas.findIndex((d, i) => i > 0 && d.content);
  assert.ok(deltas.slice(firstContent).every((d) => d.reasoning_content === undefined));
  assert.deepEqual(deltas.at(-1), {}); // the finish chunk
});

Deno.test("openai: without harmony the engine's text is the content, and there is no reasoning_content", async () => {
  const whole = (await new Answer(started(false, false)).whole()) as ChatCompletion;
  const message = whole.choices[0]!.message;
  assert.match(message.content, /^\(plain text, unused for harmony\)+/);
  assert.equal("reasoning_content" in message, false);
});

Deno.test("openai: a stop string is cut from a harmony answer's content, streamed or whole", async () => {
  const whole = (await new Answer(started(false, true, ["there"])).whole()) as ChatCompletion;
  assert.equal(whole.choices[0]!.message.content, "Hello ");
  let streamed = "";
  for await (const c of new Answer(started(true, true, ["there"])).stream()) {
    streamed += (c as ChatCompletionChunk).choices[0]?.delta.content ?? "";
  }
  assert.equal(streamed, "Hello ");
});

Deno.test("openai: a harmony answer's stop strings end it in its channels' text, not in the markers' words", async () => {
  // "final" is a header word: no stop; "asks" in the analysis ends the answer there
  const unstopped = (await new Answer(started(false, true, ["final"])).whole()) as ChatCompletion;
  assert.equal(unstopped.choices[0]!.message.content, "Hello there");
  const job = started(false, true, ["asks"]);
  const whole = (await new Answer(job).whole()) as ChatCompletion;
  assert.equal(whole.choices[0]!.message.reasoning_content, "The user ");
  assert.equal(whole.choices[0]!.message.content, "");
  assert.equal(whole.choices[0]!.finish_reason, "stop");
  // the engine's generation was ended: its generator returned, with chunks left unread
  assert.equal((await job.chunks.next()).done, true);
});
