/**
 * `config.json` of a Switch Transformers checkpoint (`model_type: "switch_transformers"`, transformers'
 * `SwitchTransformersConfig`) → {@link SwitchSpec}: an encoder-decoder in the T5 layout whose every
 * `encoder_sparse_step`-th / `decoder_sparse_step`-th block replaces its dense ReLU MLP by top-1 routed
 * ReLU experts.
 *
 * @module
 */
import { ConfigError } from "../errors.ts";
import { configFields, MAX_LAYERS, MAX_TOTAL_EXPERTS, type ModelSpec, readConfigJson } from "./config.ts";

/** The model type this module parses. */
export const SWITCH_MODEL_TYPE = "switch_transformers";

/** Positions the engine holds when nothing says otherwise (T5's `n_positions`). */
export const SWITCH_DEFAULT_POSITIONS = 512;

/** The constants of a Switch Transformers model. Names follow `config.json` in camelCase. */
export interface SwitchSpec {
  /** Always `"switch_transformers"`. */
  readonly modelType: typeof SWITCH_MODEL_TYPE;
  /** V: the vocabulary size (`vocab_size`). */
  readonly vocabSize: number;
  /** D: the residual stream width (`d_model`). */
  readonly dModel: number;
  /** hd: the width of one attention head (`d_kv`); q/k/v project to H · hd. */
  readonly dKv: number;
  /** I: the width of a dense MLP and of one expert (`d_ff`). */
  readonly dFf: number;
  /** H: attention heads (`num_heads`). */
  readonly numHeads: number;
  /** Encoder blocks (`num_layers`). */
  readonly numEncoderLayers: number;
  /** Decoder blocks (`num_decoder_layers`, else `num_layers`). */
  readonly numDecoderLayers: number;
  /** E: experts per sparse block (`num_experts`). */
  readonly numExperts: number;
  /** Tokens one expert takes per sequence in training (`expert_capacity`); see the engine's `expertCapacity` option. */
  readonly expertCapacity: number;
  /** Per encoder block, whether its MLP is sparse: transformers' `i % step == 1 or step == 1`. */
  readonly encoderSparseLayers: readonly boolean[];
  /** Per decoder block, the same. */
  readonly decoderSparseLayers: readonly boolean[];
  /** Buckets of the relative position bias (`relative_attention_num_buckets`). */
  readonly relativeAttentionNumBuckets: number;
  /** Distance beyond which relative positions share a bucket (`relative_attention_max_distance`). */
  readonly relativeAttentionMaxDistance: number;
  /** Epsilon of every T5 layer norm (RMSNorm without mean or bias; `layer_norm_epsilon`). */
  readonly layerNormEps: number;
  /** The router classifier has a bias (`router_bias`). */
  readonly routerBias: boolean;
  /** The LM head is `shared.weight`, and the decoder output is scaled by d_model^-0.5 before it. */
  readonly tieWordEmbeddings: boolean;
  /** The first decoder input (`decoder_start_token_id`, usually the pad id 0). */
  readonly decoderStartTokenId: number;
  /** The pad id (`pad_token_id`). */
  readonly padTokenId: number | undefined;
  /** The beginning-of-sequence id, when the config names one. */
  readonly bosTokenId: number | undefined;
  /** Every id that ends generation. */
  readonly eosTokenIds: readonly number[];
  /** Positions by default: `n_positions` when given, else 512 (T5's relative bias has no hard limit). */
  readonly maxPositions: number;
}

type Json = Record<string, unknown>;

/** Reads `dir/config.json`'s `model_type`, or undefined when it cannot be read (the caller reports that). */
export async function readModelType(dir: string): Promise<string | undefined> {
  try {
    const { json } = await readConfigJson(dir);
    const type = (json as { model_type?: unknown } | null)?.model_type;
    return typeof type === "string" ? type : undefined;
  } catch {
    return undefined;
  }
}

/** Reads and parses `dir/config.json`; see {@link parseSwitchConfig}. */
export async function loadSwitchConfig(dir: string): Promise<SwitchSpec> {
  const { json, file } = await readConfigJson(dir);
  return parseSwitchConfig(json, file);
}

/**
 * The sparse blocks of a stack of `layers` blocks with sparse step `step`, as transformers'
 * `SwitchTransformersStack` builds them: `is_sparse = (i % step == 1 or step == 1) if step > 0 else False`.
 */
export function sparseBlocks(layers: number, step: number): boolean[] {
  return Array.from({ length: layers }, (_, i) => (step > 0 ? i % step === 1 || step === 1 : false));
}

/** Validates a parsed `config.json` object into a {@link SwitchSpec}. */
export function parseSwitchConfig(json: unknown, file = "config.json"): SwitchSpec {
  if (typeof json !== "object" || json === null || Array.isArray(json)) {
    throw new ConfigError("config.json must hold a JSON object", file);
  }
  const c = json as Json;
  if (c.model_type !== SWITCH_MODEL_TYPE) {
    throw new ConfigError(
      `Unsupported model_type: ${JSON.stringify(c.model_type)}, expected "${SWITCH_MODEL_TYPE}"`,
      file,
    );
  }
  const { int, num, bool, optionalId, tokenIds } = configFields(c, file);

  const vocabSize = int("vocab_size");
  const dModel = int("d_model");
  const dKv = int("d_kv");
  const dFf = int("d_ff");
  const numHeads = int("num_heads");
  const numEncoderLayers = int("num_layers");
  const numDecoderLayers = int("num_decoder_layers", 1, numEncoderLayers);
  if (numEncoderLayers + numDecoderLayers > MAX_LAYERS) {
    throw new ConfigError(
      `Invalid num_layers: ${numEncoderLayers} encoder + ${numDecoderLayers} decoder blocks, at most ${MAX_LAYERS} are supported`,
      file,
    );
  }
  if (dModel % 2 || dFf % 2 || (numHeads * dKv) % 2) {
    throw new ConfigError(
      `Invalid d_model / d_ff / num_heads·d_kv: ${dModel} / ${dFf} / ${numHeads * dKv}, all must be even`,
      file,
    );
  }
  if (dKv > 256) throw new ConfigError(`Invalid d_kv: ${dKv}, at most 256 is supported`, file);
  const numExperts = int("num_experts");
  if (numExperts > 256) {
    throw new ConfigError(`Invalid num_experts: ${numExperts}, at most 256 per block are supported`, file);
  }

  // transformers' SwitchTransformersConfig: step = num_layers // num_sparse_layers, or num_layers when 0
  const step = (key: string, layers: number, sparseKey: string): number => {
    if (c[key] !== undefined && c[key] !== null) return int(key, 0);
    const n = int(sparseKey, 0, 0);
    return n > 0 ? Math.floor(layers / n) : layers;
  };
  const encoderSparseLayers = sparseBlocks(
    numEncoderLayers,
    step("encoder_sparse_step", numEncoderLayers, "num_sparse_encoder_layers"),
  );
  const decoderSparseLayers = sparseBlocks(
    numDecoderLayers,
    step("decoder_sparse_step", numDecoderLayers, "num_sparse_decoder_layers"),
  );
  const moeBlocks = [...encoderSparseLayers, ...decoderSparseLayers].filter((s) => s).length;
  if (moeBlocks === 0) throw new ConfigError("The model has no sparse (MoE) block", file);
  if (numExperts * moeBlocks > MAX_TOTAL_EXPERTS) {
    throw new ConfigError(
      `Invalid num_experts: ${numExperts} experts × ${moeBlocks} sparse blocks, at most ${MAX_TOTAL_EXPERTS} experts in all are supported`,
      file,
    );
  }

  // T5 v1.0 ReLU MLPs only: "gated-gelu" (T5 v1.1) has a second input projection
  const ffProj = c.feed_forward_proj ?? "relu";
  const act = c.dense_act_fn ?? (typeof ffProj === "string" ? ffProj.split("-").at(-1) : ffProj);
  if (
    act !== "relu" || (typeof ffProj === "string" && ffProj.startsWith("gated")) || c.is_gated_act === true
  ) {
    throw new ConfigError(
      `Unsupported feed-forward: dense_act_fn ${JSON.stringify(c.dense_act_fn)}, feed_forward_proj ${
        JSON.stringify(c.feed_forward_proj)
      }; supported is the ReLU MLP "relu"`,
      file,
    );
  }
  // The router kernel computes its logits and softmax in float32, as every published Switch checkpoint
  // configures; a bfloat16 or float16 router would choose differently at near ties, so it is refused.
  const routerDtype = c.router_dtype ?? "float32";
  if (routerDtype !== "float32") {
    throw new ConfigError(
      `Unsupported router_dtype: ${
        JSON.stringify(routerDtype)
      }, this engine routes in "float32" (as google/switch-* configure it)`,
      file,
    );
  }

  const eosTokenIds = tokenIds("eos_token_id", vocabSize);
  const padTokenId = optionalId("pad_token_id");
  const decoderStartTokenId = optionalId("decoder_start_token_id") ?? padTokenId;
  if (decoderStartTokenId === undefined || decoderStartTokenId >= vocabSize) {
    throw new ConfigError(
      `Invalid decoder_start_token_id: ${
        JSON.stringify(c.decoder_start_token_id)
      }, expected a token id below ${vocabSize} (or a pad_token_id to start from)`,
      file,
    );
  }
  const eps = num("layer_norm_epsilon", 1e-6);
  const numBuckets = int("relative_attention_num_buckets", 2, 32);
  const maxDistance = int("relative_attention_max_distance", 1, 128);

  return {
    modelType: SWITCH_MODEL_TYPE,
    vocabSize,
    dModel,
    dKv,
    dFf,
    numHeads,
    numEncoderLayers,
    numDecoderLayers,
    numExperts,
    expertCapacity: int("expert_capacity", 0, 64),
    encoderSparseLayers,
    decoderSparseLayers,
    relativeAttentionNumBuckets: numBuckets,
    relativeAttentionMaxDistance: maxDistance,
    layerNormEps: eps,
    routerBias: bool("router_bias", false),
    // SwitchTransformersConfig's own default is true (T5); the published checkpoints say what they are
    tieWordEmbeddings: bool("tie_word_embeddings", true),
    decoderStartTokenId,
    padTokenId,
    bosTokenId: optionalId("bos_token_id"),
    eosTokenIds,
    maxPositions: int("n_positions", 1, SWITCH_DEFAULT_POSITIONS),
  };
}

/** Every MoE router of the model in router order: encoder blocks first, then decoder blocks. */
export function switchSparseLayers(spec: SwitchSpec): boolean[] {
  return [...spec.encoderSparseLayers, ...spec.decoderSparseLayers];
}

/**
 * The {@link ModelSpec} summary of a Switch model, for what reads `engine.spec` (the CLI, the server):
 * layers are the encoder blocks then the decoder blocks, one expert is a ReLU MLP of width `d_ff`
 * (two matrices, not three), top-1 without renormalisation, no rotary embedding (`ropeTheta` 0).
 */
export function switchModelSpec(spec: SwitchSpec): ModelSpec {
  return {
    modelType: spec.modelType,
    vocabSize: spec.vocabSize,
    hiddenSize: spec.dModel,
    numLayers: spec.numEncoderLayers + spec.numDecoderLayers,
    numHeads: spec.numHeads,
    numKvHeads: spec.numHeads,
    headDim: spec.dKv,
    intermediateSize: spec.dFf,
    moeIntermediateSize: spec.dFf,
    numExperts: spec.numExperts,
    topK: 1,
    normTopkProb: false,
    sharedExpertIntermediateSize: 0,
    sparseLayers: switchSparseLayers(spec),
    rmsNormEps: spec.layerNormEps,
    ropeTheta: 0,
    maxPositionEmbeddings: spec.maxPositions,
    slidingWindow: null,
    qkvBias: false,
    qkNorm: "none",
    tieWordEmbeddings: spec.tieWordEmbeddings,
    bosTokenId: spec.bosTokenId,
    eosTokenIds: spec.eosTokenIds,
  };
}
