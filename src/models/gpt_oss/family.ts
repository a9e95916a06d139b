/**
 * gpt-oss (OpenAI's open-weight MoE, `model_type` "gpt_oss") as a {@link Family}: attention with
 * learned sinks, sliding and full layers, YaRN, biases everywhere, and MXFP4 experts with a clamped
 * SwiGLU. The experts stay in MXFP4 on the GPU: a slot holds an expert's stored bytes (blocks, scales
 * and biases cut from the layer's fused tensors), which the expert kernels read as they are.
 *
 * @module
 */
import type { Architecture, ExpertMatrix, Family } from "../family.ts";
import { GPT_OSS_MODEL_TYPE, type GptOssSpec, parseGptOssConfig } from "./config.ts";
import { checkGptOssTensors, expertPieces, gptOssNames } from "./names.ts";
import { gptOssDense, GptOssProgram, gptOssRunState } from "./program.ts";

/**
 * One expert, in slot order: gate_up [2I, D] (rows interleaved gate, up) and down [D, I], each with a
 * bf16 bias per row. In MXFP4 that is 12.6 MiB per gpt-oss-20b expert, against 47.5 MiB in bf16.
 */
function expertMatrices(spec: GptOssSpec): ExpertMatrix[] {
  const { hiddenSize: D, intermediateSize: I } = spec;
  return [
    { name: "gate_up", rows: 2 * I, cols: D, bias: true },
    { name: "down", rows: D, cols: I, bias: true },
  ];
}

/** The architecture of a parsed gpt-oss spec. */
export function gptOssArchitecture(spec: GptOssSpec): Architecture<GptOssSpec> {
  const names = gptOssNames(spec);
  return {
    spec,
    moeLayers: spec.numLayers,
    routerOrder: "one per layer",
    expertMatrices: expertMatrices(spec),
    nativePrecision: "mxfp4",
    maxContext: spec.maxPositionEmbeddings,
    decoderStartTokenId: undefined,
    paramSlots: 32 + 24 * spec.numLayers,
    tensors(table, dir) {
      checkGptOssTensors(spec, names, table, dir);
      return {
        dense: gptOssDense(names),
        expertPieces: (l, e, m) => expertPieces(spec, names, l, e, m),
      };
    },
    passRows: (shape) => shape.maxRows,
    runState: (shape) => gptOssRunState(spec, shape),
    build: (init) => GptOssProgram.build(spec, names, init),
  };
}

/** gpt-oss-20b and gpt-oss-120b. */
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
