/** generation_config.json: min_new_tokens read and checked; the file optional. */
import assert from "node:assert/strict";
import { ConfigError } from "../errors.ts";
import { readGenerationConfig } from "./generation_config.ts";

Deno.test("readGenerationConfig: min_new_tokens, nothing without the file or the field", async () => {
  const dir = await Deno.makeTempDir({ prefix: "swapmoe-genconfig-" });
  const file = `${dir}/generation_config.json`;
  try {
    assert.deepEqual(await readGenerationConfig(dir), {});
    for (
      const [json, want] of [[{ eos_token_id: 2 }, {}], [{ min_new_tokens: null }, {}], [{
        min_new_tokens: 0,
      }, {
        minTokens: 0,
      }], [{ min_new_tokens: 8, max_new_tokens: 3 }, { minTokens: 8 }]] as const
    ) {
      await Deno.writeTextFile(file, JSON.stringify(json));
      assert.deepEqual(await readGenerationConfig(dir), want, JSON.stringify(json));
    }
    for (
      const [text, part] of [
        [
          `{"min_new_tokens": -1}`,
          "Invalid min_new_tokens in generation_config.json: -1, expected an integer >= 0",
        ],
        [`{"min_new_tokens": 1.5}`, "Invalid min_new_tokens in generation_config.json: 1.5"],
        [`{"min_new_tokens": "8"}`, 'Invalid min_new_tokens in generation_config.json: "8"'],
        [`{"min_new_tokens": 8`, "generation_config.json is not valid JSON"],
        [`[8]`, "generation_config.json must hold a JSON object"],
      ] as const
    ) {
      await Deno.writeTextFile(file, text);
      await assert.rejects(readGenerationConfig(dir), (e: Error) => {
        assert.ok(e instanceof ConfigError, String(e));
        assert.ok(e.message.startsWith(part), e.message);
        assert.equal(e.file, file);
        return true;
      });
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
