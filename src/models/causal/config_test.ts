import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";
import { MAX_LAYERS, MAX_TOTAL_EXPERTS } from "../../checkpoint/config.ts";
import { ConfigError } from "../../errors.ts";
import { loadModelConfig, parseModelConfig, SUPPORTED_MODEL_TYPES } from "../registry.ts";
import type { CausalSpec } from "./config.ts";

const FIXTURES = fileURLToPath(new URL("../../../tests/fixtures/", import.meta.url));

// The causal parser through the registry, as the engine reads a config.json.
const parseConfig = (json: unknown, file?: string): CausalSpec =>
  parseModelConfig(json, file).architecture.spec as CausalSpec;
const loadConfig = async (dir: string): Promise<CausalSpec> =>
  (await loadModelConfig(dir)).architecture.spec as CausalSpec;

type Json = Record<string, unknown>;

function fixture(name: string): Json {
  return JSON.parse(Deno.readTextFileSync(`${FIXTURES}${name}/config.json`));
}

/** The fixture's config with `edit` applied to a copy. */
function edited(name: string, edit: (c: Json) => void): Json {
  const c = structuredClone(fixture(name));
  edit(c);
  return c;
}

/** Asserts `parseConfig(json, file)` throws a ConfigError whose message contains every part and names the file. */
function refuses(json: unknown, ...parts: string[]): ConfigError {
  const file = "/models/m/config.json";
  let error: unknown;
  try {
    parseConfig(json, file);
  } catch (e) {
    error = e;
  }
  assert.ok(error instanceof ConfigError, `expected ConfigError, got ${error}`);
  for (const p of parts) assert.ok(error.message.includes(p), `"${error.message}" lacks "${p}"`);
  assert.ok(error.message.endsWith(`(in ${file})`), `"${error.message}" does not name the file`);
  assert.equal(error.file, file);
  return error;
}

function pick<K extends keyof CausalSpec>(spec: CausalSpec, keys: K[]): Pick<CausalSpec, K> {
  return Object.fromEntries(keys.map((k) => [k, spec[k]])) as Pick<CausalSpec, K>;
}

// ---- each family's fixture ------------------------------------------------------------------------------

Deno.test("parseConfig: tiny-mixtral (head_dim null → D / H, always renormalised, rope_theta nested)", () => {
  const spec = parseConfig(fixture("tiny-mixtral"));
  assert.deepEqual(spec, {
    modelType: "mixtral",
    vocabSize: 512,
    hiddenSize: 64,
    numLayers: 2,
    numHeads: 4,
    numKvHeads: 2,
    headDim: 16,
    intermediateSize: 128,
    moeIntermediateSize: 128,
    numExperts: 8,
    topK: 2,
    normTopkProb: true,
    sharedExpertIntermediateSize: 0,
    sparseLayers: [true, true],
    rmsNormEps: 1e-5,
    ropeTheta: 1e6,
    maxPositionEmbeddings: 512,
    slidingWindow: null,
    qkvBias: false,
    qkNorm: "none",
    tieWordEmbeddings: false,
    bosTokenId: 1,
    eosTokenIds: [2],
  });
});

Deno.test("parseConfig: tiny-qwen2-moe (qkv biases, shared expert, sliding_window 0 unused)", () => {
  const spec = parseConfig(fixture("tiny-qwen2-moe"));
  assert.deepEqual(
    pick(spec, [
      "modelType",
      "headDim",
      "numExperts",
      "topK",
      "moeIntermediateSize",
      "intermediateSize",
      "sharedExpertIntermediateSize",
      "normTopkProb",
      "qkvBias",
      "qkNorm",
      "sparseLayers",
      "slidingWindow",
      "rmsNormEps",
      "ropeTheta",
    ]),
    {
      modelType: "qwen2_moe",
      headDim: 16,
      numExperts: 16,
      topK: 4,
      moeIntermediateSize: 32,
      intermediateSize: 128,
      sharedExpertIntermediateSize: 128,
      normTopkProb: false,
      qkvBias: true,
      qkNorm: "none",
      sparseLayers: [true, true],
      slidingWindow: null,
      rmsNormEps: 1e-6,
      ropeTheta: 10000,
    },
  );
});

Deno.test("parseConfig: tiny-qwen3-moe (explicit head_dim ≠ D / H, per-head q/k norm, num_local_experts)", () => {
  const spec = parseConfig(fixture("tiny-qwen3-moe"));
  assert.deepEqual(
    pick(spec, [
      "modelType",
      "headDim",
      "numHeads",
      "numKvHeads",
      "numExperts",
      "topK",
      "moeIntermediateSize",
      "sharedExpertIntermediateSize",
      "normTopkProb",
      "qkvBias",
      "qkNorm",
      "sparseLayers",
    ]),
    {
      modelType: "qwen3_moe",
      headDim: 32, // hidden_size / heads would be 16
      numHeads: 4,
      numKvHeads: 2,
      numExperts: 16, // the fixture spells it num_local_experts
      topK: 4,
      moeIntermediateSize: 32,
      sharedExpertIntermediateSize: 0,
      normTopkProb: true,
      qkvBias: false,
      qkNorm: "per_head",
      sparseLayers: [true, true],
    },
  );
});

Deno.test("parseConfig: tiny-olmoe (whole-projection q/k norm, experts as wide as intermediate_size)", () => {
  const spec = parseConfig(fixture("tiny-olmoe"));
  assert.deepEqual(
    pick(spec, [
      "modelType",
      "headDim",
      "numKvHeads",
      "numExperts",
      "topK",
      "moeIntermediateSize",
      "normTopkProb",
      "qkvBias",
      "qkNorm",
      "sparseLayers",
      "ropeTheta",
    ]),
    {
      modelType: "olmoe",
      headDim: 16,
      numKvHeads: 4,
      numExperts: 16,
      topK: 4,
      moeIntermediateSize: 32,
      normTopkProb: false,
      qkvBias: false,
      qkNorm: "whole",
      sparseLayers: [true, true],
      ropeTheta: 10000,
    },
  );
});

Deno.test("loadConfig: reads the folder's config.json like parseConfig", async () => {
  for (const name of ["tiny-mixtral", "tiny-qwen2-moe", "tiny-qwen3-moe", "tiny-olmoe"]) {
    assert.deepEqual(await loadConfig(`${FIXTURES}${name}`), parseConfig(fixture(name)));
  }
});

// ---- variants -------------------------------------------------------------------------------------------

Deno.test("parseConfig: sparse layers follow decoder_sparse_step and mlp_only_layers (Qwen)", () => {
  const four = (edit: (c: Json) => void) =>
    parseConfig(edited("tiny-qwen2-moe", (c) => {
      c.num_hidden_layers = 4;
      edit(c);
    })).sparseLayers;
  // torch: (layer_idx not in mlp_only_layers) and (layer_idx + 1) % decoder_sparse_step == 0
  assert.deepEqual(four(() => {}), [true, true, true, true]);
  assert.deepEqual(four((c) => (c.decoder_sparse_step = 2)), [false, true, false, true]);
  assert.deepEqual(four((c) => (c.mlp_only_layers = [0, 3])), [false, true, true, false]);
  assert.deepEqual(four((c) => ((c.decoder_sparse_step = 2), (c.mlp_only_layers = [1]))), [
    false,
    false,
    false,
    true,
  ]);
  assert.deepEqual(four((c) => void delete c.decoder_sparse_step), [true, true, true, true]);
  assert.deepEqual(four((c) => void delete c.mlp_only_layers), [true, true, true, true]);
  // Mixtral and OLMoE have no such fields: every layer is sparse
  assert.deepEqual(
    parseConfig(edited("tiny-mixtral", (c) => (c.decoder_sparse_step = 2))).sparseLayers,
    [true, true],
  );
});

Deno.test("parseConfig: norm_topk_prob is read for Qwen and OLMoE, forced for Mixtral", () => {
  assert.equal(parseConfig(edited("tiny-qwen2-moe", (c) => (c.norm_topk_prob = true))).normTopkProb, true);
  assert.equal(parseConfig(edited("tiny-qwen3-moe", (c) => (c.norm_topk_prob = false))).normTopkProb, false);
  assert.equal(parseConfig(edited("tiny-olmoe", (c) => void delete c.norm_topk_prob)).normTopkProb, false);
  assert.equal(parseConfig(edited("tiny-mixtral", (c) => (c.norm_topk_prob = false))).normTopkProb, true);
});

Deno.test("parseConfig: rope_theta at the top level, in rope_parameters, or the default", () => {
  const theta = (edit: (c: Json) => void) => parseConfig(edited("tiny-olmoe", edit)).ropeTheta;
  assert.equal(theta((c) => ((c.rope_parameters = undefined), (c.rope_theta = 500000))), 500000);
  assert.equal(theta((c) => ((c.rope_parameters = null), (c.rope_theta = 123))), 123);
  assert.equal(
    theta((c) => ((c.rope_parameters = { rope_type: "default", rope_theta: 7 }), (c.rope_theta = 9))),
    7,
  );
  assert.equal(theta((c) => ((c.rope_parameters = { rope_type: "default" }), (c.rope_theta = 9))), 9);
  assert.equal(theta((c) => void ((delete c.rope_parameters, delete c.rope_theta))), 10000);
  // older configs: rope_scaling null, or {"type": "default"}
  assert.equal(
    theta((c) => ((c.rope_parameters = { type: "default", rope_theta: 5 }), (c.rope_scaling = null))),
    5,
  );
});

Deno.test("parseConfig: eos_token_id as a number, a list, or absent; bos optional", () => {
  const spec = (edit: (c: Json) => void) => parseConfig(edited("tiny-mixtral", edit));
  assert.deepEqual(spec((c) => (c.eos_token_id = 7)).eosTokenIds, [7]);
  assert.deepEqual(spec((c) => (c.eos_token_id = [2, 5, 9])).eosTokenIds, [2, 5, 9]);
  assert.deepEqual(spec((c) => (c.eos_token_id = null)).eosTokenIds, []);
  assert.deepEqual(spec((c) => void delete c.eos_token_id).eosTokenIds, []);
  assert.equal(spec((c) => (c.bos_token_id = null)).bosTokenId, undefined);
  assert.equal(spec((c) => void delete c.bos_token_id).bosTokenId, undefined);
});

Deno.test("parseConfig: defaults and optional fields", () => {
  const spec = parseConfig(edited("tiny-olmoe", (c) => {
    delete c.num_key_value_heads;
    delete c.max_position_embeddings;
    delete c.rms_norm_eps;
    delete c.hidden_act;
    delete c.tie_word_embeddings;
  }));
  assert.equal(spec.numKvHeads, spec.numHeads);
  assert.equal(spec.maxPositionEmbeddings, 4096);
  assert.equal(spec.rmsNormEps, 1e-6);
  assert.equal(spec.tieWordEmbeddings, false);
  assert.equal(
    parseConfig(edited("tiny-olmoe", (c) => (c.tie_word_embeddings = true))).tieWordEmbeddings,
    true,
  );
  assert.equal(parseConfig(edited("tiny-olmoe", (c) => (c.attention_bias = true))).qkvBias, true);
  assert.equal(
    parseConfig(edited("tiny-qwen2-moe", (c) => (c.shared_expert_intermediate_size = 0)))
      .sharedExpertIntermediateSize,
    0,
  );
});

Deno.test("parseConfig: sliding windows (Mixtral always, Qwen with use_sliding_window)", () => {
  assert.equal(parseConfig(edited("tiny-mixtral", (c) => (c.sliding_window = 256))).slidingWindow, 256);
  assert.equal(parseConfig(edited("tiny-qwen2-moe", (c) => (c.sliding_window = 256))).slidingWindow, null);
  assert.equal(
    parseConfig(edited("tiny-qwen2-moe", (c) => ((c.sliding_window = 256), (c.use_sliding_window = true))))
      .slidingWindow,
    256,
  );
});

// ---- invalid configs ------------------------------------------------------------------------------------

Deno.test("parseConfig: not an object", () => {
  for (const json of [null, [], "mixtral", 3, true]) refuses(json, "config.json must hold a JSON object");
});

Deno.test("parseConfig: unsupported model_type lists the supported ones", () => {
  const supported = `supported are ${SUPPORTED_MODEL_TYPES.join(", ")}`;
  // an encoder-decoder is another family: the registry reads it with that family's parser
  assert.equal(parseModelConfig(fixture("tiny-switch")).architecture.spec.modelType, "switch_transformers");
  refuses(
    edited("tiny-mixtral", (c) => (c.model_type = "llama")),
    'Unsupported model_type: "llama"',
    supported,
  );
  refuses(edited("tiny-mixtral", (c) => (c.model_type = "Mixtral")), '"Mixtral"', supported);
  refuses(
    edited("tiny-mixtral", (c) => void delete c.model_type),
    "Unsupported model_type: undefined",
    supported,
  );
  refuses(edited("tiny-mixtral", (c) => (c.model_type = ["mixtral"])), 'Unsupported model_type: ["mixtral"]');
});

Deno.test("parseConfig: missing required fields", () => {
  for (
    const [name, key] of [
      ["tiny-mixtral", "hidden_size"],
      ["tiny-mixtral", "num_hidden_layers"],
      ["tiny-mixtral", "num_attention_heads"],
      ["tiny-mixtral", "num_local_experts"],
      ["tiny-mixtral", "num_experts_per_tok"],
      ["tiny-mixtral", "intermediate_size"],
      ["tiny-mixtral", "vocab_size"],
      ["tiny-qwen2-moe", "moe_intermediate_size"],
      ["tiny-olmoe", "num_experts"],
    ] as const
  ) {
    refuses(
      edited(name, (c) => void delete c[key]),
      `Invalid ${key}: expected an integer >= 1, got undefined`,
    );
  }
});

Deno.test("parseConfig: negative, zero, non-integer and mistyped values", () => {
  const bad: [string, unknown, string][] = [
    ["hidden_size", 0, "got 0"],
    ["hidden_size", -64, "got -64"],
    ["hidden_size", 64.5, "got 64.5"],
    ["hidden_size", "64", 'got "64"'],
    ["num_hidden_layers", 0, "got 0"],
    ["num_attention_heads", -1, "got -1"],
    ["num_key_value_heads", 0, "got 0"],
    ["num_experts", 0, "got 0"],
    ["num_experts", 2 ** 53, "got 9007199254740992"],
    ["num_experts_per_tok", 0, "got 0"],
    ["num_experts_per_tok", 1.5, "got 1.5"],
    ["intermediate_size", null, "got null"],
    ["vocab_size", [512], "got [512]"],
    ["max_position_embeddings", -1, "got -1"],
    ["head_dim", 0, "got 0"],
    ["head_dim", -16, "got -16"],
  ];
  for (const [key, value, detail] of bad) {
    refuses(
      edited("tiny-olmoe", (c) => (c[key] = value)),
      `Invalid ${key}: expected an integer >= 1`,
      detail,
    );
  }
  refuses(
    edited("tiny-olmoe", (c) => (c.rms_norm_eps = 0)),
    "Invalid rms_norm_eps: expected a positive number",
  );
  refuses(edited("tiny-olmoe", (c) => (c.rms_norm_eps = "1e-5")), "Invalid rms_norm_eps");
  refuses(edited("tiny-olmoe", (c) => (c.rope_theta = -1, delete c.rope_parameters)), "Invalid rope_theta");
  refuses(edited("tiny-olmoe", (c) => (c.rope_parameters = { rope_theta: "big" })), "Invalid rope_theta");
  refuses(
    edited("tiny-olmoe", (c) => (c.rope_parameters = 5)),
    "Invalid rope_parameters: expected an object",
  );
  refuses(edited("tiny-olmoe", (c) => (c.tie_word_embeddings = "no")), "Invalid tie_word_embeddings");
  refuses(
    edited("tiny-olmoe", (c) => (c.norm_topk_prob = 1)),
    "Invalid norm_topk_prob: expected true or false",
  );
  refuses(edited("tiny-qwen2-moe", (c) => (c.qkv_bias = "yes")), "Invalid qkv_bias");
  refuses(edited("tiny-qwen2-moe", (c) => (c.decoder_sparse_step = 0)), "Invalid decoder_sparse_step");
  refuses(
    edited("tiny-qwen2-moe", (c) => (c.shared_expert_intermediate_size = -1)),
    "expected an integer >= 0",
  );
  refuses(edited("tiny-mixtral", (c) => (c.sliding_window = -5)), "Invalid sliding_window");
  refuses(edited("tiny-mixtral", (c) => (c.eos_token_id = "2")), 'Invalid eos_token_id: "2"');
  refuses(edited("tiny-mixtral", (c) => (c.eos_token_id = [2, 1.5])), "Invalid eos_token_id: [2,1.5]");
  refuses(edited("tiny-mixtral", (c) => (c.bos_token_id = -1)), "Invalid bos_token_id: -1");
});

Deno.test("parseConfig: num_experts_per_tok above the experts", () => {
  refuses(
    edited("tiny-mixtral", (c) => (c.num_experts_per_tok = 9)),
    "Invalid num_experts_per_tok: 9 exceeds the 8 experts",
  );
  refuses(
    edited("tiny-qwen3-moe", (c) => (c.num_experts_per_tok = 17)),
    "Invalid num_experts_per_tok: 17 exceeds the 16 experts",
  );
  // exactly all experts is allowed
  assert.equal(parseConfig(edited("tiny-mixtral", (c) => (c.num_experts_per_tok = 8))).topK, 8);
});

Deno.test("parseConfig: head counts and widths that do not fit together", () => {
  refuses(
    edited("tiny-olmoe", (c) => (c.num_key_value_heads = 3)),
    "Invalid num_key_value_heads: 3 must divide num_attention_heads 4",
  );
  refuses(
    edited("tiny-olmoe", (c) => (c.num_key_value_heads = 8)),
    "Invalid num_key_value_heads: 8 must divide num_attention_heads 4",
  );
  refuses(
    edited("tiny-olmoe", (c) => ((c.hidden_size = 66), delete c.head_dim)),
    "Invalid hidden_size: 66 is not a multiple of num_attention_heads 4 and no head_dim is given",
  );
  // with head_dim given, D need not be a multiple of H
  assert.equal(
    parseConfig(edited("tiny-olmoe", (c) => ((c.hidden_size = 66), (c.head_dim = 16)))).headDim,
    16,
  );
  // the attention kernels take a multiple of 4 up to 256 (RoPE rotates pairs): refused before a GPU is touched
  const kernels = "the attention kernels take a multiple of 4 up to 256";
  refuses(edited("tiny-qwen3-moe", (c) => (c.head_dim = 15)), `Unsupported head_dim: 15, ${kernels}`);
  refuses(edited("tiny-qwen3-moe", (c) => (c.head_dim = 6)), `Unsupported head_dim: 6, ${kernels}`);
  refuses(edited("tiny-qwen3-moe", (c) => (c.head_dim = 512)), `Unsupported head_dim: 512, ${kernels}`);
  refuses(
    edited("tiny-olmoe", (c) => ((c.hidden_size = 12), (c.num_attention_heads = 4))),
    "Unsupported head_dim: 3",
  );
});

Deno.test("parseConfig: sizes that would exhaust memory are refused up front", () => {
  refuses(
    edited("tiny-olmoe", (c) => (c.num_hidden_layers = 3_000_000)),
    `Invalid num_hidden_layers: 3000000, at most ${MAX_LAYERS}`,
  );
  refuses(
    edited("tiny-olmoe", (c) => (c.num_hidden_layers = 2 ** 31)),
    "Invalid num_hidden_layers",
  );
  refuses(
    edited("tiny-olmoe", (c) => (c.num_experts = 1e9)),
    `Invalid num_experts: 1000000000 experts × 2 layers, at most ${MAX_TOTAL_EXPERTS}`,
  );
  refuses(
    edited("tiny-mixtral", (c) => ((c.num_local_experts = 1024), (c.num_hidden_layers = 1024))),
    "Invalid num_local_experts: 1024 experts × 1024 layers",
  );
  // a long mlp_only_layers list is linear work
  const spec = parseConfig(edited("tiny-qwen2-moe", (c) => {
    c.num_hidden_layers = MAX_LAYERS;
    c.mlp_only_layers = Array(1_000_000).fill(0);
  }));
  assert.equal(spec.sparseLayers.filter((s) => s).length, MAX_LAYERS - 1);
});

Deno.test("parseConfig: mlp_only_layers out of range, or no sparse layer left", () => {
  refuses(edited("tiny-qwen2-moe", (c) => (c.mlp_only_layers = [2])), "Invalid mlp_only_layers");
  refuses(edited("tiny-qwen2-moe", (c) => (c.mlp_only_layers = [-1])), "Invalid mlp_only_layers");
  refuses(edited("tiny-qwen2-moe", (c) => (c.mlp_only_layers = "0")), "Invalid mlp_only_layers");
  refuses(edited("tiny-qwen2-moe", (c) => (c.mlp_only_layers = [0, 1])), "The model has no MoE layer");
  refuses(edited("tiny-qwen3-moe", (c) => (c.decoder_sparse_step = 3)), "The model has no MoE layer");
});

Deno.test("parseConfig: unsupported features say what is supported", () => {
  refuses(
    edited("tiny-olmoe", (c) => (c.rope_parameters = { rope_type: "yarn", rope_theta: 1e4 })),
    'Unsupported rope_type: "yarn", supported is "default"',
  );
  refuses(
    edited("tiny-olmoe", (c) => ((c.rope_parameters = null), (c.rope_scaling = { rope_type: "linear" }))),
    'Unsupported rope_type: "linear"',
  );
  refuses(
    edited("tiny-olmoe", (c) => (c.partial_rotary_factor = 0.5)),
    "Unsupported partial_rotary_factor: only 1 is supported",
  );
  refuses(edited("tiny-olmoe", (c) => (c.clip_qkv = 8)), "Unsupported clip_qkv: only null is supported");
  refuses(
    edited("tiny-olmoe", (c) => (c.hidden_act = "gelu")),
    'Unsupported hidden_act: "gelu", supported is "silu"',
  );
});

Deno.test("loadConfig: missing, unreadable and malformed files", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const file = `${dir}/config.json`;
    const expect = async (...parts: string[]) => {
      const error = await loadConfig(dir).then(() => undefined, (e) => e);
      assert.ok(error instanceof ConfigError, `expected ConfigError, got ${error}`);
      for (const p of parts) assert.ok(error.message.includes(p), `"${error.message}" lacks "${p}"`);
      assert.equal(error.file, file);
    };
    await expect("Missing config.json");
    await Deno.writeTextFile(file, "");
    await expect("config.json is not valid JSON");
    await Deno.writeTextFile(file, `{"model_type": "olmoe",}`);
    await expect("config.json is not valid JSON");
    await Deno.writeTextFile(file, `"olmoe"`);
    await expect("config.json must hold a JSON object");
    await Deno.remove(file);
    await Deno.mkdir(file);
    await expect("Cannot read config.json");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
