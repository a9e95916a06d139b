/**
 * `info`: a model's architecture, parameter count and GPU footprint at each policy, and what a budget
 * buys under each policy — from `config.json` and the safetensors headers alone: no GPU, no weights.
 *
 * @module
 */
import { formatBytes, POLICIES } from "../../mod.ts";
import { inspectModel, type ModelReport } from "../runtime/inspect.ts";
import type { Command } from "./command.ts";
import { PROGRAM } from "./program.ts";
import {
  displayPath,
  engineOptions,
  MODEL_OPTIONS,
  modelUsage,
  parseFlags,
  resolveModelOption,
} from "./options.ts";

const usage = `Usage: ${PROGRAM} info [options]

Prints a model's architecture, parameter count, the bytes of one expert, of the dense weights and
of the KV cache, the largest buffer a GPU must bind whole, the minimum budget, the GPU footprint at
each policy, and how many experts per layer each policy holds within --budget (default: the GPU's memory, where nvidia-smi or sysfs
tells it). Reads config.json and the weight files' headers only: needs no GPU.

Options:
  --json                  Print one JSON object instead

${modelUsage()}`;

/** What `info --json` prints. */
export type ModelInfo = ModelReport & {
  /** Where the budget asked about came from: `--budget`, or the GPU's memory as a tool reported it. */
  budgetSource: string | null;
};

/**
 * The GPU's memory as the driver's tool reports it (WebGPU does not tell): `nvidia-smi` for NVIDIA,
 * sysfs for AMD; undefined when neither answers.
 */
async function detectGpuMemory(): Promise<{ bytes: number; source: string } | undefined> {
  try {
    const out = await new Deno.Command("nvidia-smi", {
      args: ["--query-gpu=memory.total", "--format=csv,noheader,nounits"],
      stdout: "piped",
      stderr: "null",
    }).output();
    const mib = Number(new TextDecoder().decode(out.stdout).split("\n")[0]);
    if (out.success && mib > 0) return { bytes: mib * 2 ** 20, source: "the GPU's memory (nvidia-smi)" };
  } catch { /* no NVIDIA tool */ }
  try {
    for (const card of Deno.readDirSync("/sys/class/drm")) {
      const text = Deno.readTextFileSync(`/sys/class/drm/${card.name}/device/mem_info_vram_total`);
      const bytes = Number(text.trim());
      if (bytes > 0) return { bytes, source: "the GPU's memory (sysfs mem_info_vram_total)" };
    }
  } catch { /* no AMD sysfs entry */ }
  return undefined;
}

const millions = (n: number): string => `${(n / 1e6).toFixed(2)} M`;

function render(info: ModelInfo): string {
  const b = info.bytes;
  const K = info.spec.topK;
  const E = info.spec.numExperts;
  const row = (k: string, v: string) => `${k.padEnd(16)}${v}`;
  const lines = [
    row("Model", displayPath(info.model)),
    row("Architecture", info.description),
    row(
      "Context",
      `${info.contextLength} positions (max_position_embeddings ${info.spec.maxPositionEmbeddings})`,
    ),
    row(
      "Parameters",
      `${millions(info.parameters.total)} in all, ${millions(info.parameters.experts)} in experts, ${
        millions(info.parameters.activePerToken)
      } active per token`,
    ),
    row(
      "Expert bytes",
      `${formatBytes(b.expert)} per expert, ${formatBytes(b.allExperts)} for all ${info.moeLayers * E}`,
    ),
    row("Dense bytes", formatBytes(b.dense)),
    row("KV cache", `${formatBytes(b.kv)} at ${info.contextLength} positions`),
    row(
      "Largest buffer",
      `${formatBytes(b.largestBuffer.bytes)}: ${b.largestBuffer.what} (bound whole; lavapipe binds 128 MiB)`,
    ),
    row(
      "Minimum",
      `${formatBytes(b.minimumBudget)} (top-${K} experts per MoE layer, at ${info.precisions.at(-1)})`,
    ),
    row(
      "Precisions",
      Object.entries(info.atPrecision).map(([p, v]) =>
        `${p} ${formatBytes(v!.expert)} per expert, all resident ${formatBytes(v!.full)}`
      ).join("; "),
    ),
    "",
    `GPU footprint at ${info.contextLength} positions:`,
    `  full                   ${formatBytes(b.full)}, every expert resident`,
    `  static, swapmoe, lru   ${formatBytes(b.minimumBudget)} to ${formatBytes(b.full)}, ${
      info.precisions.map((p) => `${formatBytes(info.atPrecision[p]!.expert)} per ${p} expert`).join(" or ")
    } above top-${K}`,
  ];
  if (info.budgetBytes !== null) {
    lines.push(
      "",
      `At a budget of ${formatBytes(info.budgetBytes)} (${info.budgetSource}), experts at ${
        info.precisions.join("+")
      }:`,
    );
    for (const p of POLICIES) {
      const fit = info.policies[p];
      // full and lru hold one precision: the high tier of a pair
      const tiers = p === "full" || p === "lru" ? info.precisions.slice(0, 1) : info.precisions;
      lines.push(
        `  ${p.padEnd(8)} ${
          fit.expertSlots
            ? tiers.map((t, i) => `${fit.expertSlots![i]!.join(" ")} at ${t}`).join(", ") +
              ` of ${E} experts per MoE layer`
            : `does not fit: needs at least ${formatBytes(fit.minimumBytes)}`
        }`,
      );
    }
  } else {
    lines.push("", "Give --budget to see how many experts per layer each policy holds within it.");
  }
  return lines.join("\n");
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
    const options = await resolveModelOption(engineOptions(values), !values.json);
    const gpu = options.budget === undefined ? await detectGpuMemory() : undefined;
    const report = await inspectModel(options, options.budget ?? gpu?.bytes);
    const info: ModelInfo = {
      ...report,
      budgetSource: options.budget !== undefined ? "--budget" : gpu?.source ?? null,
    };
    console.log(values.json ? JSON.stringify(info, null, 2) : render(info));
    return 0;
  },
};
