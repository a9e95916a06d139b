/**
 * gpt-oss through the engine and the command line on tests/fixtures/tiny-gpt-oss: an expert counts as
 * its MXFP4 bytes (budget, stats, info), the policies run under a budget below the all-resident
 * footprint, expertPrecision takes mxfp4 only, generation_config.json's end-of-sequence ids stop
 * generation, chat works through a harmony-shaped template, and bad checkpoints are refused by name.
 * (Parity with transformers is in parity_test.ts; lru and setBudget in swapmoe_test.ts.)
 *
 * The fixture: D = 64, I = 64, 8 experts top-2 in 2 layers. One expert as stored, in bytes:
 *   gate_up [2I, D]: codes 2I·D/2 = 4096, scales 2I·D/32 = 256, bias 2I·2 = 256
 *   down [D, I]:     codes D·I/2 = 2048,  scales D·I/32 = 128,  bias D·2 = 128
 * in all 6912 bytes (6.75 KiB), against 2·(3·64·64 + 128 + 64)·2 = 24960 in bf16.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { CheckpointError, ConfigError, createEngine, OptionError } from "../mod.ts";
import { readGenerationEos } from "../src/checkpoint/generation_config.ts";
import type { ModelInfo } from "../src/cli/info.ts";
import {
  assertRejects,
  copyFixture,
  drain,
  editHeader,
  editJson,
  type Entry,
  FIXTURES,
} from "./support/hostile.ts";
import { runMain } from "./support/cli.ts";
import { HARMONY_LIKE } from "./support/gpt_oss.ts";
import { PRESETS, synthesize } from "../bench/synth.ts";
import { Checkpoint } from "../src/checkpoint/shards.ts";
import { parseGptOssConfig } from "../src/models/gpt_oss/config.ts";
import { gptOssNames } from "../src/models/gpt_oss/names.ts";
import { CpuGptOss } from "../src/models/gpt_oss/reference.ts";

const DIR = `${FIXTURES}tiny-gpt-oss`;
const EXPERT_BYTES = 4096 + 256 + 256 + 2048 + 128 + 128;
const L1 = "model.layers.1.mlp.experts";
// a short context keeps the KV cache from dwarfing the experts of so small a model
const SMALL = { model: DIR, contextLength: 64 };

interface Reference {
  prompts: { ids: number[]; greedy: number[] }[];
}
const REF: Reference = JSON.parse(Deno.readTextFileSync(`${DIR}/reference.json`));

/** Runs `main.ts` with `args` (and `stdin`), without colour. */
const cli = (args: string[], stdin?: string) => runMain(args, { stdin });

/** A copy of the fixture changed by `edit`, removed after `fn`. */
async function withCopy(edit: (dir: string) => void, fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await copyFixture("tiny-gpt-oss");
  try {
    edit(dir);
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

Deno.test("gpt-oss: an expert is its MXFP4 bytes in the budget and stats, every expert uploaded once under full", async () => {
  await using engine = await createEngine(SMALL);
  const s = engine.stats();
  assert.equal(engine.spec.modelType, "gpt_oss");
  assert.equal(s.expertPrecision, "mxfp4");
  assert.equal(s.expertBytes, EXPERT_BYTES);
  assert.deepEqual(s.expertBytesByPrecision, { mxfp4: EXPERT_BYTES });
  assert.deepEqual(s.expertSlots, [8, 8]);
  assert.equal(s.gpuBytesByPrecision.mxfp4, 16 * EXPERT_BYTES);
  assert.equal(s.gpuBytesByKind.experts, 16 * EXPERT_BYTES);
  assert.equal(s.bytesUploaded, 16 * EXPERT_BYTES);
  assert.equal(s.gpuBytes, s.fullBytes);
});

Deno.test("gpt-oss: swapmoe and static below the all-resident footprint run within the budget", async () => {
  await using probe = await createEngine(SMALL);
  const full = probe.stats().fullBytes;
  await probe.close();
  // 5 of 8 experts per layer: the budget is the fixed bytes and 10 experts' MXFP4 bytes
  const budget = full - 6 * EXPERT_BYTES;
  await using engine = await createEngine({ ...SMALL, policy: "swapmoe", budget });
  const s0 = engine.stats();
  assert.equal(s0.budgetBytes, budget);
  assert.deepEqual(s0.expertSlots, [5, 5]);
  const ids = await drain(engine, { ids: REF.prompts[1]!.ids, maxTokens: 24, minTokens: 24 });
  assert.equal(ids.length, 24);
  const s = engine.stats();
  assert.ok(
    s.gpuBytes <= budget && s.peakGpuBytes <= budget,
    `${s.peakGpuBytes} bytes held, budget ${budget}`,
  );
  assert.deepEqual(s.residentExperts.map((r) => r.length), [5, 5]);
  assert.ok(s.routedChoices > 0 && s.hitRate > 0 && s.hitRate <= 1);
  // what was uploaded is whole MXFP4 experts: the fill and each swap
  assert.equal(s.bytesUploaded, (10 + s.swaps) * EXPERT_BYTES);
  assert.equal(s.expertUsage.length, 2);

  // static from a profile holds its top experts and routes among them
  const profile = [[9, 8, 7, 6, 5, 4, 3, 2], [1, 2, 3, 4, 5, 6, 7, 8]];
  await using fixed = await createEngine({ ...SMALL, policy: "static", budget, profile });
  assert.deepEqual(fixed.stats().residentExperts, [[0, 1, 2, 3, 4], [3, 4, 5, 6, 7]]);
  await drain(fixed, { ids: REF.prompts[0]!.ids, maxTokens: 4, minTokens: 4 });
  assert.equal(fixed.stats().swaps, 0);
  assert.equal(fixed.stats().bytesUploaded, 10 * EXPERT_BYTES);
});

Deno.test("gpt-oss: expertPrecision is mxfp4, as stored; other precisions are refused naming it", async () => {
  await using engine = await createEngine({ ...SMALL, expertPrecision: "mxfp4" });
  assert.equal(engine.stats().expertPrecision, "mxfp4");
  for (const p of ["int8", "bf16", "int4", "bf16+int4"]) {
    await assertRejects(
      () => createEngine({ ...SMALL, expertPrecision: p }),
      OptionError,
      `Invalid expertPrecision: "${p}"`,
      'stored in mxfp4: expected one of "mxfp4"',
    );
  }
});

Deno.test("gpt-oss: info reports the MXFP4 expert bytes and the parameters (two per block byte, scales none)", async () => {
  const json = await cli(["info", "--json", "--model", DIR, "--context-length", "64"]);
  assert.equal(json.code, 0, json.stderr);
  const info = JSON.parse(json.stdout) as ModelInfo;
  assert.equal(info.bytes.expert, EXPERT_BYTES);
  assert.equal(info.bytes.allExperts, 16 * EXPERT_BYTES);
  assert.deepEqual(info.precisions, ["mxfp4"]);
  assert.deepEqual(Object.keys(info.atPrecision), ["mxfp4"]);
  // by hand: an expert has 2I·D + 2I + D·I + D = 12480 parameters, 16 of them; the dense weights
  // (embedding and head 2·512·64, per layer norms 2·64, q/k/v/o 4096 + 2·2048 + 4096 with biases 64 + 2·32
  // + 64, sinks 4, router 8·64 + 8) 91864
  const expert = 2 * 64 * 64 + 128 + 64 * 64 + 64;
  assert.equal(info.parameters.experts, 16 * expert);
  assert.equal(info.parameters.total, 16 * expert + 91864);
  assert.equal(info.parameters.activePerToken, 2 * 2 * expert + 91864);
  const text = await cli(["info", "--model", DIR, "--context-length", "64"]);
  assert.equal(text.code, 0, text.stderr);
  assert.match(text.stdout, /Architecture +gpt_oss: 2 layers \(1 sliding over 6\), 8 experts, top-2, MXFP4/);
  assert.match(text.stdout, /Expert bytes +6\.8 KiB per expert, 108\.0 KiB for all 16/);
  assert.match(text.stdout, /Precisions +mxfp4 6\.8 KiB per expert/);
});

Deno.test("gpt-oss: generation_config.json's end-of-sequence ids join config.json's and stop generation", async () => {
  const [first, second] = REF.prompts[0]!.greedy;
  await withCopy(
    (d) => editJson(`${d}/generation_config.json`, (g) => void (g.eos_token_id = [2, second!])),
    async (dir) => {
      await using engine = await createEngine({ model: dir, contextLength: 64 });
      assert.deepEqual(engine.spec.eosTokenIds, [2, second]);
      const chunks = [];
      for await (const c of engine.generate({ ids: REF.prompts[0]!.ids, maxTokens: 8 })) chunks.push(c);
      assert.deepEqual(chunks.flatMap((c) => c.ids), [first]);
      assert.equal(chunks.at(-1)!.finishReason, "stop");
    },
  );
});

Deno.test("readGenerationEos: absent, one id, a list; a bad file or field is a ConfigError naming it", async () => {
  const dir = await Deno.makeTempDir({ prefix: "swapmoe-genconfig-" });
  const file = join(dir, "generation_config.json");
  try {
    assert.deepEqual(await readGenerationEos(dir), []);
    await Deno.writeTextFile(file, JSON.stringify({ eos_token_id: 7 }));
    assert.deepEqual(await readGenerationEos(dir), [7]);
    await Deno.writeTextFile(file, JSON.stringify({ eos_token_id: [200002, 199999, 200012] }));
    assert.deepEqual(await readGenerationEos(dir), [200002, 199999, 200012]);
    await Deno.writeTextFile(file, JSON.stringify({ bos_token_id: 1 }));
    assert.deepEqual(await readGenerationEos(dir), []);
    for (
      const [text, message] of [
        ["{", "generation_config.json is not valid JSON"],
        ["[2]", "generation_config.json must hold a JSON object"],
        ['{"eos_token_id": "</s>"}', 'Invalid eos_token_id: "</s>"'],
        ['{"eos_token_id": [2, -1]}', "Invalid eos_token_id: [2,-1]"],
      ]
    ) {
      await Deno.writeTextFile(file, text!);
      await assertRejects(() => readGenerationEos(dir), ConfigError, message!);
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

/**
 * The fixture with its special tokens renamed to harmony's markers (</s> → <|return|>, <|user|> →
 * <|start|>, <|assistant|> → <|message|>, <|system|> → <|end|>: the ids stay within its 512-token
 * vocabulary) and a harmony-shaped chat template.
 */
function harmonyFixture(dir: string): void {
  const rename: Record<string, string> = {
    "</s>": "<|return|>",
    "<|user|>": "<|start|>",
    "<|assistant|>": "<|message|>",
    "<|system|>": "<|end|>",
  };
  editJson(`${dir}/tokenizer.json`, (t) => {
    for (const a of t.added_tokens as { content: string }[]) a.content = rename[a.content] ?? a.content;
    const vocab = (t.model as { vocab: Record<string, number> }).vocab;
    for (const [from, to] of Object.entries(rename)) {
      if (from in vocab) {
        vocab[to] = vocab[from]!;
        delete vocab[from];
      }
    }
  });
  editJson(`${dir}/tokenizer_config.json`, (c) => void (c.eos_token = "<|return|>"));
  Deno.writeTextFileSync(`${dir}/chat_template.jinja`, HARMONY_LIKE);
}

Deno.test("gpt-oss: chat through a harmony-shaped template on the command line and in-process", async () => {
  await withCopy(harmonyFixture, async (dir) => {
    const r = await cli(
      ["chat", "--model", dir, "--context-length", "256", "--max-tokens", "6", "--min-tokens", "6"],
      "State of the Union?\n/stats\nWhy?\n",
    );
    assert.equal(r.code, 0, `exit code 0 expected; stderr:\n${r.stderr}`);
    assert.doesNotMatch(r.stderr, /^error/m);
    assert.match(r.stdout, /resident experts per layer 8\/8 8\/8/, "/stats answered");

    await using engine = await createEngine({ model: dir, contextLength: 256 });
    const start = engine.tokenizer.tokenToId("<|start|>");
    assert.equal(start, 4);
    const answer = await engine.chat.completions.create({
      messages: [{ role: "system", content: "Be brief." }, { role: "user", content: "Why?" }],
      max_tokens: 5,
    });
    assert.equal(answer.choices[0]!.message.role, "assistant");
    assert.ok(answer.usage!.prompt_tokens > 10);
  });
});

Deno.test("gpt-oss: bad checkpoints are refused through createEngine, naming the tensor or field", async () => {
  const cases: [string, (dir: string) => void, typeof CheckpointError | typeof ConfigError, string[]][] = [
    [
      "blocks and scales disagree",
      (d) =>
        editHeader(
          `${d}/model.safetensors`,
          (h) => void ((h[`${L1}.gate_up_proj_scales`] as Entry).shape = [8, 64, 4]),
        ),
      CheckpointError,
      [
        "MXFP4 blocks and scales disagree",
        `"${L1}.gate_up_proj_blocks"`,
        `"${L1}.gate_up_proj_scales" is [8,64,4]`,
      ],
    ],
    [
      "a missing scales tensor",
      (d) =>
        editHeader(`${d}/model.safetensors`, (h) => {
          h.renamed = h[`${L1}.down_proj_scales`];
          delete h[`${L1}.down_proj_scales`];
        }),
      CheckpointError,
      [`Missing tensor for gpt_oss: "${L1}.down_proj_scales"`],
    ],
    [
      "an unsupported rope_scaling type",
      (d) =>
        editJson(
          `${d}/config.json`,
          (c) => void ((c.rope_scaling as Record<string, unknown>).rope_type = "longrope"),
        ),
      ConfigError,
      ['Unsupported rope_scaling.rope_type: "longrope"'],
    ],
  ];
  for (const [what, corrupt, cls, parts] of cases) {
    await withCopy(corrupt, async (dir) => {
      await assertRejects(() => createEngine({ model: dir }), cls, ...parts).catch((e) => {
        throw new Error(`${what}: ${(e as Error).message}`);
      });
    });
  }
});

/**
 * Configurations tiny-gpt-oss lacks, synthesized by bench/synth.ts (random bf16 weights and biases, MXFP4
 * experts, in shards) and run against the CPU reference in f64: 4 layers alternating sliding and full,
 * 16 experts top-4, a tied head, a 3-key window over 8-row prefill chunks, YaRN with truncate, and a
 * swiglu_limit of 0.1, small enough for the clamps to act (with the kernel's limit 7 instead, the logits
 * are off by 0.19 of 1.04). tests/support/make_gpt_oss_variants.py makes such variants with transformers'
 * references.
 */
Deno.test("gpt-oss: 4 layers, 16 experts top-4, a tied head, a 3-key window, YaRN truncate, a small swiglu_limit, against the CPU reference", async () => {
  const config = {
    ...PRESETS["gpt-oss-20b"]!,
    vocab_size: 4096, // the bundled tokenizer's
    hidden_size: 128,
    intermediate_size: 64,
    head_dim: 16,
    num_attention_heads: 8,
    num_key_value_heads: 2,
    num_hidden_layers: 4,
    layer_types: ["sliding_attention", "full_attention", "sliding_attention", "full_attention"],
    sliding_window: 3,
    num_local_experts: 16,
    num_experts_per_tok: 4,
    experts_per_token: 4,
    max_position_embeddings: 256,
    tie_word_embeddings: true,
    swiglu_limit: 0.1,
    rope_scaling: {
      rope_type: "yarn",
      factor: 4.0,
      beta_fast: 32.0,
      beta_slow: 1.0,
      original_max_position_embeddings: 64,
      truncate: true,
    },
  };
  const dir = await Deno.makeTempDir({ prefix: "swapmoe-gpt-oss-variant-" });
  try {
    await synthesize(config, dir, { seed: 5, shardBytes: 400_000 });
    const spec = parseGptOssConfig(JSON.parse(await Deno.readTextFile(`${dir}/config.json`)));
    using ckpt = Checkpoint.open(dir);
    assert.ok(ckpt.files.length > 1, "several shards");
    assert.ok(!ckpt.tensors.has("lm_head.weight"), "the head is the embedding");
    const cpu = new CpuGptOss(spec, gptOssNames(spec), (n) => ckpt.bytes(n), 32);
    const ids = [1, 17, 400, 4095, 9, 9, 9, 2000, 31, 5, 77, 1234, 8, 8, 300, 12, 3000, 44, 2];
    const allowed = Array.from({ length: 4 }, (_, l) => [0, 3, 5, 6, 9, 10, 12, 15].map((e) => (e + l) % 16));
    for (const masked of [undefined, allowed]) {
      const what = masked ? "masked" : "full";
      await using engine = await createEngine({
        model: dir,
        contextLength: 32,
        maxBatchTokens: 8,
        ...(masked ? { policy: "static" as const, residentExperts: masked } : {}),
      });
      const want = cpu.forward(ids, { allowed: masked });
      const got = await engine.forward(ids);
      let err = 0;
      let max = 0;
      for (let i = 0; i < want.logits.length; i++) {
        err = Math.max(err, Math.abs(got[i]! - want.logits[i]!));
        max = Math.max(max, Math.abs(want.logits[i]!));
      }
      // f32 against f64: a few units in the last place of the largest logit, far below 1e-4 of it
      assert.ok(err <= 1e-4 * max, `${what}: max logit error ${err}, largest logit ${max}`);
      const n = 4;
      const greedy = await drain(engine, { ids, maxTokens: n, minTokens: n });
      assert.deepEqual(greedy, cpu.greedy(ids, n, { allowed: masked }), `${what}: greedy ids`);
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
