/**
 * gpt-oss (OpenAI's open-weight MoE, `model_type` "gpt_oss") as a {@link Family}: attention with
 * learned sinks, sliding and full layers, YaRN, biases everywhere, and MXFP4 experts with a clamped
 * SwiGLU.
 *
 * PHASE 1: not registered in src/models/registry.ts. The routed experts' storage and kernels (MXFP4
 * slots) come in phase 2; until then {@link ModelTensors.experts} is empty, `expertMatrices` describes
 * an expert as the bf16 matrices it dequantizes to, and building the program throws at the experts
 * (program.ts `routedExpertsPhase2`).
 *
 * @module
 */
import type { Architecture, ExpertMatrix, Family } from "../family.ts";
import { GPT_OSS_MODEL_TYPE, type GptOssSpec, parseGptOssConfig } from "./config.ts";
import { checkGptOssTensors, gptOssNames } from "./names.ts";
import {
  gptOssDense,
  GptOssProgram,
  gptOssRunState,
  type RoutedExperts,
  routedExpertsPhase2,
} from "./program.ts";

/**
 * One expert as the bf16 matrices it dequantizes to: gate_up [2I, D] (rows interleaved gate, up) and
 * down [D, I]. PHASE 2 replaces this with the MXFP4 storage (names.ts `expertRanges`: 12.6 MiB per
 * gpt-oss-20b expert as stored, against 47.5 MiB in bf16).
 */
function expertMatrices(spec: GptOssSpec): ExpertMatrix[] {
  const { hiddenSize: D, intermediateSize: I } = spec;
  return [
    { name: "gate_up", rows: 2 * I, cols: D },
    { name: "down", rows: D, cols: I },
  ];
}

/** The architecture of a parsed gpt-oss spec; `experts` records the routed experts (tests pass their own). */
export function gptOssArchitecture(
  spec: GptOssSpec,
  experts: RoutedExperts = routedExpertsPhase2,
): Architecture<GptOssSpec> {
  const names = gptOssNames(spec);
  return {
    spec,
    moeLayers: spec.numLayers,
    routerOrder: "one per layer",
    expertMatrices: expertMatrices(spec),
    maxContext: spec.maxPositionEmbeddings,
    decoderStartTokenId: undefined,
    paramSlots: 32 + 24 * spec.numLayers,
    tensors(table, dir) {
      checkGptOssTensors(spec, names, table, dir);
      // PHASE 2: the experts are byte ranges of fused tensors (names.ts expertRanges), not named tensors
      return { dense: gptOssDense(names), experts: [] };
    },
    passRows: (shape) => shape.maxRows,
    runState: (shape) => gptOssRunState(spec, shape),
    build: (init) => GptOssProgram.build(spec, names, init, experts),
  };
}

/** gpt-oss-20b and gpt-oss-120b (not registered until its experts exist: phase 2). */
export const gptOssFamily: Family<GptOssSpec> = {
  modelTypes: [GPT_OSS_MODEL_TYPE],
  optionKeys: [],
  architecture: (json, file) => gptOssArchitecture(parseGptOssConfig(json, file)),
  checkOptions: () => {},
  describe(spec) {
    const sliding = spec.layerTypes.filter((t) => t === "sliding_attention").length;
    return `gpt_oss: ${spec.numLayers} layers (${sliding} sliding over ${
      spec.slidingWindow ?? 0
    }), ${spec.numExperts} experts, top-${spec.topK}, MXFP4`;
  },
};
