/**
 * Host memory stays flat while decoding: after a warm-up generation, a long one grows the process's
 * RSS by less than a small bound. On Mesa's lavapipe (22.3) a kernel that branched or bounded a loop
 * on a uniform-buffer value was compiled again at every dispatch and the old code never freed: 13 MiB
 * per token of the bundled model, from matmul.wgsl's `gemv8` and router.wgsl's `main` (see
 * shaders/common.wgsl and tests/support/lavapipe_uniform_inlining.ts). This catches that, and any
 * other per-token host allocation that is never released, on whatever adapter the tests run on.
 */
import assert from "node:assert/strict";
import { createEngine, type Engine, formatBytes } from "../mod.ts";

const MiB = 1024 * 1024;

async function generate(engine: Engine, prompt: string, tokens: number, seed: number): Promise<number> {
  let n = 0;
  for await (
    const c of engine.generate({
      prompt,
      maxTokens: tokens,
      minTokens: tokens,
      temperature: 0.8,
      topP: 0.95,
      seed,
    })
  ) n += c.ids.length;
  return n;
}

/** RSS growth over a `tokens`-token generation after a warm-up one (pipelines, allocator, tokenizer). */
async function growth(engine: Engine, prompt: string, tokens: number): Promise<number> {
  await generate(engine, prompt, 16, 1);
  const before = Deno.memoryUsage().rss;
  assert.equal(await generate(engine, prompt, tokens, 2), tokens);
  return Deno.memoryUsage().rss - before;
}

const CASES = [
  // the bundled Mixtral-layout model under swapmoe (swaps run between steps)
  { name: "sotu-moe-mini", model: undefined, policy: "swapmoe", tokens: 96 },
  // encoder-decoder: its own attention and elementwise kernels
  {
    name: "tiny-switch",
    model: new URL("./fixtures/tiny-switch/", import.meta.url).pathname,
    policy: "full",
    tokens: 48,
  },
] as const;

for (const c of CASES) {
  Deno.test(`host memory: ${c.name}: ${c.tokens} decoded tokens grow RSS by less than 24 MiB`, async () => {
    await using engine = await createEngine({ model: c.model, policy: c.policy });
    const grown = await growth(engine, "The state of the Union is", c.tokens);
    assert.ok(
      grown < 24 * MiB,
      `RSS grew by ${formatBytes(grown)} over ${c.tokens} tokens (${
        (grown / c.tokens / 1024).toFixed(0)
      } KiB per token) on ${engine.stats().gpu.description}`,
    );
  });
}
