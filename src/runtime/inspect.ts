/**
 * What a model needs, without a GPU: its parameters, the bytes of one expert and of the dense
 * weights, the footprint at each policy, and how many experts per MoE layer a budget buys under
 * each policy. Reads `config.json` and the safetensors headers only, through the same plan the
 * engine loads from (`model_plan.ts`), so the figures are the engine's.
 *
 * @module
 */
import type { ModelSpec } from "../models/registry.ts";
import { describeSpec } from "../models/registry.ts";
import { expertCopyBytes } from "../models/family.ts";
import { BudgetPlan, parseBudget } from "../moe/budget.ts";
import { matrixLayout, type Precision, precisionChoices } from "../quant/formats.ts";
import { POLICIES, type PolicyName } from "../moe/policies.ts";
import { planModel } from "./model_plan.ts";
import type { EngineOptions } from "./types.ts";

/** What a budget buys under one policy. */
export interface PolicyFit {
  /** The smallest budget the policy runs with. */
  minimumBytes: number;
  /** The most it ever holds (every expert resident). */
  maximumBytes: number;
  /** Expert slots per precision tier and MoE layer at the budget asked about; null below the minimum. */
  expertSlots: number[][] | null;
}

/** The report of {@link inspectModel}. */
export interface ModelReport {
  /** The model folder. */
  model: string;
  /** One line: `mixtral: 4 layers, 4 with 16 experts, top-2`. */
  description: string;
  spec: ModelSpec;
  /** Positions the KV caches hold in this plan. */
  contextLength: number;
  /** MoE layers (routers). */
  moeLayers: number;
  parameters: {
    /** Every parameter in the checkpoint. */
    total: number;
    /** Parameters of the routed experts. */
    experts: number;
    /** Parameters one token passes through: all but the routed experts, plus top-k experts per MoE layer. */
    activePerToken: number;
  };
  /** The precision tiers the plan holds experts at (`expertPrecision`), high first. */
  precisions: Precision[];
  /** Per precision this model's experts can be held at: one expert's bytes, and every expert's (with the rest). */
  atPrecision: Partial<Record<Precision, { expert: number; full: number }>>;
  bytes: {
    /** GPU bytes of one expert at the checkpoint's precision. */
    expert: number;
    /** GPU bytes of every expert of every MoE layer. */
    allExperts: number;
    /** GPU bytes of the dense weights (embeddings, attention, norms, routers, head). */
    dense: number;
    /** GPU bytes of the KV caches at `contextLength`: one sequence's, unless `maxBatchSequences` says how many. */
    kv: number;
    /** Everything but the expert slots: dense weights, run state, tables, readback buffers. */
    fixed: number;
    /** The least any policy but `full` runs with: top-k experts per MoE layer. */
    minimumBudget: number;
    /** The all-resident footprint: what `full` holds. */
    full: number;
    /**
     * The largest single buffer under `full` at the checkpoint's precision, which a GPU must bind whole
     * (its `maxStorageBufferBindingSize`): a layer's copies of one expert matrix, or a dense weight.
     */
    largestBuffer: { bytes: number; what: string };
  };
  /** The budget asked about, in bytes, if any. */
  budgetBytes: number | null;
  /** Per policy: its range, and what the budget buys. */
  policies: Record<PolicyName, PolicyFit>;
}

/**
 * Plans `options.model` (default: the bundled model) as the engine would, without a GPU, and
 * reports what it needs; `budget` (default `options.budget`) is resolved against the footprint.
 */
export async function inspectModel(options: EngineOptions, budget = options.budget): Promise<ModelReport> {
  // plan as swapmoe: it takes every expertPrecision (full and lru take one precision)
  // one sequence's KV caches unless told otherwise (an engine's default depends on the policy and budget)
  const planned = await planModel({
    ...options,
    budget: undefined,
    policy: "swapmoe",
    maxBatchSequences: options.maxBatchSequences ?? 1,
  });
  try {
    const { arch, ckpt, tensors, layout, plan, shape, modelDir } = planned;
    // the experts' parameters from their matrices (a stored element is not one parameter in MXFP4:
    // a byte of blocks holds two, scales hold none), every other tensor's by its elements
    const perExpert = arch.expertMatrices.reduce((a, m) => a + m.rows * (m.cols + (m.bias ? 1 : 0)), 0);
    const experts = arch.moeLayers * arch.spec.numExperts * perExpert;
    const expertTensors = new Set<string>();
    for (let l = 0; l < arch.moeLayers; l++) {
      for (let e = 0; e < arch.spec.numExperts; e++) {
        arch.expertMatrices.forEach((_, m) =>
          tensors.expertPieces(l, e, m).forEach((p) => expertTensors.add(p.tensor))
        );
      }
    }
    let total = experts;
    for (const t of ckpt.tensors.values()) {
      if (!expertTensors.has(t.name)) total += t.shape.reduce((a, b) => a * b, 1);
    }
    const f = plan.footprint;
    const budgetBytes = budget === undefined ? null : parseBudget(budget, plan.basis);
    const policies = {} as Record<PolicyName, PolicyFit>;
    for (const p of POLICIES) {
      // full and lru hold one precision: the high tier of a pair
      const tiers = p === "full" || p === "lru" ? { ...f, copyBytes: f.copyBytes.slice(0, 1) } : f;
      const under = new BudgetPlan(tiers, p, planned.staticSets, plan.planning);
      policies[p] = {
        minimumBytes: under.minimumBytes,
        maximumBytes: under.fullBytes,
        expertSlots: budgetBytes === null || budgetBytes < under.minimumBytes
          ? null
          : under.slots(budgetBytes),
      };
    }
    // each MoE layer keeps one buffer per expert matrix (src/moe/expert_cache.ts)
    const E = arch.spec.numExperts;
    const slotBuffers = arch.expertMatrices.map((m) => ({
      bytes: E * matrixLayout(arch.nativePrecision, m.rows, m.cols, m.bias).bytes,
      what: `a layer's ${E} ${m.name} matrices, every expert resident`,
    }));
    const largestBuffer = [...slotBuffers, ...layout.dense.map((d) => ({ bytes: d.bytes, what: d.name }))]
      .reduce((a, b) => (b.bytes > a.bytes ? b : a));
    return {
      model: modelDir,
      description: describeSpec(arch.spec),
      spec: arch.spec,
      contextLength: shape.contextLength,
      moeLayers: arch.moeLayers,
      parameters: {
        total,
        experts,
        activePerToken: total - experts + arch.moeLayers * arch.spec.topK * perExpert,
      },
      bytes: {
        expert: f.nativeCopyBytes,
        allExperts: f.moeLayers * f.experts * f.nativeCopyBytes,
        dense: layout.dense.reduce((a, d) => a + d.bytes, 0),
        kv: layout.state.filter((a) => a.category === "kv").reduce((a, d) => a + d.bytes, 0),
        fixed: f.fixedBytes,
        minimumBudget: plan.floorBytes,
        full: plan.fullBytes,
        largestBuffer,
      },
      budgetBytes,
      policies,
      precisions: planned.precisions,
      atPrecision: Object.fromEntries(
        precisionChoices(arch.nativePrecision).filter((c) => !c.includes("+")).map((c) => {
          const expert = expertCopyBytes(arch.expertMatrices, c as Precision);
          return [c, { expert, full: f.fixedBytes + f.moeLayers * f.experts * expert }];
        }),
      ),
    };
  } finally {
    planned.ckpt.close();
  }
}
