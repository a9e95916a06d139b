/**
 * Switch Transformers checkpoint names (the T5 layout of `SwitchTransformersForConditionalGeneration`)
 * → engine layout, the shape each tensor must have, and the check that refuses a checkpoint that
 * disagrees with its config. {@link switchTensorShapes} lists every tensor the engine reads, so that a
 * checkpoint of any {@link SwitchSpec} can be synthesised (bench/synth.ts-style).
 *
 * @module
 */
import type { TensorInfo } from "../../checkpoint/safetensors.ts";
import { checkTensorShapes } from "../family.ts";
import type { SwitchSpec } from "./config.ts";

/** One attention sub-layer: its pre-norm and projections (q, k, v: [H·hd, D]; o: [D, H·hd]). */
export interface T5AttentionNames {
  norm: string;
  q: string;
  k: string;
  v: string;
  o: string;
}

/** One ReLU MLP (`DenseReluDense` or an expert): wi [d_ff, D], wo [D, d_ff]. */
export interface ReluMlpNames {
  wi: string;
  wo: string;
}

/** One block of a stack. */
export interface SwitchBlockNames {
  selfAttention: T5AttentionNames;
  /** Decoder blocks: attention over the encoder output. */
  crossAttention?: T5AttentionNames;
  /** The feed-forward sub-layer's pre-norm. */
  ffNorm: string;
  /** Dense blocks: the ReLU MLP. */
  mlp?: ReluMlpNames;
  /** Sparse blocks: the router classifier [E, D] (and its bias [E] when `router_bias`). */
  router?: string;
  routerBias?: string;
  experts?: ReluMlpNames[];
}

/** One stack (encoder or decoder). */
export interface SwitchStackNames {
  blocks: SwitchBlockNames[];
  /** The relative position bias [num_buckets, H] of block 0, shared by every block of the stack. */
  relativeBias: string;
  finalNorm: string;
}

/** Every tensor of a Switch checkpoint the engine reads. */
export interface SwitchNames {
  /** The token embeddings [V, D] of the encoder and of the decoder (see {@link switchNames}). */
  encoderEmbed: string;
  decoderEmbed: string;
  /** The LM head [V, D]: `lm_head.weight`, or `shared.weight` when tied. */
  lmHead: string;
  encoder: SwitchStackNames;
  decoder: SwitchStackNames;
}

function stackNames(spec: SwitchSpec, which: "encoder" | "decoder"): SwitchStackNames {
  const decoder = which === "decoder";
  const sparse = decoder ? spec.decoderSparseLayers : spec.encoderSparseLayers;
  const attn = (p: string, kind: "SelfAttention" | "EncDecAttention", layer: number): T5AttentionNames => ({
    norm: `${p}.layer.${layer}.layer_norm.weight`,
    q: `${p}.layer.${layer}.${kind}.q.weight`,
    k: `${p}.layer.${layer}.${kind}.k.weight`,
    v: `${p}.layer.${layer}.${kind}.v.weight`,
    o: `${p}.layer.${layer}.${kind}.o.weight`,
  });
  const blocks = sparse.map((isSparse, i): SwitchBlockNames => {
    const p = `${which}.block.${i}`;
    const ff = `${p}.layer.${decoder ? 2 : 1}`;
    const b: SwitchBlockNames = {
      selfAttention: attn(p, "SelfAttention", 0),
      ffNorm: `${ff}.layer_norm.weight`,
    };
    if (decoder) b.crossAttention = attn(p, "EncDecAttention", 1);
    if (isSparse) {
      b.router = `${ff}.mlp.router.classifier.weight`;
      if (spec.routerBias) b.routerBias = `${ff}.mlp.router.classifier.bias`;
      b.experts = Array.from({ length: spec.numExperts }, (_, e) => ({
        wi: `${ff}.mlp.experts.expert_${e}.wi.weight`,
        wo: `${ff}.mlp.experts.expert_${e}.wo.weight`,
      }));
    } else {
      b.mlp = { wi: `${ff}.mlp.wi.weight`, wo: `${ff}.mlp.wo.weight` };
    }
    return b;
  });
  return {
    blocks,
    relativeBias: `${which}.block.0.layer.0.SelfAttention.relative_attention_bias.weight`,
    finalNorm: `${which}.final_layer_norm.weight`,
  };
}

/**
 * The checkpoint names of a Switch model. transformers (5.x) ties `encoder.embed_tokens`,
 * `decoder.embed_tokens` and `lm_head` to `shared` only when `tie_word_embeddings` is true; untied, each
 * stack reads its own `embed_tokens` (a checkpoint that lacks them, as 4.x wrote them tied, falls back to
 * `shared.weight`: pass `has` to resolve that). Tied, every one is `shared.weight` (or the embedding the
 * file has).
 */
export function switchNames(spec: SwitchSpec, has?: (name: string) => boolean): SwitchNames {
  const SHARED = "shared.weight";
  const ENC = "encoder.embed_tokens.weight";
  const DEC = "decoder.embed_tokens.weight";
  let encoderEmbed: string;
  let decoderEmbed: string;
  let lmHead: string;
  if (spec.tieWordEmbeddings) {
    encoderEmbed = decoderEmbed = lmHead = has ? [SHARED, ENC, DEC].find(has) ?? SHARED : SHARED;
  } else {
    encoderEmbed = !has || has(ENC) ? ENC : SHARED;
    decoderEmbed = !has || has(DEC) ? DEC : SHARED;
    lmHead = "lm_head.weight";
  }
  return {
    encoderEmbed,
    decoderEmbed,
    lmHead,
    encoder: stackNames(spec, "encoder"),
    decoder: stackNames(spec, "decoder"),
  };
}

/** Every sparse block's experts, in router order (encoder first, then decoder). */
export function switchExperts(names: SwitchNames): ReluMlpNames[][] {
  return [...names.encoder.blocks, ...names.decoder.blocks].filter((b) => b.experts).map((b) => b.experts!);
}

/**
 * Every tensor the engine reads and its shape, from `spec` alone: the list a synthetic checkpoint must
 * hold (all bf16). Untied checkpoints also carry `shared.weight`, which the engine does not read.
 */
export function switchTensorShapes(spec: SwitchSpec, names = switchNames(spec)): Map<string, number[]> {
  const { dModel: D, dKv: hd, numHeads: H, dFf: I, vocabSize: V, numExperts: E } = spec;
  const s = new Map<string, number[]>();
  s.set(names.encoderEmbed, [V, D]);
  s.set(names.decoderEmbed, [V, D]);
  s.set(names.lmHead, [V, D]);
  const attn = (a: T5AttentionNames) => {
    s.set(a.norm, [D]);
    s.set(a.q, [H * hd, D]);
    s.set(a.k, [H * hd, D]);
    s.set(a.v, [H * hd, D]);
    s.set(a.o, [D, H * hd]);
  };
  const mlp = (m: ReluMlpNames) => {
    s.set(m.wi, [I, D]);
    s.set(m.wo, [D, I]);
  };
  for (const stack of [names.encoder, names.decoder]) {
    s.set(stack.relativeBias, [spec.relativeAttentionNumBuckets, H]);
    s.set(stack.finalNorm, [D]);
    for (const b of stack.blocks) {
      attn(b.selfAttention);
      if (b.crossAttention) attn(b.crossAttention);
      s.set(b.ffNorm, [D]);
      if (b.mlp) mlp(b.mlp);
      if (b.router) s.set(b.router, [E, D]);
      if (b.routerBias) s.set(b.routerBias, [E]);
      for (const e of b.experts ?? []) mlp(e);
    }
  }
  return s;
}

/**
 * Refuses a checkpoint whose tensors disagree with its config: a tensor missing, of another shape, not
 * bf16 (published google/switch-* checkpoints are float32: convert them to bf16 first), or at an odd
 * byte offset. Extra tensors are ignored.
 */
export function checkSwitchTensors(
  spec: SwitchSpec,
  names: SwitchNames,
  tensors: ReadonlyMap<string, TensorInfo>,
  dir: string,
): void {
  checkTensorShapes(
    spec.modelType,
    switchTensorShapes(spec, names),
    tensors,
    dir,
    (dtype) =>
      dtype === "F32"
        ? " (published Switch checkpoints are float32: convert them, e.g. model.to(torch.bfloat16).save_pretrained(dir))"
        : "",
  );
}
