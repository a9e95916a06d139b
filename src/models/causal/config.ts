/**
 * `config.json` of a causal MoE decoder (Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE) → {@link CausalSpec}:
 * the constants of the model, parsed with Hugging Face's own field names and validated before any
 * weight is touched.
 *
 * @module
 */
import { configFields, type Json, MAX_TOTAL_EXPERTS } from "../../checkpoint/config.ts";
import { ConfigError } from "../../errors.ts";
import { decoderGeometry, type DecoderSpec } from "../decoder_config.ts";

/** Causal decoder-only MoE families this engine runs. */
export const CAUSAL_MODEL_TYPES = ["mixtral", "qwen2_moe", "qwen3_moe", "olmoe"] as const;
/** A causal MoE family. */
export type CausalModelType = typeof CAUSAL_MODEL_TYPES[number];

/** Where a query/key RMSNorm sits, if anywhere: Qwen3 normalises each head, OLMoE the whole projection. */
export type QkNorm = "none" | "per_head" | "whole";

/** The constants of a causal MoE model (llama2.c's `Config`). Names follow `config.json` in camelCase. */
export interface CausalSpec extends DecoderSpec {
  /** `config.json`'s `model_type`. */
  readonly modelType: CausalModelType;
  /** Intermediate width of the dense MLP (layers without experts). */
  readonly intermediateSize: number;
  /** I: intermediate width of one expert. */
  readonly moeIntermediateSize: number;
  /** Renormalise the K chosen probabilities to sum to one (always true for Mixtral). */
  readonly normTopkProb: boolean;
  /** Width of Qwen2-MoE's shared expert; 0 when the model has none. */
  readonly sharedExpertIntermediateSize: number;
  /** For each layer, whether its MLP is a sparse MoE block. */
  readonly sparseLayers: readonly boolean[];
  /** Sliding-window attention span, or null for full causal attention. */
  readonly slidingWindow: number | null;
  /** Biases on the q, k and v projections (Qwen2-MoE). */
  readonly qkvBias: boolean;
  /** Where a query/key RMSNorm sits, if anywhere. */
  readonly qkNorm: QkNorm;
  /** The head reuses the embedding matrix (`tie_word_embeddings`). */
  readonly tieWordEmbeddings: boolean;
}

/** Validates a parsed `config.json` object of a causal family into a {@link CausalSpec}. */
export function parseCausalConfig(json: unknown, file = "config.json"): CausalSpec {
  if (typeof json !== "object" || json === null || Array.isArray(json)) {
    throw new ConfigError("config.json must hold a JSON object", file);
  }
  const c = json as Json;
  const modelType = c.model_type;
  if (typeof modelType !== "string" || !(CAUSAL_MODEL_TYPES as readonly string[]).includes(modelType)) {
    throw new ConfigError(
      `Unsupported model_type: ${JSON.stringify(modelType)}, expected one of ${
        CAUSAL_MODEL_TYPES.join(", ")
      }`,
      file,
    );
  }
  const mt = modelType as CausalModelType;
  const { int, num, bool, optionalId, tokenIds } = configFields(c, file);

  const { hiddenSize, numLayers, numHeads, numKvHeads, headDim } = decoderGeometry(c, file);

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
