/**
 * `config.json` → {@link ModelSpec}: the constants of a model, parsed with Hugging Face's own field
 * names and validated before any weight is touched.
 *
 * @module
 */
import { ConfigError } from "../errors.ts";
import { readTextFileLimited, TEXT_FILE_LIMITS } from "./text_file.ts";

/** Causal decoder-only MoE families this engine runs. */
export const CAUSAL_MODEL_TYPES = ["mixtral", "qwen2_moe", "qwen3_moe", "olmoe"] as const;
/** Encoder-decoder MoE families (parsed by `src/checkpoint/switch_config.ts`, run by `src/runtime/seq2seq.ts`). */
export const SEQ2SEQ_MODEL_TYPES = ["switch_transformers"] as const;
/** Every `model_type` this engine accepts. */
export const SUPPORTED_MODEL_TYPES = [...CAUSAL_MODEL_TYPES, ...SEQ2SEQ_MODEL_TYPES] as const;
/**
 * The most decoder layers, and experts summed over layers, a config may declare. Far above any published
 * model (DeepSeek-V3: 61 layers, 58 × 256 experts), low enough that the name tables built from a hostile
 * config stay small: a `num_hidden_layers` of millions would exhaust the JS heap before any tensor is read.
 */
export const MAX_LAYERS = 1024;
/** See {@link MAX_LAYERS}. */
export const MAX_TOTAL_EXPERTS = 1 << 17;

/** A causal MoE family. */
export type CausalModelType = typeof CAUSAL_MODEL_TYPES[number];
/** An encoder-decoder MoE family. */
export type Seq2SeqModelType = typeof SEQ2SEQ_MODEL_TYPES[number];

/** Where a query/key RMSNorm sits, if anywhere: Qwen3 normalises each head, OLMoE the whole projection. */
export type QkNorm = "none" | "per_head" | "whole";

/** The constants of a causal MoE model (llama2.c's `Config`). Names follow `config.json` in camelCase. */
export interface ModelSpec {
  /**
   * `config.json`'s `model_type`. An encoder-decoder's spec (`switch_transformers`) is a summary: its
   * layers are the encoder's blocks then the decoder's, see `switchModelSpec`.
   */
  readonly modelType: CausalModelType | Seq2SeqModelType;
  /** V: the vocabulary size (`vocab_size`), rows of the embedding and of the head. */
  readonly vocabSize: number;
  /** D: the residual stream width (`hidden_size`). */
  readonly hiddenSize: number;
  /** Decoder layers (`num_hidden_layers`). */
  readonly numLayers: number;
  /** H: query heads. */
  readonly numHeads: number;
  /** Hkv: key/value heads (grouped-query attention when < H). */
  readonly numKvHeads: number;
  /** hd: per-head width; `head_dim` when given, else D / H. */
  readonly headDim: number;
  /** Intermediate width of the dense MLP (layers without experts). */
  readonly intermediateSize: number;
  /** I: intermediate width of one expert. */
  readonly moeIntermediateSize: number;
  /** E: experts per MoE layer. */
  readonly numExperts: number;
  /** K: experts chosen per token. */
  readonly topK: number;
  /** Renormalise the K chosen probabilities to sum to one (always true for Mixtral). */
  readonly normTopkProb: boolean;
  /** Width of Qwen2-MoE's shared expert; 0 when the model has none. */
  readonly sharedExpertIntermediateSize: number;
  /** For each layer, whether its MLP is a sparse MoE block. */
  readonly sparseLayers: readonly boolean[];
  /** Epsilon of every RMSNorm (`rms_norm_eps`). */
  readonly rmsNormEps: number;
  /** Base of the rotary position embedding (`rope_theta`). */
  readonly ropeTheta: number;
  /** Longest context the model was trained for (`max_position_embeddings`). */
  readonly maxPositionEmbeddings: number;
  /** Sliding-window attention span, or null for full causal attention. */
  readonly slidingWindow: number | null;
  /** Biases on the q, k and v projections (Qwen2-MoE). */
  readonly qkvBias: boolean;
  /** Where a query/key RMSNorm sits, if anywhere. */
  readonly qkNorm: QkNorm;
  /** The head reuses the embedding matrix (`tie_word_embeddings`). */
  readonly tieWordEmbeddings: boolean;
  /** The beginning-of-sequence id (`bos_token_id`), when the config names one. */
  readonly bosTokenId: number | undefined;
  /** Every id that ends generation. */
  readonly eosTokenIds: readonly number[];
}

type Json = Record<string, unknown>;

/**
 * Typed readers of `config.json` fields, shared by both families' parsers: `int` (a safe integer >= `min`),
 * `num` (a finite number, positive unless told otherwise), `bool`, `optionalId` (a token id >= 0, or
 * absent/null) and `tokenIds` (one id or a list, each below `below`; none when absent); a missing key takes
 * `fallback`. Each throws a ConfigError naming the key and what was expected.
 */
export function configFields(c: Json, file: string): {
  int: (key: string, min?: number, fallback?: number) => number;
  num: (key: string, fallback?: number, positive?: boolean) => number;
  bool: (key: string, fallback: boolean) => boolean;
  optionalId: (key: string) => number | undefined;
  tokenIds: (key: string, below?: number) => number[];
} {
  return {
    int: (key, min = 1, fallback) => {
      const v = c[key] ?? fallback;
      if (typeof v !== "number" || !Number.isSafeInteger(v) || v < min) {
        throw new ConfigError(
          `Invalid ${key}: expected an integer >= ${min}, got ${JSON.stringify(c[key])}`,
          file,
        );
      }
      return v;
    },
    num: (key, fallback, positive = true) => {
      const v = c[key] ?? fallback;
      if (typeof v !== "number" || !Number.isFinite(v) || (positive && v <= 0)) {
        throw new ConfigError(
          `Invalid ${key}: expected a positive number, got ${JSON.stringify(c[key])}`,
          file,
        );
      }
      return v;
    },
    bool: (key, fallback) => {
      const v = c[key] ?? fallback;
      if (typeof v !== "boolean") {
        throw new ConfigError(`Invalid ${key}: expected true or false, got ${JSON.stringify(c[key])}`, file);
      }
      return v;
    },
    optionalId: (key) => {
      const v = c[key];
      if (v === undefined || v === null) return undefined;
      if (!(typeof v === "number" && Number.isSafeInteger(v) && v >= 0)) {
        throw new ConfigError(`Invalid ${key}: ${JSON.stringify(v)}`, file);
      }
      return v;
    },
    tokenIds: (key, below = Infinity) => {
      const v = c[key];
      const ids = v === undefined || v === null ? [] : Array.isArray(v) ? v : [v];
      if (!ids.every((x) => Number.isSafeInteger(x) && x >= 0 && x < below)) {
        throw new ConfigError(`Invalid ${key}: ${JSON.stringify(v)}`, file);
      }
      return ids as number[];
    },
  };
}

/** Reads `dir/config.json` as JSON (any shape), or a {@link ConfigError} naming the file. */
export async function readConfigJson(dir: string): Promise<{ json: unknown; file: string }> {
  const file = `${dir}/config.json`;
  const text = await readTextFileLimited(
    file,
    TEXT_FILE_LIMITS.config,
    (message, cause) => new ConfigError(`Cannot read config.json: ${message}`, file, { cause }),
  );
  if (text === undefined) {
    throw new ConfigError("Missing config.json: a model folder as published on Hugging Face has one", file);
  }
  try {
    return { json: JSON.parse(text), file };
  } catch (e) {
    throw new ConfigError(`config.json is not valid JSON: ${(e as Error).message}`, file, { cause: e });
  }
}

/**
 * Weight matrices per expert: gate, up and down for the causal families' gated (SwiGLU) experts; wi and
 * wo for Switch Transformers' ReLU experts.
 */
export function expertMatrices(spec: Pick<ModelSpec, "modelType">): 2 | 3 {
  return (SEQ2SEQ_MODEL_TYPES as readonly string[]).includes(spec.modelType) ? 2 : 3;
}

/** Bytes of one expert's weights in bf16, which is what one expert slot on the GPU holds. */
export function expertSlotBytes(
  spec: Pick<ModelSpec, "modelType" | "hiddenSize" | "moeIntermediateSize">,
): number {
  return expertMatrices(spec) * spec.moeIntermediateSize * spec.hiddenSize * 2;
}

/** Reads and parses `dir/config.json`; see {@link parseConfig}. */
export async function loadConfig(dir: string): Promise<ModelSpec> {
  const { json, file } = await readConfigJson(dir);
  return parseConfig(json, file);
}

/** Validates a parsed `config.json` object into a {@link ModelSpec}. */
export function parseConfig(json: unknown, file = "config.json"): ModelSpec {
  if (typeof json !== "object" || json === null || Array.isArray(json)) {
    throw new ConfigError("config.json must hold a JSON object", file);
  }
  const c = json as Json;
  const modelType = c.model_type;
  if (typeof modelType !== "string" || !(SUPPORTED_MODEL_TYPES as readonly string[]).includes(modelType)) {
    throw new ConfigError(
      `Unsupported model_type: ${JSON.stringify(modelType)}, supported are ${
        SUPPORTED_MODEL_TYPES.join(", ")
      }`,
      file,
    );
  }
  if ((SEQ2SEQ_MODEL_TYPES as readonly string[]).includes(modelType)) {
    throw new ConfigError(
      `model_type ${
        JSON.stringify(modelType)
      } is an encoder-decoder: its config is read by parseSwitchConfig (src/checkpoint/switch_config.ts), and createEngine runs it`,
      file,
    );
  }
  const mt = modelType as CausalModelType;
  const { int, num, bool, optionalId, tokenIds } = configFields(c, file);

  const hiddenSize = int("hidden_size");
  const numLayers = int("num_hidden_layers");
  if (numLayers > MAX_LAYERS) {
    throw new ConfigError(
      `Invalid num_hidden_layers: ${numLayers}, at most ${MAX_LAYERS} are supported`,
      file,
    );
  }
  const numHeads = int("num_attention_heads");
  const numKvHeads = int("num_key_value_heads", 1, numHeads);
  if (numHeads % numKvHeads !== 0) {
    throw new ConfigError(
      `Invalid num_key_value_heads: ${numKvHeads} must divide num_attention_heads ${numHeads}`,
      file,
    );
  }
  let headDim: number;
  if (c.head_dim === null || c.head_dim === undefined) {
    if (hiddenSize % numHeads !== 0) {
      throw new ConfigError(
        `Invalid hidden_size: ${hiddenSize} is not a multiple of num_attention_heads ${numHeads} and no head_dim is given`,
        file,
      );
    }
    headDim = hiddenSize / numHeads;
  } else headDim = int("head_dim");
  if (headDim % 2 !== 0) throw new ConfigError(`Invalid head_dim: ${headDim} must be even for RoPE`, file);

  const numExperts = mt === "mixtral"
    ? int("num_local_experts")
    : int("num_experts", 1, c.num_local_experts as number);
  if (numExperts * numLayers > MAX_TOTAL_EXPERTS) {
    throw new ConfigError(
      `Invalid ${
        mt === "mixtral" ? "num_local_experts" : "num_experts"
      }: ${numExperts} experts × ${numLayers} layers, at most ${MAX_TOTAL_EXPERTS} experts in all are supported`,
      file,
    );
  }
  const topK = int("num_experts_per_tok");
  if (topK > numExperts) {
    throw new ConfigError(`Invalid num_experts_per_tok: ${topK} exceeds the ${numExperts} experts`, file);
  }
  const intermediateSize = int("intermediate_size");
  const moeIntermediateSize = mt === "mixtral" || mt === "olmoe"
    ? intermediateSize
    : int("moe_intermediate_size");
  const sharedExpertIntermediateSize = mt === "qwen2_moe" ? int("shared_expert_intermediate_size", 0, 0) : 0;

  // torch (qwen2_moe, qwen3_moe): sparse if layer_idx not in mlp_only_layers and (layer_idx + 1) % decoder_sparse_step == 0
  let sparseLayers: boolean[];
  if (mt === "qwen2_moe" || mt === "qwen3_moe") {
    const step = int("decoder_sparse_step", 1, 1);
    const only = c.mlp_only_layers ?? [];
    if (!Array.isArray(only) || !only.every((x) => Number.isSafeInteger(x) && x >= 0 && x < numLayers)) {
      throw new ConfigError(`Invalid mlp_only_layers: expected layer indices below ${numLayers}`, file);
    }
    const dense = new Set(only);
    sparseLayers = Array.from({ length: numLayers }, (_, i) => !dense.has(i) && (i + 1) % step === 0);
  } else sparseLayers = Array(numLayers).fill(true);
  if (!sparseLayers.some((s) => s)) throw new ConfigError("The model has no MoE layer", file);

  // Newer configs nest rope_theta in rope_parameters; older ones keep it at the top level.
  const rp = c.rope_parameters as Json | undefined | null;
  if (rp !== undefined && rp !== null && typeof rp !== "object") {
    throw new ConfigError("Invalid rope_parameters: expected an object", file);
  }
  const ropeType =
    (rp?.rope_type ?? rp?.type ?? (c.rope_scaling as Json | null)?.rope_type ?? "default") as unknown;
  if (ropeType !== "default") {
    throw new ConfigError(`Unsupported rope_type: ${JSON.stringify(ropeType)}, supported is "default"`, file);
  }
  const thetaSource = rp?.rope_theta ?? c.rope_theta ?? 10000;
  if (typeof thetaSource !== "number" || !(thetaSource > 0)) {
    throw new ConfigError(
      `Invalid rope_theta: expected a positive number, got ${JSON.stringify(thetaSource)}`,
      file,
    );
  }
  if ((rp?.partial_rotary_factor ?? c.partial_rotary_factor ?? 1) !== 1) {
    throw new ConfigError("Unsupported partial_rotary_factor: only 1 is supported", file);
  }
  if (mt === "olmoe" && c.clip_qkv !== null && c.clip_qkv !== undefined) {
    throw new ConfigError("Unsupported clip_qkv: only null is supported", file);
  }
  const act = c.hidden_act ?? "silu";
  if (act !== "silu") {
    throw new ConfigError(`Unsupported hidden_act: ${JSON.stringify(act)}, supported is "silu"`, file);
  }

  let slidingWindow: number | null = null;
  const useSliding = mt === "mixtral" ? true : bool("use_sliding_window", false);
  if (useSliding && c.sliding_window !== null && c.sliding_window !== undefined && c.sliding_window !== 0) {
    slidingWindow = int("sliding_window");
  }

  const eosTokenIds = tokenIds("eos_token_id");
  const bosTokenId = optionalId("bos_token_id");

  return {
    modelType: mt,
    vocabSize: int("vocab_size"),
    hiddenSize,
    numLayers,
    numHeads,
    numKvHeads,
    headDim,
    intermediateSize,
    moeIntermediateSize,
    numExperts,
    topK,
    normTopkProb: mt === "mixtral" ? true : bool("norm_topk_prob", false),
    sharedExpertIntermediateSize,
    sparseLayers,
    rmsNormEps: num("rms_norm_eps", 1e-6),
    ropeTheta: thetaSource,
    maxPositionEmbeddings: int("max_position_embeddings", 1, 4096),
    slidingWindow,
    qkvBias: mt === "qwen2_moe" ? bool("qkv_bias", true) : bool("attention_bias", false),
    qkNorm: mt === "qwen3_moe" ? "per_head" : mt === "olmoe" ? "whole" : "none",
    tieWordEmbeddings: bool("tie_word_embeddings", false),
    bosTokenId,
    eosTokenIds,
  };
}
