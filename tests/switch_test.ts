/**
 * Switch Transformers (encoder-decoder, top-1 ReLU experts) against Hugging Face transformers on
 * tiny-switch: decoder logits for every prompt within 1e-3 × max(1, max|reference|), greedy decoder ids
 * exactly, the same under masked routing (`static` with the reference's allowed experts; routers are
 * numbered encoder first, then decoder), and the budgeted policies (`lru` exact, `swapmoe` within its
 * budget), and the tied head on tiny-switch-tied (made by tests/support/make_tied_switch.py).
 */
import assert from "node:assert/strict";
import { ConfigError, createEngine, type Engine, OptionError } from "../mod.ts";
import { SafetensorsFile } from "../src/checkpoint/safetensors.ts";
import { parseSwitchConfig, sparseBlocks } from "../src/models/switch/config.ts";
import { relativePositionBucket } from "../src/kernels/t5.ts";
import { switchTensorShapes } from "../src/models/switch/names.ts";
import { logitError } from "./support/logits.ts";

interface Reference {
  greedy_new_tokens: number;
  decoder_start_token_id: number;
  masked_routing: { allowed: number[][] };
  prompts: {
    text: string;
    ids: number[];
    decoder_input_ids: number[];
    greedy: number[];
    masked_greedy: number[];
  }[];
}

const DIR = new URL("./fixtures/tiny-switch/", import.meta.url).pathname;
const ref: Reference = JSON.parse(await Deno.readTextFile(`${DIR}reference.json`));

function expected(file: SafetensorsFile, name: string): Float32Array {
  const b = file.bytes(name);
  return new Float32Array(b.buffer, b.byteOffset, b.byteLength / 4);
}

/** Greedy decoder tokens after the start token (references used min_new_tokens = their length). */
async function greedy(engine: Engine, ids: number[], n: number): Promise<number[]> {
  const out: number[] = [];
  for await (const c of engine.generate({ ids, maxTokens: n, minTokens: n, temperature: 0 })) {
    out.push(...c.ids);
  }
  return out;
}

/** Checks every prompt's logits and greedy ids against `kind` ("" or "masked_"); returns the errors. */
async function parity(engine: Engine, masked: boolean): Promise<number[]> {
  using logits = SafetensorsFile.open(`${DIR}reference.safetensors`);
  const errors: number[] = [];
  for (const [i, p] of ref.prompts.entries()) {
    const got = await engine.forward(p.ids, { decoderIds: p.decoder_input_ids });
    const { err, tol } = logitError(got, expected(logits, `p${i}.${masked ? "masked_logits" : "logits"}`));
    assert.ok(err <= tol, `prompt ${i}: max logit error ${err} > ${tol}`);
    errors.push(err);
    const want = (masked ? p.masked_greedy : p.greedy).slice(1);
    assert.equal((masked ? p.masked_greedy : p.greedy)[0], ref.decoder_start_token_id);
    assert.deepEqual(await greedy(engine, p.ids, want.length), want, `prompt ${i}: greedy decoder ids`);
  }
  return errors;
}

Deno.test("switch: decoder logits and greedy ids match transformers", async () => {
  await using engine = await createEngine({ model: DIR });
  assert.equal(engine.spec.modelType, "switch_transformers");
  const errors = await parity(engine, false);
  console.log(`  max logit error per prompt: ${errors.map((e) => e.toExponential(2)).join(", ")}`);
  const s = engine.stats();
  assert.equal(s.residentExperts.length, 2); // encoder router, decoder router
  assert.equal(s.expertBytes, 2 * 128 * 64 * 2); // wi and wo, bf16
  assert.equal(s.hitRate, 1);
});

Deno.test("switch: masked routing (static, encoder routers first) matches transformers", async () => {
  await using engine = await createEngine({
    model: DIR,
    policy: "static",
    residentExperts: ref.masked_routing.allowed,
  });
  const errors = await parity(engine, true);
  console.log(`  max masked logit error per prompt: ${errors.map((e) => e.toExponential(2)).join(", ")}`);
  const s = engine.stats();
  assert.deepEqual(s.residentExperts, ref.masked_routing.allowed);
  assert.ok(s.gpuBytes <= s.budgetBytes);
  assert.ok(s.hitRate < 1, "some tokens preferred an expert outside the allowed half");
});

Deno.test("switch: a tied head (shared.weight, output × d_model^-0.5) matches transformers", async () => {
  // tests/support/make_tied_switch.py: tiny-switch with tie_word_embeddings, its references from transformers
  const dir = new URL("./fixtures/tiny-switch-tied/", import.meta.url).pathname;
  const tied: Reference = JSON.parse(await Deno.readTextFile(`${dir}reference.json`));
  await using engine = await createEngine({ model: dir });
  using logits = SafetensorsFile.open(`${dir}reference.safetensors`);
  const errors: number[] = [];
  for (const [i, p] of tied.prompts.entries()) {
    const got = await engine.forward(p.ids, { decoderIds: p.decoder_input_ids });
    const { err, tol } = logitError(got, expected(logits, `p${i}.logits`));
    assert.ok(err <= tol, `prompt ${i}: max logit error ${err} > ${tol}`);
    errors.push(err);
    assert.deepEqual(
      await greedy(engine, p.ids, p.greedy.length - 1),
      p.greedy.slice(1),
      `prompt ${i}: greedy ids`,
    );
  }
  console.log(`  max logit error per prompt (tied): ${errors.map((e) => e.toExponential(2)).join(", ")}`);
});

Deno.test("switch: routing statistics count each stack's tokens once, encoder then decoder", async () => {
  await using engine = await createEngine({
    model: DIR,
    policy: "static",
    residentExperts: ref.masked_routing.allowed,
  });
  const p = ref.prompts[1]!;
  await engine.forward(p.ids, { decoderIds: p.decoder_input_ids });
  const s = engine.stats();
  // one sparse block per stack, top-1: one choice per encoder token at router 0 and one per decoder
  // token at router 1 (the prompt's lengths differ, so a pass counted at the wrong router shows)
  assert.notEqual(p.ids.length, p.decoder_input_ids.length);
  const sum = (r: number[]) => r.reduce((a, b) => a + b, 0);
  assert.deepEqual(s.expertUsage.map(sum), [p.ids.length, p.decoder_input_ids.length]);
  assert.equal(s.routedChoices, p.ids.length + p.decoder_input_ids.length);
  assert.ok(s.hitRate > 0 && s.hitRate < 1);
});

Deno.test("switch: lru under a budget of one expert per router is exact", async () => {
  await using engine = await createEngine({ model: DIR, policy: "lru" });
  // the smallest budget: one slot per router
  await engine.setBudget(engine.stats().minimumBudgetBytes);
  assert.deepEqual(engine.stats().expertSlots, [1, 1]);
  using logits = SafetensorsFile.open(`${DIR}reference.safetensors`);
  const p = ref.prompts[1]!;
  const { err, tol } = logitError(
    await engine.forward(p.ids, { decoderIds: p.decoder_input_ids }),
    expected(logits, "p1.logits"),
  );
  assert.ok(err <= tol, `lru logits: ${err} > ${tol}`);
  assert.deepEqual(await greedy(engine, p.ids, 16), p.greedy.slice(1));
  const s = engine.stats();
  assert.ok(s.gpuBytes <= s.budgetBytes);
  assert.ok(s.cacheHitRate < 1 && s.bytesUploaded > 2 * s.expertBytes, "lru swapped experts in");
});

Deno.test("switch: swapmoe stays within its budget and revises the resident set", async () => {
  await using engine = await createEngine({ model: DIR, policy: "swapmoe", updateInterval: 4 });
  const min = engine.stats();
  // three slots of eight per router
  const before = await engine.setBudget(min.minimumBudgetBytes + 4 * min.expertBytes);
  assert.deepEqual(before.expertSlots, [3, 3]);
  const out: number[] = [];
  for await (const c of engine.generate({ prompt: ref.prompts[0]!.text, maxTokens: 12, minTokens: 12 })) {
    out.push(...c.ids);
  }
  assert.equal(out.length, 12);
  const s = engine.stats();
  assert.ok(s.gpuBytes <= s.budgetBytes && s.peakGpuBytes <= s.budgetBytes);
  assert.ok(s.routedChoices > 0);
  assert.equal(s.prefillTokens, ref.prompts[0]!.ids.length);
  assert.ok(s.swaps > 0, "the resident set followed the importance");
  assert.deepEqual(s.expertSlots, [3, 3]);
});

Deno.test("switch: decoder rows in chunks, sampling by seed, forward's default start token", async () => {
  // 9 decoder ids in chunks of 4 rows: the self-attention cache carries across chunks
  await using engine = await createEngine({ model: DIR, maxBatchTokens: 4 });
  {
    using logits = SafetensorsFile.open(`${DIR}reference.safetensors`);
    const p = ref.prompts[3]!;
    const { err, tol } = logitError(
      await engine.forward(p.ids, { decoderIds: p.decoder_input_ids }),
      expected(logits, "p3.logits"),
    );
    assert.ok(err <= tol, `chunked decoder: ${err} > ${tol}`);
  }
  const run = async (seed: number) => {
    const out: number[] = [];
    for await (const c of engine.generate({ ids: ref.prompts[2]!.ids, maxTokens: 8, temperature: 1, seed })) {
      out.push(...c.ids);
    }
    return out;
  };
  assert.deepEqual(await run(7), await run(7));
  const first = await engine.forward(ref.prompts[0]!.ids);
  assert.equal(first.length, 512);
  using logits = SafetensorsFile.open(`${DIR}reference.safetensors`);
  const row0 = expected(logits, "p0.logits").subarray(0, 512);
  assert.ok(logitError(first, row0).err <= logitError(first, row0).tol);
  await assert.rejects(engine.forward(ref.prompts[0]!.ids, { decoderIds: [] }), OptionError);
  await assert.rejects(engine.forward(ref.prompts[0]!.ids, { decoderIds: [512] }), OptionError);
});

Deno.test("switch: expertCapacity drop changes nothing below capacity, drops above it", async () => {
  using logits = SafetensorsFile.open(`${DIR}reference.safetensors`);
  const p = ref.prompts[1]!;
  const want = expected(logits, "p1.logits");
  {
    await using engine = await createEngine({ model: DIR, expertCapacity: "drop" });
    const { err, tol } = logitError(await engine.forward(p.ids, { decoderIds: p.decoder_input_ids }), want);
    assert.ok(err <= tol, `capacity 64, nothing dropped: ${err} > ${tol}`);
  }
  const tmp = await Deno.makeTempDir();
  try {
    for await (const f of Deno.readDir(DIR)) await Deno.copyFile(`${DIR}${f.name}`, `${tmp}/${f.name}`);
    const cfg = JSON.parse(await Deno.readTextFile(`${tmp}/config.json`));
    cfg.expert_capacity = 1;
    await Deno.writeTextFile(`${tmp}/config.json`, JSON.stringify(cfg));
    await using engine = await createEngine({ model: tmp, expertCapacity: "drop" });
    const got = await engine.forward(p.ids, { decoderIds: p.decoder_input_ids });
    assert.ok(got.every(Number.isFinite));
    assert.ok(logitError(got, want).err > logitError(got, want).tol, "capacity 1 drops tokens");
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
});

Deno.test("switch: config, sparse blocks, bucket arithmetic and tensor list", () => {
  const spec = parseSwitchConfig(JSON.parse(Deno.readTextFileSync(`${DIR}config.json`)));
  assert.deepEqual(spec.encoderSparseLayers, [false, true]);
  assert.deepEqual(spec.decoderSparseLayers, [false, true]);
  assert.equal(spec.decoderStartTokenId, 0);
  assert.equal(spec.tieWordEmbeddings, false);
  // routing runs in float32: another router_dtype is refused rather than silently computed in float32
  const json = JSON.parse(Deno.readTextFileSync(`${DIR}config.json`));
  for (const dtype of ["bfloat16", "float16", 32]) {
    assert.throws(
      () => parseSwitchConfig({ ...json, router_dtype: dtype }),
      (e: Error) => e instanceof ConfigError && /Unsupported router_dtype/.test(e.message),
    );
  }
  // transformers: is_sparse = i % step == 1 or step == 1
  assert.deepEqual(sparseBlocks(12, 2), [0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1].map(Boolean));
  assert.deepEqual(sparseBlocks(4, 1), [true, true, true, true]);
  assert.deepEqual(sparseBlocks(6, 3), [false, true, false, false, true, false]);
  // T5 buckets (num_buckets 32, max_distance 128): bidirectional halves, log bins past 8 / 16
  assert.equal(relativePositionBucket(0, true, 32, 128), 0);
  assert.equal(relativePositionBucket(-3, true, 32, 128), 3);
  assert.equal(relativePositionBucket(3, true, 32, 128), 19);
  assert.equal(relativePositionBucket(-16, true, 32, 128), 10);
  assert.equal(relativePositionBucket(-1000, true, 32, 128), 15);
  assert.equal(relativePositionBucket(5, false, 32, 128), 0);
  assert.equal(relativePositionBucket(-20, false, 32, 128), 17);
  assert.equal(relativePositionBucket(-1000, false, 32, 128), 31);
  // every tensor the engine reads is in the fixture, with its shape
  using f = SafetensorsFile.open(`${DIR}model.safetensors`);
  const shapes = switchTensorShapes(spec);
  assert.equal(shapes.size, 79); // the fixture's 80 less shared.weight (untied: each stack has its own)
  for (const [name, shape] of shapes) assert.deepEqual(f.info(name).shape, shape, name);
});
