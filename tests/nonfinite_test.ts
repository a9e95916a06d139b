/**
 * Weights that hold NaN or infinity give a {@link NonFiniteError} naming the likely cause, not silent
 * garbage (ids 4294967295, empty text, `perplexity NaN`): the sampler flags the row on the GPU, so
 * `generate` reads no more than it did, and perplexity checks each position's loss. Each test corrupts
 * a copy of a tiny fixture in a temporary folder.
 */
import assert from "node:assert/strict";
import { createEngine, NonFiniteError } from "../mod.ts";
import { perplexity } from "../src/eval/perplexity.ts";
import { assertRejects, copyFixture, drain, entries, readSafetensors } from "./support/hostile.ts";

/** bf16 bit patterns. */
const BF16_NAN = 0x7fc0;
const BF16_INF = 0x7f80;

/** A copy of tiny-olmoe whose tensor `name` has `value` (bf16 bits) as its first element. */
async function corrupted(name: string, value: number): Promise<string> {
  const dir = await copyFixture("tiny-olmoe");
  const path = `${dir}/model.safetensors`;
  const bytes = Deno.readFileSync(path);
  const { header } = readSafetensors(path);
  const headerBytes = Number(new DataView(bytes.buffer).getBigUint64(0, true));
  const entry = entries(header).find(([n]) => n === name)?.[1];
  assert.ok(entry, `${name} in the fixture`);
  assert.equal(entry.dtype, "BF16");
  new DataView(bytes.buffer).setUint16(8 + headerBytes + entry.data_offsets[0], value, true);
  Deno.writeFileSync(path, bytes);
  return dir;
}

const CASES = [
  { what: "a NaN in lm_head", tensor: "lm_head.weight", value: BF16_NAN },
  { what: "an infinity in the final norm", tensor: "model.norm.weight", value: BF16_INF },
];

for (const c of CASES) {
  Deno.test(`non-finite: ${c.what} → generate throws NonFiniteError, greedy or sampled`, async () => {
    const dir = await corrupted(c.tensor, c.value);
    try {
      await using engine = await createEngine({ model: dir });
      for (const temperature of [0, 1]) {
        const e = await assertRejects(
          () => drain(engine, { ids: [1, 2, 3], maxTokens: 8, temperature, seed: 1 }),
          NonFiniteError,
          "Non-finite logits (NaN or infinity) for generated token 0",
          "weights likely hold NaN or infinite values",
        );
        assert.doesNotMatch(e.message, /\.$/);
      }
      // the engine goes on serving: the error is the request's, not a broken engine
      const logits = await engine.forward([1, 2]);
      assert.equal(logits.length, 2 * engine.spec.vocabSize);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  });

  Deno.test(`non-finite: ${c.what} → perplexity throws NonFiniteError naming the position`, async () => {
    const dir = await corrupted(c.tensor, c.value);
    try {
      await using engine = await createEngine({ model: dir });
      const ids = Array.from({ length: 16 }, (_, i) => 3 + i);
      await assertRejects(
        () => perplexity(engine, ids, { window: 8 }),
        NonFiniteError,
        "Non-finite logits (NaN or infinity) at position 0 of the ids",
      );
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  });
}

Deno.test("non-finite: the CLI's generate exits 1 with one error line", async () => {
  const dir = await corrupted("lm_head.weight", BF16_NAN);
  try {
    const out = await new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", "main.ts", "generate", "--model", dir, "--max-tokens", "4", "The Congress"],
      cwd: new URL("..", import.meta.url),
      stdout: "piped",
      stderr: "piped",
      env: { NO_COLOR: "1" },
    }).output();
    const stderr = new TextDecoder().decode(out.stderr);
    assert.equal(out.code, 1, stderr);
    assert.match(stderr, /^error: Non-finite logits \(NaN or infinity\) for generated token 0: /m);
    assert.equal(new TextDecoder().decode(out.stdout).trim(), "");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
