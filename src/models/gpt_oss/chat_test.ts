/**
 * Chat for gpt-oss: the fixture folder's template and tokenizer as a `messages` request uses them, and
 * the Jinja features OpenAI's harmony template (chat_template.jinja of openai/gpt-oss-20b) relies on —
 * macros, `namespace`, `messages[1:]`, `loop.last`, `in` on strings, `tojson`, `strftime_now`,
 * `raise_exception` — through src/text/tokenizer.ts, with harmony's special tokens as single ids.
 * (The published template itself is not in the repository; it renders with these same features.)
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { TokenizerError } from "../../errors.ts";
import { promptIds } from "../../runtime/requests.ts";
import { Tokenizer } from "../../text/tokenizer.ts";
import { FIXTURES } from "../../../tests/support/hostile.ts";
import { HARMONY_LIKE } from "../../../tests/support/gpt_oss.ts";

const FIXTURE = `${FIXTURES}tiny-gpt-oss`;

Deno.test("gpt-oss chat: the fixture's template renders and encodes as transformers' apply_chat_template", async () => {
  // the fixture carries tokenizer-512 and its template, whose rendering transformers recorded
  for (const f of ["tokenizer.json", "chat_template.jinja"]) {
    assert.equal(
      await Deno.readTextFile(join(FIXTURE, f)),
      await Deno.readTextFile(`${FIXTURES}tokenizer-512/${f}`),
      f,
    );
  }
  const ref = JSON.parse(await Deno.readTextFile(`${FIXTURES}tokenizer-512/reference.json`)).chat;
  const tok = await Tokenizer.load(FIXTURE);
  assert.equal(tok.applyChatTemplate(ref.messages, { addGenerationPrompt: true }), ref.rendered);
  // transformers: apply_chat_template(tokenize=True) encodes the rendering without adding <s> again
  const ids = promptIds(tok, { messages: ref.messages });
  assert.deepEqual(ids, tok.encode(ref.rendered, { addSpecialTokens: false }));
  assert.equal(ids[0], tok.tokenToId("<|system|>"));
  assert.deepEqual(ids.slice(-2), [
    tok.tokenToId("<|assistant|>"),
    tok.encode("\n", { addSpecialTokens: false })[0],
  ]);
});

/** Harmony's markers, added to tokenizer-512 as special tokens 512 … 516 (as o200k_harmony has them). */
const HARMONY_TOKENS = ["<|start|>", "<|message|>", "<|end|>", "<|channel|>", "<|return|>"];

/** tokenizer-512 with harmony's markers added, and `template`, in a temporary folder. */
async function harmonyFolder(template: string, fn: (tok: Tokenizer) => void): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "swapmoe-harmony-" });
  try {
    const json = JSON.parse(await Deno.readTextFile(join(FIXTURE, "tokenizer.json")));
    json.added_tokens.push(...HARMONY_TOKENS.map((content, i) => ({
      id: 512 + i,
      content,
      single_word: false,
      lstrip: false,
      rstrip: false,
      normalized: false,
      special: true,
    })));
    await Deno.writeTextFile(join(dir, "tokenizer.json"), JSON.stringify(json));
    await Deno.copyFile(join(FIXTURE, "tokenizer_config.json"), join(dir, "tokenizer_config.json"));
    await Deno.writeTextFile(join(dir, "chat_template.jinja"), template);
    fn(await Tokenizer.load(dir));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

/** Today's date as strftime("%Y-%m-%d") in local time, as transformers' strftime_now gives it. */
function today(): string {
  const d = new Date();
  return `${d.getFullYear()}-${String(d.getMonth() + 1).padStart(2, "0")}-${
    String(d.getDate()).padStart(2, "0")
  }`;
}

Deno.test("gpt-oss chat: harmony's Jinja features render through the tokenizer, markers as single ids", async () => {
  await harmonyFolder(HARMONY_LIKE, (tok) => {
    const messages = [
      { role: "system", content: "Be brief." },
      { role: "user", content: "State of the Union?" },
      { role: "assistant", content: "Strong." },
      { role: "tool", content: 'say "hi"' },
      { role: "user", content: "Why?" },
    ];
    const date = today();
    const text = tok.applyChatTemplate(messages, { addGenerationPrompt: true });
    assert.equal(
      text,
      `<|start|>system<|message|>Current date: ${date}\n\nReasoning: medium<|end|>` +
        "<|start|>developer<|message|># Instructions\n\nBe brief.<|end|>" +
        "<|start|>user<|message|>State of the Union?<|end|>" +
        "<|start|>assistant<|channel|>final<|message|>Strong.<|end|>" +
        '<|start|>functions to=assistant<|message|>"say \\"hi\\""<|end|>' +
        "<|start|>user<|message|>Why?<|end|>" +
        "<|start|>assistant",
    );
    // a messages request: each marker one id, the text between encoded on its own (transformers splits on
    // added tokens first), no <s> added
    const ids = promptIds(tok, { messages });
    const piece = (s: string) => tok.encode(s, { addSpecialTokens: false });
    const [start, message, end] = [512, 513, 514];
    assert.deepEqual(ids.slice(0, 2 + piece("system").length), [start, ...piece("system"), message]);
    assert.deepEqual(ids.slice(-1 - piece("assistant").length), [start, ...piece("assistant")]);
    assert.equal(ids.filter((id) => id === start).length, 7);
    assert.equal(ids.filter((id) => id === end).length, 6);
    assert.deepEqual(ids, tok.encode(text, { addSpecialTokens: false }));
    // a finished conversation ends its last assistant turn with <|return|> instead of <|end|>
    const done = tok.applyChatTemplate(messages.slice(0, 3));
    assert.ok(done.endsWith("<|start|>assistant<|channel|>final<|message|>Strong.<|return|>"), done);
    // the template's own refusal surfaces as a TokenizerError
    assert.throws(
      () => tok.applyChatTemplate([{ role: "assistant", content: "<|channel|>analysis" }]),
      (e: Error) =>
        e instanceof TokenizerError && e.message.includes("Pass channels in thinking, not content"),
    );
  });
});
