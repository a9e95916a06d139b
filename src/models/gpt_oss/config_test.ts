import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";
import { ConfigError } from "../../errors.ts";
import { type GptOssSpec, parseGptOssConfig, yarnAttentionFactor } from "./config.ts";
import { GPT_OSS_20B_CONFIG } from "../../../tests/support/gpt_oss.ts";

const FIXTURE = fileURLToPath(new URL("../../../tests/fixtures/tiny-gpt-oss/config.json", import.meta.url));

type Json = Record<string, unknown>;

function fixture(): Json {
  return JSON.parse(Deno.readTextFileSync(FIXTURE));
}

/** `base` (the fixture by default) with `edit` applied to a copy. */
function edited(edit: (c: Json) => void, base: Json = fixture()): Json {
  const c = structuredClone(base);
  edit(c);
  return c;
}

/** Asserts parsing throws a ConfigError whose message contains every part and names the file. */
function refuses(json: unknown, ...parts: string[]): void {
  const file = "/models/m/config.json";
  let error: unknown;
  try {
    parseGptOssConfig(json, file);
  } catch (e) {
    error = e;
  }
  assert.ok(error instanceof ConfigError, `expected ConfigError, got ${error}`);
  for (const p of parts) assert.ok(error.message.includes(p), `"${error.message}" lacks "${p}"`);
  assert.ok(error.message.endsWith(`(in ${file})`), `"${error.message}" does not name the file`);
}

Deno.test("parseGptOssConfig: the tiny fixture (rope_scaling beside rope_theta, as published)", () => {
  const spec = parseGptOssConfig(fixture());
  assert.deepEqual(
    spec,
    {
      modelType: "gpt_oss",
      vocabSize: 512,
      hiddenSize: 64,
      numLayers: 2,
      numHeads: 4,
      numKvHeads: 2,
      headDim: 16,
      intermediateSize: 64,
      numExperts: 8,
      topK: 2,
      maxPositionEmbeddings: 512,
      rmsNormEps: 1e-5,
      ropeTheta: 150000,
      ropeScaling: {
        factor: 4,
        betaFast: 32,
        betaSlow: 1,
        originalMaxPositionEmbeddings: 64,
        truncate: false,
        attentionFactor: 0.1 * Math.log(4) + 1,
      },
      layerTypes: ["sliding_attention", "full_attention"],
      slidingWindow: 6,
      attentionBias: true,
      swigluLimit: 7,
      swigluAlpha: 1.702,
      quantization: "mxfp4",
      tieWordEmbeddings: false,
      bosTokenId: 1,
      eosTokenIds: [2],
    } satisfies GptOssSpec,
  );
});

Deno.test("parseGptOssConfig: gpt-oss-20b as published", () => {
  const spec = parseGptOssConfig(GPT_OSS_20B_CONFIG);
  assert.equal(spec.numExperts, 32);
  assert.equal(spec.topK, 4);
  assert.equal(spec.headDim, 64);
  assert.equal(spec.slidingWindow, 128);
  assert.deepEqual(spec.layerTypes.slice(0, 3), ["sliding_attention", "full_attention", "sliding_attention"]);
  assert.equal(spec.layerTypes.filter((t) => t === "sliding_attention").length, 12);
  assert.deepEqual(spec.ropeScaling, {
    factor: 32,
    betaFast: 32,
    betaSlow: 1,
    originalMaxPositionEmbeddings: 4096,
    truncate: false,
    attentionFactor: 1.3465735902799727, // 0.1·ln 32 + 1
  });
  assert.equal(spec.bosTokenId, undefined);
  assert.deepEqual(spec.eosTokenIds, [200002]);
  assert.equal(spec.maxPositionEmbeddings, 131072);
});

Deno.test("parseGptOssConfig: transformers 5's rope_parameters (θ inside) reads as rope_scaling + rope_theta", () => {
  const published = parseGptOssConfig(GPT_OSS_20B_CONFIG);
  const v5 = edited((c) => {
    c.rope_parameters = { ...(c.rope_scaling as Json), rope_theta: 150000 };
    delete c.rope_scaling;
    delete c.rope_theta;
  }, GPT_OSS_20B_CONFIG);
  assert.deepEqual(parseGptOssConfig(v5), published);
});

Deno.test("parseGptOssConfig: the experts' alpha is transformers' constant 1.702, swiglu_limit is read", () => {
  // torch (GptOssExperts): self.alpha = 1.702; self.limit = config.swiglu_limit
  const spec = parseGptOssConfig(edited((c) => {
    c.swiglu_alpha = 3;
    c.swiglu_limit = 5.5;
  }, GPT_OSS_20B_CONFIG));
  assert.equal(spec.swigluAlpha, 1.702);
  assert.equal(spec.swigluLimit, 5.5);
});

Deno.test("parseGptOssConfig: transformers 5.17's defaults", () => {
  const bare = edited((c) => {
    for (const k of ["rope_scaling", "rope_theta", "layer_types", "swiglu_limit", "attention_bias"]) {
      delete c[k];
    }
  }, GPT_OSS_20B_CONFIG);
  const spec = parseGptOssConfig(bare);
  assert.equal(spec.ropeTheta, 150000);
  assert.deepEqual(spec.ropeScaling, parseGptOssConfig(GPT_OSS_20B_CONFIG).ropeScaling); // YaRN ×32 from 4096
  assert.deepEqual(spec.layerTypes, parseGptOssConfig(GPT_OSS_20B_CONFIG).layerTypes); // sliding first
  assert.equal(spec.swigluLimit, 7);
  assert.equal(spec.swigluAlpha, 1.702);
  assert.equal(spec.attentionBias, true);
  // truncate defaults to true (torch: rope_parameters.get("truncate", True)); plain RoPE when asked
  assert.equal(
    parseGptOssConfig(edited((c) => delete (c.rope_scaling as Json).truncate)).ropeScaling?.truncate,
    true,
  );
  assert.equal(
    parseGptOssConfig(edited((c) => (c.rope_scaling = { rope_type: "default" }))).ropeScaling,
    null,
  );
  // every layer full: no window needed
  const full = parseGptOssConfig(edited((c) => {
    c.layer_types = ["full_attention", "full_attention"];
    c.sliding_window = null;
  }));
  assert.equal(full.slidingWindow, null);
});

Deno.test("yarnAttentionFactor: given, DeepSeek's mscale ratio, or 0.1·ln(factor) + 1", () => {
  assert.equal(yarnAttentionFactor(32), 0.1 * Math.log(32) + 1);
  assert.equal(yarnAttentionFactor(1), 1);
  assert.equal(yarnAttentionFactor(32, { attentionFactor: 1.5 }), 1.5);
  assert.equal(
    yarnAttentionFactor(40, { mscale: 1, mscaleAllDim: 0.707 }),
    (0.1 * Math.log(40) + 1) / (0.1 * 0.707 * Math.log(40) + 1),
  );
  const spec = parseGptOssConfig(edited((c) => ((c.rope_scaling as Json).attention_factor = 1.25)));
  assert.equal(spec.ropeScaling?.attentionFactor, 1.25);
});

Deno.test("parseGptOssConfig: unsupported rope types are refused by name, naming the field", () => {
  refuses(
    edited((c) => ((c.rope_scaling as Json).rope_type = "linear")),
    'rope_scaling.rope_type: "linear"',
    '"yarn"',
  );
  refuses(
    edited((c) => {
      c.rope_parameters = { rope_type: "llama3", rope_theta: 5e5, factor: 8 };
      delete c.rope_scaling;
    }),
    'Unsupported rope_parameters.rope_type: "llama3"',
  );
  refuses(
    edited((c) => (c.rope_scaling = { type: "dynamic", factor: 2 })),
    'Unsupported rope_scaling.type: "dynamic"',
  );
  refuses(edited((c) => (c.rope_scaling = "yarn")), "Invalid rope_scaling: expected an object");
  refuses(edited((c) => (c.partial_rotary_factor = 0.5)), "Unsupported partial_rotary_factor: 0.5");
});

Deno.test("parseGptOssConfig: bad YaRN fields are refused, named as in the file", () => {
  refuses(
    edited((c) => delete (c.rope_scaling as Json).original_max_position_embeddings),
    "Invalid rope_scaling.original_max_position_embeddings",
  );
  refuses(edited((c) => ((c.rope_scaling as Json).factor = "4")), "Invalid rope_scaling.factor");
  refuses(edited((c) => ((c.rope_scaling as Json).factor = 0.5)), "Invalid rope_scaling.factor: 0.5");
  refuses(edited((c) => ((c.rope_scaling as Json).beta_fast = -1)), "Invalid rope_scaling.beta_fast");
  refuses(edited((c) => ((c.rope_scaling as Json).truncate = "no")), "Invalid rope_scaling.truncate");
  refuses(edited((c) => (c.rope_theta = 0)), "Invalid rope_theta");
});

Deno.test("parseGptOssConfig: layer_types and sliding_window", () => {
  refuses(edited((c) => (c.layer_types = ["sliding_attention"])), "Invalid layer_types: expected 2 entries");
  refuses(edited((c) => (c.layer_types = ["sliding_attention", "chunked_attention"])), "Invalid layer_types");
  refuses(edited((c) => (c.layer_types = "full_attention")), "Invalid layer_types");
  refuses(
    edited((c) => (c.sliding_window = null)),
    "Invalid sliding_window: null",
  );
  refuses(edited((c) => (c.sliding_window = 0)), "Invalid sliding_window");
});

Deno.test("parseGptOssConfig: the experts must be MXFP4 as published", () => {
  refuses(edited((c) => delete c.quantization_config), "Unsupported quantization_config: none", "mxfp4");
  refuses(
    edited((c) => (c.quantization_config = { quant_method: "bitsandbytes" })),
    'Unsupported quantization_config.quant_method: "bitsandbytes", supported is "mxfp4"',
  );
  refuses(edited((c) => (c.hidden_size = 80)), "Invalid hidden_size: 80 is not a multiple of 32");
  refuses(edited((c) => (c.intermediate_size = 48)), "Invalid intermediate_size: 48 is not a multiple of 32");
});

Deno.test("parseGptOssConfig: shapes, counts and ids", () => {
  refuses({ ...fixture(), model_type: "mixtral" }, 'Unsupported model_type: "mixtral", expected "gpt_oss"');
  refuses([], "config.json must hold a JSON object");
  refuses(edited((c) => (c.head_dim = 6)), "Unsupported head_dim: 6");
  refuses(edited((c) => (c.head_dim = 512)), "Unsupported head_dim: 512");
  refuses(edited((c) => (c.num_key_value_heads = 3)), "Invalid num_key_value_heads");
  refuses(edited((c) => (c.num_experts_per_tok = 9)), "Invalid num_experts_per_tok: 9 exceeds the 8 experts");
  refuses(edited((c) => delete c.num_local_experts), "Invalid num_local_experts");
  refuses(edited((c) => (c.num_hidden_layers = 1e9)), "Invalid num_hidden_layers");
  refuses(edited((c) => (c.num_local_experts = 1e6)), "Invalid num_local_experts");
  refuses(edited((c) => (c.eos_token_id = [2, -1])), "Invalid eos_token_id");
  refuses(edited((c) => (c.swiglu_limit = 0)), "Invalid swiglu_limit");
  // transformers' attribute_map: num_experts stands for num_local_experts
  const alias = edited((c) => {
    c.num_experts = c.num_local_experts;
    delete c.num_local_experts;
  });
  assert.equal(parseGptOssConfig(alias).numExperts, 8);
});
