/**
 * What a decoder-only family's `config.json` says of its attention, read and checked the same way for
 * every family: widths, layers, heads and the head width the kernels take.
 *
 * @module
 */
import { configFields, type Json, MAX_LAYERS } from "../checkpoint/config.ts";
import { ConfigError } from "../errors.ts";
import { headDimSupported, MAX_HEAD_DIM } from "../kernels/attention.ts";
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
