import assert from "node:assert/strict";
import { harmonyMarkers, type HarmonyPiece, HarmonyReader } from "./harmony.ts";
import { ids, tokenizer } from "../../tests/support/harmony_vocab.ts";

function read(output: string, chunk = 1, stop: string[] = []): HarmonyPiece[] {
  const reader = new HarmonyReader(harmonyMarkers(tokenizer)!, tokenizer, stop);
  const all = ids(output);
  const pieces: HarmonyPiece[] = [];
  for (let i = 0; i < all.length; i += chunk) pieces.push(...reader.push(all.slice(i, i + chunk)));
  pieces.push(...reader.flush());
  // one piece per run of a channel, as a reader of the stream would join them
  const joined: HarmonyPiece[] = [];
  for (const p of pieces) {
    if (joined.at(-1)?.channel === p.channel) joined.at(-1)!.text += p.text;
    else joined.push({ ...p });
  }
  return joined;
}

Deno.test("harmony: analysis then final, split by channel whatever the chunks", () => {
  const out =
    "<|channel|>analysis<|message|>The user asks<|end|><|start|>assistant<|channel|>final<|message|>Hello there";
  for (const chunk of [1, 3, 100]) {
    assert.deepEqual(read(out, chunk), [
      { channel: "analysis", text: "The user asks" },
      { channel: "final", text: "Hello there" },
    ]);
  }
});

Deno.test("harmony: a header naming a recipient and a constraint keeps its channel", () => {
  const out = "<|channel|>commentary to=functions.weather <|constrain|>json<|message|>{}<|call|>";
  assert.deepEqual(read(out), [{ channel: "commentary", text: "{}" }]);
});

Deno.test("harmony: a body without a channel is final; text after <|return|> is no body's", () => {
  assert.deepEqual(read("<|message|>Hello<|return|>there"), [{ channel: "final", text: "Hello" }]);
});

Deno.test("harmony: an output that never opens a body is handed out whole at the end, as final", () => {
  assert.deepEqual(read("Hello there"), [{ channel: "final", text: "Hello there" }]);
});

Deno.test("harmony: a vocabulary without the markers is not harmony", () => {
  assert.equal(harmonyMarkers({ tokenToId: (t) => (t === "<|start|>" ? 1 : undefined) }), undefined);
  const m = harmonyMarkers(tokenizer)!;
  assert.deepEqual([m.start, m.channel, m.message], [0, 1, 2]);
  assert.deepEqual([...m.ends].sort(), [3, 4, 5]);
});

Deno.test("harmony: a stop string ends the output where it begins, and no part of it is handed out", () => {
  const out =
    "<|channel|>analysis<|message|>The user asks<|end|><|start|>assistant<|channel|>final<|message|>Hello there";
  for (const chunk of [1, 3, 100]) {
    assert.deepEqual(read(out, chunk, ["there"]), [
      { channel: "analysis", text: "The user asks" },
      { channel: "final", text: "Hello " },
    ]);
    // in the analysis, it ends the whole output: no final follows
    assert.deepEqual(read(out, chunk, ["asks"]), [{ channel: "analysis", text: "The user " }]);
  }
  // the markers are not text: a stop string never spans two bodies
  assert.equal(read(out, 1, ["asks Hello"]).at(-1)!.text, "Hello there");
  assert.deepEqual(read("Hello there", 1, ["lo t"]), [{ channel: "final", text: "Hel" }]);
});

Deno.test("harmony: while streaming, text that could begin a stop string waits for the next tokens", () => {
  const reader = new HarmonyReader(harmonyMarkers(tokenizer)!, tokenizer, ["Hello there"]);
  assert.deepEqual(reader.push(ids("<|channel|>final<|message|>The Hello")), [{
    channel: "final",
    text: "The ",
  }]);
  assert.deepEqual(reader.push(ids("user")), [{ channel: "final", text: "Hello user" }]);
});
