/**
 * What the decoder-only families (the causal ones and gpt-oss) share before a GPU: what `config.json`
 * says of their attention, read and checked the same way for every family (widths, layers, heads, the
 * head width the kernels take), and the tensors every such model has, with their shapes.
 *
 * @module
 */
import { configFields, type Json, MAX_LAYERS } from "../checkpoint/config.ts";
import { ConfigError } from "../errors.ts";
import { headDimSupported, MAX_HEAD_DIM } from "../kernels/attention.ts";
import type { QkvNames } from "./decoder_parts.ts";
import type { SpecBase } from "./family.ts";

/** A decoder's attention geometry (llama2.c's `Config`, in `config.json`'s names, camelCase). */
export interface DecoderGeometry {
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
}

/** What every decoder-only family's spec has: the geometry, its norms' epsilon and its rotary base. */
export interface DecoderSpec extends SpecBase, DecoderGeometry {
  /** Epsilon of every RMSNorm (`rms_norm_eps`). */
  readonly rmsNormEps: number;
  /** Base of the rotary position embedding (`rope_theta`, or `rope_parameters.rope_theta`). */
  readonly ropeTheta: number;
}

/**
 * The attention geometry of `config.json` object `c`.
 * @throws {ConfigError} for a missing or invalid value, with what was expected: layers over
 *   {@link MAX_LAYERS}, key/value heads that do not divide the query heads, a width that no head
 *   count divides without `head_dim`, or a head width the attention kernels do not take
 */
export function decoderGeometry(c: Json, file: string): DecoderGeometry {
  const { int } = configFields(c, file);
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
  if (c.head_dim == null) {
    if (hiddenSize % numHeads !== 0) {
      throw new ConfigError(
        `Invalid hidden_size: ${hiddenSize} is not a multiple of num_attention_heads ${numHeads} and no head_dim is given`,
        file,
      );
    }
    headDim = hiddenSize / numHeads;
  } else headDim = int("head_dim");
  if (!headDimSupported(headDim)) {
    throw new ConfigError(
      `Unsupported head_dim: ${headDim}, the attention kernels take a multiple of 4 up to ${MAX_HEAD_DIM}`,
      file,
    );
  }
  return { hiddenSize, numLayers, numHeads, numKvHeads, headDim };
}

/**
 * The tensors every decoder-only model has, which the program skeleton reads: the embedding, the final
 * norm, the head, and each layer's attention.
 */
export interface DecoderNames {
  readonly embed: string;
  readonly norm: string;
  readonly lmHead: string;
  readonly layers: readonly DecoderLayerNames[];
}

/** A layer's attention tensors. */
export interface DecoderLayerNames extends QkvNames {
  readonly inputNorm: string;
  readonly postNorm: string;
  readonly o: string;
}

/**
 * The shapes that `config.json` gives the tensors of {@link DecoderNames}: the embedding and head [V, D], the
 * final norm, and per layer its norms, q, k, v and o, and their biases where the layer has them.
 */
export function decoderShapes(spec: DecoderSpec, names: DecoderNames): Map<string, number[]> {
  const { hiddenSize: D, numHeads: H, numKvHeads: Hkv, headDim: hd, vocabSize: V } = spec;
  const s = new Map<string, number[]>();
  s.set(names.embed, [V, D]);
  s.set(names.norm, [D]);
  s.set(names.lmHead, [V, D]);
  for (const l of names.layers) {
    s.set(l.inputNorm, [D]);
    s.set(l.postNorm, [D]);
    s.set(l.q, [H * hd, D]);
    s.set(l.k, [Hkv * hd, D]);
    s.set(l.v, [Hkv * hd, D]);
    s.set(l.o, [D, H * hd]);
    if (l.qBias) s.set(l.qBias, [H * hd]);
    if (l.kBias) s.set(l.kBias, [Hkv * hd]);
    if (l.vBias) s.set(l.vBias, [Hkv * hd]);
  }
  return s;
}
