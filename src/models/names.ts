/**
 * Checkpoint names → engine layout, for every causal family, in one place (mlx-lm's `sanitize()`):
 * the forward pass never spells a checkpoint name. Also checks each tensor against `config.json`.
 *
 * @module
 */
import type { ModelSpec } from "../checkpoint/config.ts";
import type { TensorInfo } from "../checkpoint/safetensors.ts";
import { CheckpointError } from "../errors.ts";

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
export function modelNames(spec: ModelSpec): ModelNames {
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
export function expectedShapes(spec: ModelSpec, names: ModelNames): Map<string, number[]> {
  const { hiddenSize: D, numHeads: H, numKvHeads: Hkv, headDim: hd, vocabSize: V } = spec;
  const s = new Map<string, number[]>();
  s.set(names.embed, [V, D]);
  s.set(names.norm, [D]);
  s.set(names.lmHead, [V, D]);
  const mlp = (m: MlpNames, inter: number) => {
    s.set(m.gate, [inter, D]);
    s.set(m.up, [inter, D]);
    s.set(m.down, [D, inter]);
  };
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
  spec: ModelSpec,
  names: ModelNames,
  tensors: ReadonlyMap<string, TensorInfo>,
  dir: string,
): void {
  checkTensorShapes(spec.modelType, expectedShapes(spec, names), tensors, dir);
}

/**
 * Checks every expected tensor of a `modelType` checkpoint: present, of the expected shape, bf16 and
 * 2-byte aligned. `dtypeHint(dtype)` may add a family's advice to the dtype error (e.g. how to convert).
 * @throws {CheckpointError} naming the tensor and the file
 */
export function checkTensorShapes(
  modelType: string,
  expected: ReadonlyMap<string, readonly number[]>,
  tensors: ReadonlyMap<string, TensorInfo>,
  dir: string,
  dtypeHint: (dtype: string) => string = () => "",
): void {
  for (const [name, shape] of expected) {
    const t = tensors.get(name);
    if (!t) {
      throw new CheckpointError(
        `Missing tensor for ${modelType}: "${name}" (expected shape [${shape}] from config.json)`,
        dir,
      );
    }
    if (t.shape.length !== shape.length || t.shape.some((d, i) => d !== shape[i])) {
      throw new CheckpointError(
        `Tensor shape disagrees with config.json: "${name}" is [${t.shape}], expected [${shape}]`,
        t.file,
      );
    }
    if (t.dtype !== "BF16") {
      throw new CheckpointError(
        `Unsupported dtype: "${name}" is ${t.dtype}, supported is BF16${dtypeHint(t.dtype)}`,
        t.file,
      );
    }
    // the format allows any offset; safetensors' writers pad the header so that data is 8-aligned
    if (t.byteOffset % 2 !== 0) {
      throw new CheckpointError(
        `Unaligned tensor: "${name}" starts at byte ${t.byteOffset}, not a multiple of 2 as bf16 needs; re-save the checkpoint with safetensors, which pads its header`,
        t.file,
      );
    }
  }
}
