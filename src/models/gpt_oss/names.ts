/**
 * gpt-oss's checkpoint names → engine layout, in one place, and the checks of every tensor against
 * `config.json`: the bf16 tensors through {@link checkTensorShapes}, the MXFP4 experts' `*_blocks` and
 * `*_scales` (uint8) here. Names as transformers' GptOssForCausalLM and the published safetensors have
 * them; the routed experts of a layer are fused, [E, …] per tensor, so one expert is a byte range of
 * each (see {@link expertRanges}).
 *
 * Axes: E experts, D hidden, I expert width, H / Hkv heads, hd head width, V vocabulary, G = in / 32
 * MXFP4 blocks per row.
 *
 * @module
 */
import type { TensorInfo } from "../../checkpoint/safetensors.ts";
import { CheckpointError } from "../../errors.ts";
import { decoderShapes } from "../decoder_config.ts";
import { checkTensorShapes, type TensorPiece } from "../family.ts";
import { matrixLayout } from "../../quant/formats.ts";
import type { GptOssSpec } from "./config.ts";

/** Values per MXFP4 block: one e8m0 scale for 32 e2m1 values, 16 bytes. */
export const MXFP4_BLOCK = 32;
/** Bytes of one MXFP4 block's values (two e2m1 values per byte). */
export const MXFP4_BLOCK_BYTES = 16;

/** One MXFP4 matrix of every expert of a layer: blocks [E, out, G, 16] u8, scales [E, out, G] u8. */
export interface Mxfp4Names {
  readonly blocks: string;
  readonly scales: string;
}

/** A layer's fused experts. */
export interface ExpertNames {
  /** [E, 2I, D/32, 16] u8 and [E, 2I, D/32] u8: rows 2j and 2j + 1 are gate j and up j (interleaved). */
  readonly gateUp: Mxfp4Names;
  /** [E, 2I] bf16, interleaved as the rows. */
  readonly gateUpBias: string;
  /** [E, D, I/32, 16] u8 and [E, D, I/32] u8. */
  readonly down: Mxfp4Names;
  /** [E, D] bf16. */
  readonly downBias: string;
}

/** One decoder layer's tensors. */
export interface LayerNames {
  readonly inputNorm: string;
  readonly postNorm: string;
  readonly q: string;
  readonly k: string;
  readonly v: string;
  readonly o: string;
  /** With `attention_bias` (as published): biases of q, k, v and o. */
  readonly qBias?: string;
  readonly kBias?: string;
  readonly vBias?: string;
  readonly oBias?: string;
  /** [H] bf16: each head's sink logit. */
  readonly sinks: string;
  /** [E, D] bf16 and [E] bf16. */
  readonly router: string;
  readonly routerBias: string;
  readonly experts: ExpertNames;
}

/** Every tensor of a gpt-oss checkpoint. */
export interface GptOssNames {
  readonly embed: string;
  readonly norm: string;
  /** The LM head; the embedding when the model ties them. */
  readonly lmHead: string;
  readonly layers: readonly LayerNames[];
}

/** The checkpoint names of `spec`. */
export function gptOssNames(spec: GptOssSpec): GptOssNames {
  const layers = Array.from({ length: spec.numLayers }, (_, i): LayerNames => {
    const p = `model.layers.${i}`;
    const a = `${p}.self_attn`;
    const x = `${p}.mlp.experts`;
    return {
      inputNorm: `${p}.input_layernorm.weight`,
      postNorm: `${p}.post_attention_layernorm.weight`,
      q: `${a}.q_proj.weight`,
      k: `${a}.k_proj.weight`,
      v: `${a}.v_proj.weight`,
      o: `${a}.o_proj.weight`,
      ...(spec.attentionBias
        ? {
          qBias: `${a}.q_proj.bias`,
          kBias: `${a}.k_proj.bias`,
          vBias: `${a}.v_proj.bias`,
          oBias: `${a}.o_proj.bias`,
        }
        : {}),
      sinks: `${a}.sinks`,
      router: `${p}.mlp.router.weight`,
      routerBias: `${p}.mlp.router.bias`,
      experts: {
        gateUp: { blocks: `${x}.gate_up_proj_blocks`, scales: `${x}.gate_up_proj_scales` },
        gateUpBias: `${x}.gate_up_proj_bias`,
        down: { blocks: `${x}.down_proj_blocks`, scales: `${x}.down_proj_scales` },
        downBias: `${x}.down_proj_bias`,
      },
    };
  });
  return {
    embed: "model.embed_tokens.weight",
    norm: "model.norm.weight",
    lmHead: spec.tieWordEmbeddings ? "model.embed_tokens.weight" : "lm_head.weight",
    layers,
  };
}

/** The shape of every bf16 tensor according to `config.json` (the experts' biases included). */
export function bf16Shapes(spec: GptOssSpec, names: GptOssNames): Map<string, number[]> {
  const { hiddenSize: D, numHeads: H, numExperts: E } = spec;
  const I = spec.intermediateSize;
  const s = decoderShapes(spec, names);
  for (const l of names.layers) {
    if (l.oBias) s.set(l.oBias, [D]);
    s.set(l.sinks, [H]);
    s.set(l.router, [E, D]);
    s.set(l.routerBias, [E]);
    s.set(l.experts.gateUpBias, [E, 2 * I]);
    s.set(l.experts.downBias, [E, D]);
  }
  return s;
}

/** An MXFP4 matrix of every expert: its names, rows (out) and columns (in). */
export interface Mxfp4Matrix extends Mxfp4Names {
  readonly rows: number;
  readonly cols: number;
}

/** Every MXFP4 matrix of the checkpoint: per layer, gate_up [2I, D] then down [D, I]. */
export function mxfp4Matrices(spec: GptOssSpec, names: GptOssNames): Mxfp4Matrix[] {
  const { hiddenSize: D, intermediateSize: I } = spec;
  return names.layers.flatMap((l) => [
    { ...l.experts.gateUp, rows: 2 * I, cols: D },
    { ...l.experts.down, rows: D, cols: I },
  ]);
}

const same = (a: readonly number[], b: readonly number[]) =>
  a.length === b.length && a.every((d, i) => d === b[i]);

/**
 * Checks one MXFP4 matrix of every expert: blocks and scales present, uint8, of the shapes `config.json`
 * implies ([E, rows, cols/32, 16] and [E, rows, cols/32]), and agreeing with each other.
 * @throws {CheckpointError} naming the tensor
 */
export function checkMxfp4(
  numExperts: number,
  m: Mxfp4Matrix,
  tensors: ReadonlyMap<string, TensorInfo>,
  dir: string,
): void {
  const G = m.cols / MXFP4_BLOCK;
  const wantBlocks = [numExperts, m.rows, G, MXFP4_BLOCK_BYTES];
  const wantScales = [numExperts, m.rows, G];
  const blocks = tensors.get(m.blocks);
  const scales = tensors.get(m.scales);
  const base = m.blocks.replace(/_blocks$/, "");
  if (!blocks) {
    const dense = tensors.get(base);
    throw new CheckpointError(
      `Missing tensor for gpt_oss: "${m.blocks}" (expected shape [${wantBlocks}] U8 from config.json)${
        dense
          ? `; found "${base}" (${dense.dtype} [${dense.shape}]) instead: dequantized experts are not read, only MXFP4 as published`
          : ""
      }`,
      dir,
    );
  }
  if (!scales) {
    throw new CheckpointError(
      `Missing tensor for gpt_oss: "${m.scales}", the MXFP4 scales of "${m.blocks}" (expected shape [${wantScales}] U8)`,
      blocks.file,
    );
  }
  for (const t of [blocks, scales]) {
    if (t.dtype !== "U8") {
      throw new CheckpointError(
        `Unsupported dtype: "${t.name}" is ${t.dtype}, MXFP4 ${t === blocks ? "blocks" : "scales"} are U8`,
        t.file,
      );
    }
  }
  // blocks [..., G, 16] and scales [..., G] must describe the same blocks, whatever the config says
  if (!same(blocks.shape.slice(0, -1), scales.shape) || blocks.shape.at(-1) !== MXFP4_BLOCK_BYTES) {
    throw new CheckpointError(
      `MXFP4 blocks and scales disagree: "${m.blocks}" is [${blocks.shape}] and "${m.scales}" is [${scales.shape}]; a scale per block of 16 bytes needs blocks [..., G, 16] with scales [..., G]`,
      scales.file,
    );
  }
  if (!same(blocks.shape, wantBlocks)) {
    throw new CheckpointError(
      `Tensor shape disagrees with config.json: "${m.blocks}" is [${blocks.shape}], expected [${wantBlocks}] (experts, rows, columns / 32, 16)`,
      blocks.file,
    );
  }
}

/**
 * Refuses a checkpoint whose tensors disagree with its config: a tensor missing, of another shape or
 * dtype (bf16 for everything but the experts' blocks and scales), at an odd offset, or MXFP4 blocks and
 * scales that disagree. Extra tensors are ignored.
 * @throws {CheckpointError} naming the tensor and the file
 */
export function checkGptOssTensors(
  spec: GptOssSpec,
  names: GptOssNames,
  tensors: ReadonlyMap<string, TensorInfo>,
  dir: string,
): void {
  for (const m of mxfp4Matrices(spec, names)) checkMxfp4(spec.numExperts, m, tensors, dir);
  checkTensorShapes(spec.modelType, bf16Shapes(spec, names), tensors, dir);
}

/** Where one expert's part lies: `byteLength` bytes from `byteOffset` of tensor `tensor`'s data. */
export interface ByteRange {
  readonly tensor: string;
  /** From the start of the tensor's data (add the tensor's own offset in its file). */
  readonly byteOffset: number;
  readonly byteLength: number;
}

/**
 * Expert `e`'s six parts inside a layer's fused tensors. Each fused tensor is [E, …] row-major, so
 * expert e is the e-th of E equal slices:
 *
 * | part | slice shape | bytes |
 * | --- | --- | --- |
 * | gateUpBlocks | [2I, D/32, 16] u8 | 2I · D/2 |
 * | gateUpScales | [2I, D/32] u8 | 2I · D/32 |
 * | gateUpBias | [2I] bf16 | 2I · 2 |
 * | downBlocks | [D, I/32, 16] u8 | D · I/2 |
 * | downScales | [D, I/32] u8 | D · I/32 |
 * | downBias | [D] bf16 | D · 2 |
 */
export interface ExpertRanges {
  readonly gateUpBlocks: ByteRange;
  readonly gateUpScales: ByteRange;
  readonly gateUpBias: ByteRange;
  readonly downBlocks: ByteRange;
  readonly downScales: ByteRange;
  readonly downBias: ByteRange;
}

/** Expert `e` of decoder layer `layer`: its byte ranges in the fused tensors (see {@link ExpertRanges}). */
export function expertRanges(spec: GptOssSpec, names: GptOssNames, layer: number, e: number): ExpertRanges {
  const { hiddenSize: D, intermediateSize: I, numExperts: E } = spec;
  const x = names.layers[layer]?.experts;
  if (!x || !Number.isInteger(e) || e < 0 || e >= E) throw new RangeError(`No expert ${e} in layer ${layer}`);
  const slice = (tensor: string, bytes: number): ByteRange => ({
    tensor,
    byteOffset: e * bytes,
    byteLength: bytes,
  });
  return {
    gateUpBlocks: slice(x.gateUp.blocks, (2 * I * D) / 2),
    gateUpScales: slice(x.gateUp.scales, (2 * I * D) / MXFP4_BLOCK),
    gateUpBias: slice(x.gateUpBias, 2 * I * 2),
    downBlocks: slice(x.down.blocks, (D * I) / 2),
    downScales: slice(x.down.scales, (D * I) / MXFP4_BLOCK),
    downBias: slice(x.downBias, D * 2),
  };
}

/** Bytes of one expert as stored (MXFP4 blocks and scales, bf16 biases): the sum of its {@link ExpertRanges}. */
export function storedExpertBytes(spec: GptOssSpec): number {
  const { hiddenSize: D, intermediateSize: I } = spec;
  return (2 * I * D) / 2 + (2 * I * D) / MXFP4_BLOCK + 4 * I + (D * I) / 2 + (D * I) / MXFP4_BLOCK + 2 * D;
}

/**
 * Matrix `m` of expert `e` of decoder layer `layer` (0: gate_up [2I, D], 1: down [D, I], family.ts'
 * `expertMatrices` order) as pieces of the fused tensors, placed in the mxfp4 layout with a bias
 * (src/quant/formats.ts `matrixLayout("mxfp4", rows, cols, true)`): the blocks are the codes (two e2m1
 * per byte, the even element low, as the kernels read them), then the scales one byte per 32, then the
 * bf16 bias of each row. The slot copy is the stored bytes, nothing converted.
 */
export function expertPieces(
  spec: GptOssSpec,
  names: GptOssNames,
  layer: number,
  e: number,
  m: number,
): TensorPiece[] {
  const { hiddenSize: D, intermediateSize: I } = spec;
  const r = expertRanges(spec, names, layer, e);
  const [blocks, scales, bias, rows, cols] = m === 0
    ? [r.gateUpBlocks, r.gateUpScales, r.gateUpBias, 2 * I, D]
    : m === 1
    ? [r.downBlocks, r.downScales, r.downBias, D, I]
    : [];
  if (!blocks || !scales || !bias || !rows || !cols) throw new RangeError(`No expert matrix ${m}`);
  const layout = matrixLayout("mxfp4", rows, cols, true);
  const piece = (range: ByteRange, at: number): TensorPiece => ({
    tensor: range.tensor,
    offset: range.byteOffset,
    bytes: range.byteLength,
    at,
  });
  return [piece(blocks, 0), piece(scales, layout.scalesAt), piece(bias, layout.biasAt)];
}
