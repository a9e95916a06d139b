/**
 * Parity against Hugging Face transformers (the oracle): for each tiny checkpoint, every prompt's
 * logits within 1e-3 × max(1, max|reference|), greedy ids exactly, and the same under masked
 * routing with `policy: "static"` against `masked_logits` / `masked_greedy`.
 */
import assert from "node:assert/strict";
import { createEngine } from "../mod.ts";
import { SafetensorsFile } from "../src/checkpoint/safetensors.ts";
import { logitError } from "./support/logits.ts";

interface Reference {
  greedy_new_tokens: number;
  masked_routing: { allowed: number[][] };
  prompts: { text: string; ids: number[]; greedy: number[]; masked_greedy: number[] }[];
}

const FIXTURES = new URL("./fixtures/", import.meta.url);
// tiny-gpt-oss: experts in MXFP4 as published, read and kept in MXFP4 (its references come from
// transformers on the dequantized weights, which are exact in bf16)
const MODELS = ["tiny-mixtral", "tiny-qwen2-moe", "tiny-qwen3-moe", "tiny-olmoe", "tiny-gpt-oss"];

async function greedy(
  engine: Awaited<ReturnType<typeof createEngine>>,
  ids: number[],
  n: number,
): Promise<number[]> {
  const out: number[] = [];
  // transformers' references were made with min_new_tokens = n: end-of-sequence is suppressed
  for await (const c of engine.generate({ ids, maxTokens: n, minTokens: n, temperature: 0 })) {
    out.push(...c.ids);
  }
  return out;
}

/** Every prompt's logits and greedy ids of the checkpoint in `dir` against its references, full or masked. */
async function checkParity(dir: string, masked: boolean): Promise<void> {
  const ref: Reference = JSON.parse(await Deno.readTextFile(`${dir}reference.json`));
  using logits = SafetensorsFile.open(`${dir}reference.safetensors`);
  await using engine = await createEngine(
    masked ? { model: dir, policy: "static", residentExperts: ref.masked_routing.allowed } : { model: dir },
  );
  for (const [i, p] of ref.prompts.entries()) {
    const want = logits.bytes(`p${i}.${masked ? "masked_logits" : "logits"}`);
    const expected = new Float32Array(want.buffer, want.byteOffset, want.byteLength / 4);
    const { err, tol } = logitError(await engine.forward(p.ids), expected);
    assert.ok(err <= tol, `prompt ${i}: max logit error ${err} > ${tol}`);
    const ids = await greedy(engine, p.ids, ref.greedy_new_tokens);
    assert.deepEqual(ids, masked ? p.masked_greedy : p.greedy, `prompt ${i}: greedy ids`);
  }
  if (masked) assert.deepEqual(engine.stats().residentExperts, ref.masked_routing.allowed);
}

for (const name of MODELS) {
  const dir = new URL(`${name}/`, FIXTURES).pathname;
  for (const masked of [false, true]) {
    Deno.test(`${name}: ${masked ? "masked routing (static)" : "logits and greedy ids"} match transformers`, async () => {
      await checkParity(dir, masked);
    });
  }
}

/**
 * gpt-oss configurations tiny-gpt-oss does not cover, made as it was (random weights with random biases,
 * experts quantized to MXFP4, transformers' references on the dequantized weights) by
 * tests/support/make_gpt_oss_variants.py on the GPU machine (transformers 5.17, PyTorch 2.11):
 * `python3 tests/support/make_gpt_oss_variants.py tests/fixtures` writes these folders.
 */
for (
  const [name, what] of [
    ["tiny-gpt-oss-4layers", "the published layer_types pattern over 4 layers"],
    ["tiny-gpt-oss-e16", "16 experts, top-4"],
    ["tiny-gpt-oss-tied", "a tied head"],
    ["tiny-gpt-oss-window3", "a 3-key window"],
    ["tiny-gpt-oss-truncate", "YaRN with truncate"],
  ] as const
) {
  const dir = new URL(`${name}/`, FIXTURES).pathname;
  for (const masked of [false, true]) {
    Deno.test({
      name: `${name} (${what}): ${
        masked ? "masked routing (static)" : "logits and greedy ids"
      } match transformers`,
      fn: () => checkParity(dir, masked),
    });
  }
}

/**
 * Configurations the four fixtures do not cover, made from them by tests/support/make_variant.py with
 * transformers' outputs: a dense first layer (`mlp_only_layers: [0]`) with a tied head on Qwen2-MoE, and
 * `decoder_sparse_step: 2` (layer 0 dense) on Qwen3-MoE.
 */
for (
  const [name, what] of [
    ["tiny-qwen2-moe-dense-tied", "mlp_only_layers [0] and a tied head"],
    ["tiny-qwen3-moe-step2", "decoder_sparse_step 2"],
  ] as const
) {
  Deno.test(`${name}: ${what} match transformers`, async () => {
    const dir = new URL(`${name}/`, FIXTURES).pathname;
    const ref: Reference = JSON.parse(await Deno.readTextFile(`${dir}reference.json`));
    using logits = SafetensorsFile.open(`${dir}reference.safetensors`);
    await using engine = await createEngine({ model: dir });
    // one MoE layer of two: layer 0 is a dense MLP
    assert.equal(engine.stats().expertSlots.length, 1);
    const errors: number[] = [];
    for (const [i, p] of ref.prompts.entries()) {
      const want = logits.bytes(`p${i}.logits`);
      const expected = new Float32Array(want.buffer, want.byteOffset, want.byteLength / 4);
      const { err, tol } = logitError(await engine.forward(p.ids), expected);
      assert.ok(err <= tol, `prompt ${i}: max logit error ${err} > ${tol}`);
      errors.push(err);
      assert.deepEqual(
        await greedy(engine, p.ids, ref.greedy_new_tokens),
        p.greedy,
        `prompt ${i}: greedy ids`,
      );
    }
    console.log(`  max logit error per prompt: ${errors.map((e) => e.toExponential(2)).join(", ")}`);
  });
}

// Calls of up to 32 rows run a SwiGLU MLP fused (gate and up in one GEMV, the shared expert's sigmoid
// gate inside its down projection), longer calls apart (tiled matmuls, SiLU·mul, the gate's GEMV and
// gated add); the prompts above are all short, so a long one checks the second way against the first.
for (const name of ["tiny-qwen2-moe", "tiny-qwen2-moe-dense-tied"]) {
  Deno.test(`${name}: a prompt in one call of 80 rows gives the logits of calls of 8 (MLPs apart, fused)`, async () => {
    const dir = new URL(`${name}/`, FIXTURES).pathname;
    const ref: Reference = JSON.parse(await Deno.readTextFile(`${dir}reference.json`));
    const ids = ref.prompts.flatMap((p) => p.ids).concat(ref.prompts.flatMap((p) => p.ids)).slice(0, 80);
    assert.equal(ids.length, 80);
    const logits = [];
    for (const maxBatchTokens of [80, 8]) {
      await using engine = await createEngine({ model: dir, maxBatchTokens });
      logits.push(await engine.forward(ids));
    }
    const { err } = logitError(logits[0]!, logits[1]!);
    let max = 0;
    for (const v of logits[1]!) max = Math.max(max, Math.abs(v));
    assert.ok(err <= 1e-5 * Math.max(1, max), `max logit difference ${err} (largest logit ${max})`);
  });
}
