/**
 * Switch Transformers (`switch_transformers`) as a {@link Family}: an encoder-decoder in the T5
 * layout whose sparse blocks route each token to one ReLU expert. Its MoE layers are the encoder's
 * routers, then the decoder's.
 *
 * @module
 */
import { OptionError } from "../../errors.ts";
import { type Architecture, type ExpertMatrix, type Family, wholeTensor } from "../family.ts";
import { parseSwitchConfig, SWITCH_MODEL_TYPE, switchSparseLayers, type SwitchSpec } from "./config.ts";
import { checkSwitchTensors, switchExperts, type SwitchNames, switchNames } from "./names.ts";
import { switchDense, switchPassRows, SwitchProgram, switchRunState } from "./program.ts";

/** One ReLU expert (T5's DenseReluDense), in slot order: wi [I, D], wo [D, I]. */
function expertMatrices(spec: SwitchSpec): ExpertMatrix[] {
  return [
    { name: "wi", rows: spec.dFf, cols: spec.dModel },
    { name: "wo", rows: spec.dModel, cols: spec.dFf },
  ];
}

/** The architecture of a parsed Switch spec. */
export function switchArchitecture(spec: SwitchSpec): Architecture<SwitchSpec> {
  const moeLayers = switchSparseLayers(spec).filter((s) => s).length;
  const blocks = spec.numEncoderLayers + spec.numDecoderLayers;
  // the embeddings' names depend on what the checkpoint holds: known once its tensors were checked
  let names: SwitchNames | undefined;
  return {
    spec,
    moeLayers,
    routerOrder: "one per MoE layer: encoder routers, then decoder routers",
    expertMatrices: expertMatrices(spec),
    nativePrecision: "bf16",
    maxContext: undefined,
    decoderStartTokenId: spec.decoderStartTokenId,
    paramSlots: 32 + 24 * blocks,
    // the cross-attention keys of the encoder's output are one sequence's
    maxSequences: 1,
    tensors(table, dir) {
      // untied checkpoints written by transformers 4.x lack the stacks' own embeddings: fall back to shared
      const n = switchNames(spec, (t) => table.has(t));
      checkSwitchTensors(spec, n, table, dir);
      names = n;
      const experts = switchExperts(n).map((l) => l.map((e) => [e.wi, e.wo]));
      return {
        dense: switchDense(n),
        expertPieces: (l, e, m) => {
          const name = experts[l]![e]![m]!;
          return wholeTensor(name, table.get(name)!.byteLength);
        },
      };
    },
    passRows: (shape) => switchPassRows(shape),
    runState: (shape) => switchRunState(spec, shape, moeLayers),
    build: (init) => {
      if (!names) throw new Error("Internal: build before the checkpoint's tensors were checked");
      return SwitchProgram.build(spec, names, init);
    },
  };
}

/** Switch Transformers. */
export const switchFamily: Family<SwitchSpec> = {
  modelTypes: [SWITCH_MODEL_TYPE],
  optionKeys: ["expertCapacity"],
  architecture: (json, file) => switchArchitecture(parseSwitchConfig(json, file)),
  checkOptions(options) {
    const c = options.expertCapacity;
    if (c !== undefined && c !== "ignore" && c !== "drop") {
      throw new OptionError(`Invalid expertCapacity: ${JSON.stringify(c)}, expected "ignore" or "drop"`);
    }
  },
  describe(spec) {
    const moe = switchSparseLayers(spec).filter((s) => s).length;
    return `${spec.modelType}: ${spec.numEncoderLayers} encoder + ${spec.numDecoderLayers} decoder blocks, ${moe} with ${spec.numExperts} experts, top-1`;
  },
};
