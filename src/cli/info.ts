/**
 * `info`: a model's architecture, parameter count and GPU footprint at each policy, read from a
 * loaded engine (`engine.spec`, `engine.stats()`) and the checkpoint's tensor table.
 *
 * @module
 */
import { type Engine, type EngineStats, formatBytes, type GpuInfo, type ModelSpec } from "../../mod.ts";
import { expertMatrices } from "../checkpoint/config.ts";
import { Checkpoint } from "../checkpoint/shards.ts";
import type { Command } from "./command.ts";
import { PROGRAM } from "./program.ts";
import {
  contextLengthOf,
  displayPath,
  engineOptions,
  MODEL_OPTIONS,
  modelUsage,
  openEngine,
  parseFlags,
} from "./options.ts";

const usage = `Usage: ${PROGRAM} info [options]

Loads the model and prints its architecture, parameter count, the bytes of one expert and of the
dense weights, the minimum budget and the GPU footprint at each policy.

Options:
  --json                  Print one JSON object instead

${modelUsage()}`;

/** What `info --json` prints. */
export interface ModelInfo {
  /** The model folder. */
  model: string;
  spec: ModelSpec;
  /** Positions the KV cache holds in this engine. */
  contextLength: number;
  parameters: {
    /** Every parameter in the checkpoint. */
    total: number;
    /** Parameters of the routed experts. */
    experts: number;
    /** Parameters one token passes through: all but the experts, plus top-k experts per MoE layer. */
    activePerToken: number;
  };
  bytes: {
    /** GPU bytes of one expert slot. */
    expert: number;
    /** GPU bytes of every expert of every MoE layer. */
    allExperts: number;
    /** GPU bytes of the dense weights (embeddings, attention, norms, routers, head). */
    dense: number;
    /** The smallest budget that `static`, `swapmoe` and `lru` run with: top-k experts per MoE layer. */
    minimumBudget: number;
    /** The all-resident footprint: what `full` holds. */
    full: number;
    /** GPU bytes by kind in this engine. */
    byKind: Record<string, number>;
  };
  /** GPU bytes at each policy: what `full` needs, the range the others run in. */
  policies: Record<string, { minimum: number; maximum: number }>;
  /** The engine as loaded with the given options. */
  engine: Pick<EngineStats, "policy" | "budgetBytes" | "gpuBytes" | "expertSlots">;
  gpu: GpuInfo;
}

function collect(engine: Engine, contextLength: number): ModelInfo {
  const spec = engine.spec;
  const stats = engine.stats();
  const moeLayers = spec.sparseLayers.filter((s) => s).length;
  using checkpoint = Checkpoint.open(engine.modelDir);
  let total = 0;
  for (const t of checkpoint.tensors.values()) total += t.shape.reduce((a, b) => a * b, 1);
  // D × I per matrix: gate, up and down (causal), or wi and wo (Switch)
  const perExpert = expertMatrices(spec) * spec.hiddenSize * spec.moeIntermediateSize;
  const experts = moeLayers * spec.numExperts * perExpert;
  const allExperts = moeLayers * spec.numExperts * stats.expertBytes;
  return {
    model: engine.modelDir,
    spec,
    contextLength,
    parameters: { total, experts, activePerToken: total - experts + moeLayers * spec.topK * perExpert },
    bytes: {
      expert: stats.expertBytes,
      allExperts,
      dense: stats.gpuBytesByKind.dense ?? 0,
      minimumBudget: stats.minimumBudgetBytes,
      full: stats.fullBytes,
      byKind: stats.gpuBytesByKind,
    },
    policies: {
      full: { minimum: stats.fullBytes, maximum: stats.fullBytes },
      static: { minimum: stats.minimumBudgetBytes, maximum: stats.fullBytes },
      swapmoe: { minimum: stats.minimumBudgetBytes, maximum: stats.fullBytes },
      lru: { minimum: stats.minimumBudgetBytes, maximum: stats.fullBytes },
    },
    engine: {
      policy: stats.policy,
      budgetBytes: stats.budgetBytes,
      gpuBytes: stats.gpuBytes,
      expertSlots: stats.expertSlots,
    },
    gpu: stats.gpu,
  };
}

const millions = (n: number): string => `${(n / 1e6).toFixed(2)} M`;

function render(info: ModelInfo): string {
  const s = info.spec;
  const moe = s.sparseLayers.filter((x) => x).length;
  const b = info.bytes;
  const heads = s.numKvHeads === s.numHeads ? `${s.numHeads}` : `${s.numHeads} (${s.numKvHeads} KV)`;
  const extras = [
    s.sharedExpertIntermediateSize > 0 ? `shared expert ${s.sharedExpertIntermediateSize} wide` : "",
    s.qkNorm !== "none" ? `QK norm ${s.qkNorm}` : "",
    s.slidingWindow !== null ? `sliding window ${s.slidingWindow}` : "",
  ].filter((x) => x !== "");
  const row = (k: string, v: string) => `${k.padEnd(14)}${v}`;
  const E = s.numExperts;
  const slots = info.engine.expertSlots.join(" ");
  return [
    row("Model", displayPath(info.model)),
    row(
      "Architecture",
      `${s.modelType}: ${s.numLayers} layers (${moe} MoE), hidden ${s.hiddenSize}, ${heads} heads × ${s.headDim}, vocab ${s.vocabSize}`,
    ),
    row(
      "Experts",
      `${E} per MoE layer, top-${s.topK}, ${s.moeIntermediateSize} wide${
        extras.length ? `; ${extras.join(", ")}` : ""
      }`,
    ),
    row("Context", `${info.contextLength} positions (max_position_embeddings ${s.maxPositionEmbeddings})`),
    row(
      "Parameters",
      `${millions(info.parameters.total)} in all, ${millions(info.parameters.experts)} in experts, ${
        millions(info.parameters.activePerToken)
      } active per token`,
    ),
    row(
      "Expert bytes",
      `${formatBytes(b.expert)} per expert, ${formatBytes(b.allExperts)} for all ${moe * E}`,
    ),
    row("Dense bytes", formatBytes(b.dense)),
    row("Minimum", `${formatBytes(b.minimumBudget)} (top-${s.topK} experts per MoE layer)`),
    "",
    `GPU footprint at ${info.contextLength} positions:`,
    `  full                   ${formatBytes(b.full)}, every expert resident`,
    `  static, swapmoe, lru   ${formatBytes(b.minimumBudget)} to ${formatBytes(b.full)}, ${
      formatBytes(b.expert)
    } per expert slot above top-${s.topK}`,
    `  by kind (this engine)  ${
      Object.entries(b.byKind).map(([k, v]) => `${k} ${formatBytes(v)}`).join(", ")
    }`,
    `  this engine            ${formatBytes(info.engine.gpuBytes)} held of ${
      formatBytes(info.engine.budgetBytes)
    } budget, policy ${info.engine.policy}, expert slots per layer ${slots}`,
    "",
    row("GPU", info.gpu.description),
  ].join("\n");
}

/** The `info` subcommand. */
export const command: Command = {
  name: "info",
  summary: "Print a model's architecture, parameters and GPU footprint at each policy",
  usage,
  async run(args) {
    const { values } = parseFlags({
      args,
      allowPositionals: false,
      options: { ...MODEL_OPTIONS, json: { type: "boolean" } },
    });
    if (values.help) {
      console.log(usage);
      return 0;
    }
    const options = engineOptions(values);
    await using engine = await openEngine(options, !values.json);
    const contextLength = contextLengthOf(engine, options);
    const info = collect(engine, contextLength);
    console.log(values.json ? JSON.stringify(info, null, 2) : render(info));
    return 0;
  },
};
