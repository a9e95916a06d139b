/**
 * `config.json` of gpt-oss (OpenAI's open-weight MoE, `model_type` "gpt_oss") → {@link GptOssSpec}: the
 * constants of the model with Hugging Face's field names in camelCase, validated before any weight is
 * touched. Defaults are transformers 5.17's `GptOssConfig`'s.
 *
 * @module
 */
import { configFields, type Json, MAX_TOTAL_EXPERTS } from "../../checkpoint/config.ts";
import { ConfigError } from "../../errors.ts";
import type { YarnRope } from "../../kernels/attention.ts";
import { decoderGeometry, type DecoderSpec } from "../decoder_config.ts";

/** The `model_type` this family reads. */
export const GPT_OSS_MODEL_TYPE = "gpt_oss";

/** What one layer's attention sees: a sliding window of keys, or every earlier key. */
export type LayerType = "sliding_attention" | "full_attention";
const LAYER_TYPES: readonly string[] = ["sliding_attention", "full_attention"];

/** YaRN's parameters as the config gives them (transformers' `rope_parameters` in camelCase). */
export type YarnScaling = YarnRope;

/** The constants of a gpt-oss model. Names follow `config.json` in camelCase. */
export interface GptOssSpec extends DecoderSpec {
  /** `config.json`'s `model_type`; every layer has a router and experts. */
  readonly modelType: "gpt_oss";
  /** I: one expert's width (`intermediate_size`): gate_up_proj has 2·I rows, down_proj I columns. */
  readonly intermediateSize: number;
  /** YaRN's parameters, or null for plain RoPE (`rope_type` "default"). */
  readonly ropeScaling: YarnScaling | null;
  /** Per layer, its attention: `sliding_attention` (the last `slidingWindow` keys) or `full_attention`. */
  readonly layerTypes: readonly LayerType[];
  /** Keys a sliding layer sees, itself included (`sliding_window`); null when no layer slides. */
  readonly slidingWindow: number | null;
  /** Biases on q, k, v and o (`attention_bias`). */
  readonly attentionBias: boolean;
  /** Clamp of the experts' SwiGLU: gate ≤ limit, −limit ≤ up ≤ limit (`swiglu_limit`). */
  readonly swigluLimit: number;
  /**
   * Sigmoid gain of the experts' SwiGLU: 1.702, a constant of transformers' GptOssExperts, which no
   * config field sets (a `swiglu_alpha` in config.json is ignored there, and here).
   */
  readonly swigluAlpha: number;
  /** How the routed experts are stored (`quantization_config.quant_method`). */
  readonly quantization: "mxfp4";
  /** The head reuses the embedding matrix (`tie_word_embeddings`). */
  readonly tieWordEmbeddings: boolean;
}

/** transformers 5.17's `GptOssConfig.__post_init__`: YaRN as gpt-oss was trained, when the config names no rope. */
const DEFAULT_ROPE: Json = {
  rope_type: "yarn",
  factor: 32.0,
  beta_fast: 32.0,
  beta_slow: 1.0,
  truncate: false,
  original_max_position_embeddings: 4096,
};

/** The experts' sigmoid gain, fixed in transformers' GptOssExperts. */
const SWIGLU_ALPHA = 1.702;

/** The rope types this engine computes (transformers' ROPE_INIT_FUNCTIONS has more). */
const ROPE_TYPES = ["yarn", "default"];

/**
 * YaRN's attention factor as transformers computes it: `attention_factor` when given, else from
 * `mscale` / `mscale_all_dim` (DeepSeek's form), else 0.1·ln(factor) + 1.
 * torch: get_mscale(scale, mscale=1) = 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0
 */
export function yarnAttentionFactor(
  factor: number,
  o: { attentionFactor?: number; mscale?: number; mscaleAllDim?: number } = {},
): number {
  if (o.attentionFactor !== undefined) return o.attentionFactor;
  const mscale = (s: number, m = 1) => (s <= 1 ? 1 : 0.1 * m * Math.log(s) + 1);
  if (o.mscale && o.mscaleAllDim) return mscale(factor, o.mscale) / mscale(factor, o.mscaleAllDim);
  return mscale(factor);
}

/**
 * Reads the rotary embedding's fields: `rope_parameters` (transformers 5's form, θ inside), else
 * `rope_scaling` beside `rope_theta` (the published config.json), else gpt-oss's default YaRN.
 */
function parseRope(
  c: Json,
  file: string,
  maxPositions: number,
): { theta: number; scaling: YarnScaling | null } {
  const field = c.rope_parameters != null ? "rope_parameters" : c.rope_scaling != null ? "rope_scaling" : "";
  const raw = field ? c[field] : DEFAULT_ROPE;
  if (typeof raw !== "object" || raw === null || Array.isArray(raw)) {
    throw new ConfigError(`Invalid ${field}: expected an object`, file);
  }
  const rp = raw as Json;
  // the nested fields, named in errors as they are in the file: "rope_scaling.factor"
  const nested = Object.fromEntries(Object.entries(rp).map(([k, v]) => [`${field}.${k}`, v]));
  const { num, int, bool } = configFields(nested, file);
  const key = (k: string) => `${field}.${k}`;

  const theta = rp.rope_theta ?? c.rope_theta ?? 150000;
  if (typeof theta !== "number" || !(theta > 0) || !Number.isFinite(theta)) {
    throw new ConfigError(
      `Invalid ${
        rp.rope_theta !== undefined ? key("rope_theta") : "rope_theta"
      }: expected a positive number, got ${JSON.stringify(theta)}`,
      file,
    );
  }
  const partial = rp.partial_rotary_factor ?? c.partial_rotary_factor ?? 1;
  if (partial !== 1) {
    throw new ConfigError(
      `Unsupported partial_rotary_factor: ${
        JSON.stringify(partial)
      }, only 1 (rotate every dimension) is supported`,
      file,
    );
  }
  const type = rp.rope_type ?? rp.type ?? "default";
  if (typeof type !== "string" || !ROPE_TYPES.includes(type)) {
    throw new ConfigError(
      `Unsupported ${key(rp.rope_type !== undefined ? "rope_type" : "type")}: ${
        JSON.stringify(type)
      }, supported are "yarn" and "default"`,
      file,
    );
  }
  if (type === "default") return { theta, scaling: null };

  const original = int(key("original_max_position_embeddings"));
  // torch: if factor is None: factor = config.max_position_embeddings / original_max_position_embeddings
  const factor = rp.factor == null ? maxPositions / original : num(key("factor"));
  if (!(factor >= 1)) {
    throw new ConfigError(
      `Invalid ${key("factor")}: ${factor}, YaRN extends the context by a factor >= 1`,
      file,
    );
  }
  const optional = (k: string) => (rp[k] == null ? undefined : num(key(k)));
  const scaling: YarnScaling = {
    factor,
    betaFast: num(key("beta_fast"), 32),
    betaSlow: num(key("beta_slow"), 1),
    originalMaxPositionEmbeddings: original,
    truncate: bool(key("truncate"), true), // torch: config.rope_parameters.get("truncate", True)
    attentionFactor: yarnAttentionFactor(factor, {
      attentionFactor: optional("attention_factor"),
      mscale: optional("mscale"),
      mscaleAllDim: optional("mscale_all_dim"),
    }),
  };
  return { theta, scaling };
}

/** Validates a parsed `config.json` object of gpt-oss into a {@link GptOssSpec}. */
export function parseGptOssConfig(json: unknown, file = "config.json"): GptOssSpec {
  if (typeof json !== "object" || json === null || Array.isArray(json)) {
    throw new ConfigError("config.json must hold a JSON object", file);
  }
  const c = json as Json;
  if (c.model_type !== GPT_OSS_MODEL_TYPE) {
    throw new ConfigError(
      `Unsupported model_type: ${JSON.stringify(c.model_type)}, expected "${GPT_OSS_MODEL_TYPE}"`,
      file,
    );
  }
  const { int, num, bool, optionalId, tokenIds } = configFields(c, file);

  const { hiddenSize, numLayers, numHeads, numKvHeads, headDim } = decoderGeometry(c, file);

  // transformers: attribute_map = {"num_experts": "num_local_experts"}
  const expertsKey = c.num_local_experts == null && c.num_experts != null
    ? "num_experts"
    : "num_local_experts";
  const numExperts = int(expertsKey);
  if (numExperts * numLayers > MAX_TOTAL_EXPERTS) {
    throw new ConfigError(
      `Invalid ${expertsKey}: ${numExperts} experts × ${numLayers} layers, at most ${MAX_TOTAL_EXPERTS} experts in all are supported`,
      file,
    );
  }
  // the published config also carries OpenAI's `experts_per_token`; transformers reads num_experts_per_tok
  const topK = int("num_experts_per_tok", 1, 4);
  if (topK > numExperts) {
    throw new ConfigError(`Invalid num_experts_per_tok: ${topK} exceeds the ${numExperts} experts`, file);
  }
  const intermediateSize = int("intermediate_size");
  // MXFP4 blocks hold 32 values of a row: both matrices' input widths must be whole blocks
  for (const [k, v] of [["hidden_size", hiddenSize], ["intermediate_size", intermediateSize]] as const) {
    if (v % 32 !== 0) {
      throw new ConfigError(`Invalid ${k}: ${v} is not a multiple of 32, the MXFP4 block size`, file);
    }
  }

  // hidden_act is not read: transformers' experts apply their clamped SwiGLU whatever it says ("silu")
  const q = c.quantization_config;
  if (q == null) {
    throw new ConfigError(
      'Unsupported quantization_config: none (experts in bf16); gpt-oss is read with its experts in MXFP4 as published (quant_method "mxfp4")',
      file,
    );
  }
  const method = typeof q === "object" && !Array.isArray(q) ? (q as Json).quant_method : undefined;
  if (method !== "mxfp4") {
    throw new ConfigError(
      `Unsupported quantization_config.quant_method: ${JSON.stringify(method)}, supported is "mxfp4"`,
      file,
    );
  }

  const maxPositionEmbeddings = int("max_position_embeddings", 1, 131072);
  const rope = parseRope(c, file, maxPositionEmbeddings);

  // torch: layer_types = ["sliding_attention" if bool((i + 1) % 2) else "full_attention" for i in range(n)]
  const lt = c.layer_types ??
    Array.from({ length: numLayers }, (_, i) => ((i + 1) % 2 ? "sliding_attention" : "full_attention"));
  if (!Array.isArray(lt) || lt.length !== numLayers || !lt.every((t) => LAYER_TYPES.includes(t))) {
    throw new ConfigError(
      `Invalid layer_types: expected ${numLayers} entries (num_hidden_layers), each "sliding_attention" or "full_attention", got ${
        JSON.stringify(lt)
      }`,
      file,
    );
  }
  const layerTypes = lt as LayerType[];
  const sliding = layerTypes.includes("sliding_attention");
  let slidingWindow: number | null = null;
  if (sliding) {
    // absent: transformers' default 128; null leaves a sliding layer without a window, which transformers refuses
    if (c.sliding_window === null) {
      throw new ConfigError(
        "Invalid sliding_window: null, but layer_types has sliding_attention layers; expected a positive integer",
        file,
      );
    }
    slidingWindow = int("sliding_window", 1, 128);
  }

  return {
    modelType: GPT_OSS_MODEL_TYPE,
    vocabSize: int("vocab_size"),
    hiddenSize,
    numLayers,
    numHeads,
    numKvHeads,
    headDim,
    intermediateSize,
    numExperts,
    topK,
    maxPositionEmbeddings,
    rmsNormEps: num("rms_norm_eps", 1e-5),
    ropeTheta: rope.theta,
    ropeScaling: rope.scaling,
    layerTypes,
    slidingWindow,
    attentionBias: bool("attention_bias", true),
    swigluLimit: num("swiglu_limit", 7.0),
    // torch: self.alpha = 1.702; self.limit = config.swiglu_limit (GptOssExperts)
    swigluAlpha: SWIGLU_ALPHA,
    quantization: "mxfp4",
    tieWordEmbeddings: bool("tie_word_embeddings", false),
    bosTokenId: optionalId("bos_token_id"),
    eosTokenIds: tokenIds("eos_token_id"),
  };
}
