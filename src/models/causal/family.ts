/**
 * The causal MoE decoders — Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE — as one {@link Family}: one
 * decoder with the family differences (shared expert, q/k norms, biases, dense layers) read from
 * `config.json`.
 *
 * @module
 */
import { type Architecture, type ExpertMatrix, type Family, wholeTensor } from "../family.ts";
import { CAUSAL_MODEL_TYPES, type CausalSpec, parseCausalConfig } from "./config.ts";
import { checkTensors, modelNames } from "./names.ts";
import { causalDense, CausalProgram, causalRunState } from "./program.ts";

/** One SwiGLU expert, in slot order: gate [I, D], up [I, D], down [D, I]. */
function expertMatrices(spec: CausalSpec): ExpertMatrix[] {
  const { hiddenSize: D, moeIntermediateSize: I } = spec;
  return [
    { name: "gate", rows: I, cols: D },
    { name: "up", rows: I, cols: D },
    { name: "down", rows: D, cols: I },
  ];
}

/** The architecture of a parsed causal spec. */
export function causalArchitecture(spec: CausalSpec): Architecture<CausalSpec> {
  const moeLayers = spec.sparseLayers.filter((s) => s).length;
  const names = modelNames(spec);
  return {
    spec,
    moeLayers,
    routerOrder: "one per MoE layer",
    expertMatrices: expertMatrices(spec),
    nativePrecision: "bf16",
    maxContext: spec.maxPositionEmbeddings,
    decoderStartTokenId: undefined,
    paramSlots: 32 + 24 * spec.numLayers,
    tensors(table, dir) {
      checkTensors(spec, names, table, dir);
      const experts = names.layers.flatMap((l) =>
        l.experts ? [l.experts.map((e) => [e.gate, e.up, e.down])] : []
      );
      return {
        dense: causalDense(names),
        expertPieces: (l, e, m) => {
          const name = experts[l]![e]![m]!;
          return wholeTensor(name, table.get(name)!.byteLength);
        },
      };
    },
    passRows: (shape) => shape.maxRows,
    runState: (shape) => causalRunState(spec, shape, moeLayers),
    build: (init) => CausalProgram.build(spec, names, init),
  };
}

/** Mixtral, Qwen2-MoE, Qwen3-MoE and OLMoE. */
export const causalFamily: Family<CausalSpec> = {
  modelTypes: CAUSAL_MODEL_TYPES,
  optionKeys: [],
  architecture: (json, file) => causalArchitecture(parseCausalConfig(json, file)),
  checkOptions: () => {},
  describe(spec) {
    const moe = spec.sparseLayers.filter((s) => s).length;
    return `${spec.modelType}: ${spec.numLayers} layers, ${moe} with ${spec.numExperts} experts, top-${spec.topK}`;
  },
};
