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
import { BudgetPlan, parseBudget } from "../moe/budget.ts";
import { POLICIES, type PolicyName } from "../moe/policies.ts";
import { planModel } from "./model_plan.ts";
import type { EngineOptions } from "./types.ts";

/** What a budget buys under one policy. */
export interface PolicyFit {
  /** The smallest budget the policy runs with. */
  minimumBytes: number;
  /** The most it ever holds (every expert resident). */
  maximumBytes: number;
  /** Expert slots per MoE layer at the budget asked about; null when the budget is below the minimum. */
  expertSlots: number[] | null;
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
  bytes: {
    /** GPU bytes of one expert slot. */
    expert: number;
    /** GPU bytes of every expert of every MoE layer. */
    allExperts: number;
    /** GPU bytes of the dense weights (embeddings, attention, norms, routers, head). */
    dense: number;
    /** GPU bytes of the KV caches at `contextLength`. */
    kv: number;
    /** Everything but the expert slots: dense weights, run state, tables, readback buffers. */
    fixed: number;
    /** The least any policy but `full` runs with: top-k experts per MoE layer. */
    minimumBudget: number;
    /** The all-resident footprint: what `full` holds. */
    full: number;
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
  const planned = await planModel({ ...options, budget: undefined, policy: "full" });
  try {
    const { arch, ckpt, tensors, layout, plan, shape, modelDir } = planned;
    let total = 0;
    for (const t of ckpt.tensors.values()) total += t.shape.reduce((a, b) => a * b, 1);
    const perExpert = arch.expertMatrices.reduce((a, m) => a + m.rows * m.cols, 0);
    const experts = tensors.experts.length * arch.spec.numExperts * perExpert;
    const f = plan.footprint;
    const budgetBytes = budget === undefined ? null : parseBudget(budget, plan.basis);
    const policies = {} as Record<PolicyName, PolicyFit>;
    for (const p of POLICIES) {
      const under = new BudgetPlan(f, p, planned.staticSets, plan.planning);
      policies[p] = {
        minimumBytes: under.minimumBytes,
        maximumBytes: under.fullBytes,
        expertSlots: budgetBytes === null || budgetBytes < under.minimumBytes
          ? null
          : under.slots(budgetBytes),
      };
    }
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
        expert: f.slotBytes,
        allExperts: f.moeLayers * f.experts * f.slotBytes,
        dense: layout.dense.reduce((a, d) => a + d.bytes, 0),
        kv: layout.state.filter((a) => a.category === "kv").reduce((a, d) => a + d.bytes, 0),
        fixed: f.fixedBytes,
        minimumBudget: plan.floorBytes,
        full: plan.fullBytes,
      },
      budgetBytes,
      policies,
    };
  } finally {
    planned.ckpt.close();
  }
}
