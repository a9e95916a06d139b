/**
 * Checkpoint names → engine layout, for every causal family, in one place (mlx-lm's `sanitize()`):
 * the forward pass never spells a checkpoint name. Also checks each tensor against `config.json`.
 *
 * @module
 */
import type { TensorInfo } from "../../checkpoint/safetensors.ts";
import { decoderShapes } from "../decoder_config.ts";
import { checkTensorShapes } from "../family.ts";
import type { CausalSpec } from "./config.ts";

/** A SwiGLU block's three projections: gate/up [inter, D], down [D, inter]. */
export interface MlpNames {
  gate: string;
  up: string;
  down: string;
}

/** One decoder layer's tensors. */
export interface LayerNames {
  inputNorm: string;
  postNorm: string;
  q: string;
  k: string;
  v: string;
  o: string;
  qBias?: string;
  kBias?: string;
  vBias?: string;
  qNorm?: string;
  kNorm?: string;
  /** Sparse layers: the router [E, D] and each expert's projections. */
  router?: string;
  experts?: MlpNames[];
  /** Qwen2-MoE: the shared expert and its gate [1, D]. */
  shared?: MlpNames;
  sharedGate?: string;
  /** Dense layers (Qwen `mlp_only_layers` or a sparse step above 1). */
  mlp?: MlpNames;
}

/** Every tensor of a causal MoE checkpoint. */
export interface ModelNames {
  embed: string;
  norm: string;
  /** The LM head; the embedding when the model ties them. */
  lmHead: string;
  layers: LayerNames[];
}

/** The checkpoint names of `spec`'s family. */
export function modelNames(spec: CausalSpec): ModelNames {
  const mixtral = spec.modelType === "mixtral";
  const layers = spec.sparseLayers.map((sparse, i): LayerNames => {
    const p = `model.layers.${i}`;
    const a = `${p}.self_attn`;
    const l: LayerNames = {
      inputNorm: `${p}.input_layernorm.weight`,
      postNorm: `${p}.post_attention_layernorm.weight`,
      q: `${a}.q_proj.weight`,
      k: `${a}.k_proj.weight`,
      v: `${a}.v_proj.weight`,
      o: `${a}.o_proj.weight`,
    };
    if (spec.qkvBias) {
      Object.assign(l, { qBias: `${a}.q_proj.bias`, kBias: `${a}.k_proj.bias`, vBias: `${a}.v_proj.bias` });
    }
    if (spec.qkNorm !== "none") {
      Object.assign(l, { qNorm: `${a}.q_norm.weight`, kNorm: `${a}.k_norm.weight` });
    }
    const m = mixtral ? `${p}.block_sparse_moe` : `${p}.mlp`;
    if (sparse) {
      l.router = `${m}.gate.weight`;
      l.experts = Array.from(
        { length: spec.numExperts },
        (_, e) =>
          mixtral
            ? {
              gate: `${m}.experts.${e}.w1.weight`,
              up: `${m}.experts.${e}.w3.weight`,
              down: `${m}.experts.${e}.w2.weight`,
            }
            : {
              gate: `${m}.experts.${e}.gate_proj.weight`,
              up: `${m}.experts.${e}.up_proj.weight`,
              down: `${m}.experts.${e}.down_proj.weight`,
            },
      );
      if (spec.sharedExpertIntermediateSize > 0) {
        l.shared = {
          gate: `${m}.shared_expert.gate_proj.weight`,
          up: `${m}.shared_expert.up_proj.weight`,
          down: `${m}.shared_expert.down_proj.weight`,
        };
        l.sharedGate = `${m}.shared_expert_gate.weight`;
      }
    } else {
      l.mlp = { gate: `${m}.gate_proj.weight`, up: `${m}.up_proj.weight`, down: `${m}.down_proj.weight` };
    }
    return l;
  });
  return {
    embed: "model.embed_tokens.weight",
    norm: "model.norm.weight",
    lmHead: spec.tieWordEmbeddings ? "model.embed_tokens.weight" : "lm_head.weight",
    layers,
  };
}

/** The shape every tensor must have according to `config.json`. */
export function expectedShapes(spec: CausalSpec, names: ModelNames): Map<string, number[]> {
  const { hiddenSize: D, numHeads: H, numKvHeads: Hkv, headDim: hd } = spec;
  const s = decoderShapes(spec, names);
  const mlp = (m: MlpNames, inter: number) => {
    s.set(m.gate, [inter, D]);
    s.set(m.up, [inter, D]);
    s.set(m.down, [D, inter]);
  };
  for (const l of names.layers) {
    if (l.qNorm && l.kNorm) {
      s.set(l.qNorm, spec.qkNorm === "per_head" ? [hd] : [H * hd]);
      s.set(l.kNorm, spec.qkNorm === "per_head" ? [hd] : [Hkv * hd]);
    }
    if (l.router) s.set(l.router, [spec.numExperts, D]);
    for (const e of l.experts ?? []) mlp(e, spec.moeIntermediateSize);
    if (l.shared) mlp(l.shared, spec.sharedExpertIntermediateSize);
    if (l.sharedGate) s.set(l.sharedGate, [1, D]);
    if (l.mlp) mlp(l.mlp, spec.intermediateSize);
  }
  return s;
}

/**
 * Refuses a checkpoint whose tensors disagree with its config: a tensor missing, of another
 * shape, not bf16, or at an odd byte offset. Extra tensors (rotary caches and the like) are ignored.
 */
export function checkTensors(
  spec: CausalSpec,
  names: ModelNames,
  tensors: ReadonlyMap<string, TensorInfo>,
  dir: string,
): void {
  checkTensorShapes(spec.modelType, expectedShapes(spec, names), tensors, dir);
}
