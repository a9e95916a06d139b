/**
 * Everything decided before a GPU is touched: the options validated, the model's `config.json` read
 * by its family, its checkpoint mapped and its tensors checked (headers only: no weight byte is
 * read), the run shape, the memory layout and the budget plan. The engine loads from a
 * {@link ModelPlan}; `info` reports one without a GPU.
 *
 * @module
 */
import { fileURLToPath } from "node:url";
import { Checkpoint } from "../checkpoint/shards.ts";
import type { Architecture, Family, ModelTensors, RunShape } from "../models/family.ts";
import { FAMILY_OPTION_KEYS, loadModelConfig, type ModelSpec } from "../models/registry.ts";
import { BudgetPlan } from "../moe/budget.ts";
import type { PolicyName } from "../moe/policies.ts";
import { BudgetError, OptionError } from "../errors.ts";
import { matrixLayout, parsePrecision, type Precision } from "../quant/formats.ts";
import { type EngineLayout, engineLayout, footprintOf } from "./layout.ts";
import { checkExpertOptions, validateOptions } from "./requests.ts";
import type { EngineOptions } from "./types.ts";

const DEFAULT_MODEL_URL = new URL("../../models/sotu-moe-mini", import.meta.url);
/** Positions the KV caches hold when `contextLength` is not given: the model's own, at most this. */
export const MAX_DEFAULT_CONTEXT = 4096;
/**
 * Prompt rows per pass when `maxBatchTokens` is not given: the most of these whose activations (beyond
 * those of {@link MIN_DEFAULT_ROWS}) take at most {@link DEFAULT_ROWS_SHARE} of the budget. Longer passes
 * read each weight for more rows: on the H200 at the OLMoE shape a 512-token prompt prefilled at
 * 2,221–2,225 tok/s in passes of 64 rows and 3,473–3,503 in one pass (2026-12-03, docs/benchmarks.md).
 */
export const DEFAULT_ROWS: readonly number[] = [512, 256, 128];
/** The fewest prompt rows per pass by default. */
export const MIN_DEFAULT_ROWS = 64;
/** The budget's share that longer passes' activations may take by default. */
export const DEFAULT_ROWS_SHARE = 1 / 32;
/** Sequences decoded together when `maxBatchSequences` is not given: at most this many, … */
export const MAX_DEFAULT_SEQUENCES = 16;
/** … as many as have KV caches (and per-sequence state) within this share of the budget, at least one. */
export const DEFAULT_SEQUENCES_SHARE = 1 / 8;

/** The bundled model's folder; only a local checkout (or a `file:` import) has one. */
export function defaultModel(): string {
  if (DEFAULT_MODEL_URL.protocol !== "file:") {
    throw new OptionError(
      `No bundled model when imported from ${DEFAULT_MODEL_URL.origin}: pass model: "path/to/checkpoint"`,
    );
  }
  return fileURLToPath(DEFAULT_MODEL_URL);
}

/** The policy an engine runs: the option, else `swapmoe` when a budget is given, else `full`. */
export function policyOf(options: Pick<EngineOptions, "policy" | "budget">): PolicyName {
  return options.policy ?? (options.budget !== undefined ? "swapmoe" : "full");
}

/** A model planned for an engine, before any GPU work. */
export interface ModelPlan {
  readonly modelDir: string;
  readonly family: Family<ModelSpec>;
  readonly arch: Architecture<ModelSpec>;
  /** The mapped checkpoint: the caller closes it (or hands it to the engine). */
  readonly ckpt: Checkpoint;
  readonly tensors: ModelTensors;
  readonly shape: RunShape;
  readonly layout: EngineLayout;
  readonly plan: BudgetPlan;
  /** `static` with `residentExperts`: the sets, deduplicated and sorted. */
  readonly staticSets: number[][] | undefined;
  /** The precision tiers the experts are held at, high first (`expertPrecision`). */
  readonly precisions: Precision[];
}

/**
 * Validates `options`, reads the model's config and checkpoint headers, and plans the footprint.
 * `onStage` hears each step begin.
 * @throws {OptionError}, `ConfigError`, `CheckpointError` for what is wrong, before any GPU work
 */
export async function planModel(
  options: EngineOptions,
  onStage: (stage: "config" | "checkpoint") => void = () => {},
): Promise<ModelPlan> {
  validateOptions(options);
  const modelDir = options.model ?? defaultModel();
  onStage("config");
  const { family, architecture: arch } = await loadModelConfig(modelDir);
  for (const k of FAMILY_OPTION_KEYS) {
    if (k in options && !family.optionKeys.includes(k)) {
      throw new OptionError(`Invalid ${k}: ${arch.spec.modelType} takes no such option`);
    }
  }
  family.checkOptions(options as Record<string, unknown>);
  const spec = arch.spec;
  const staticSets = checkExpertOptions(
    options,
    arch.moeLayers,
    spec.numExperts,
    spec.topK,
    arch.routerOrder,
  );
  const policy = policyOf(options);
  const precisions = parsePrecision(options.expertPrecision ?? arch.nativePrecision, arch.nativePrecision);
  if (precisions.length > 1 && (policy === "full" || policy === "lru" || staticSets)) {
    throw new OptionError(
      `Invalid expertPrecision: "${options.expertPrecision}" is a pair of tiers, which only swapmoe and static (planned from a profile) use; ${
        staticSets ? "static with residentExperts" : policy
      } takes one precision, e.g. "${precisions[1]}"`,
    );
  }
  // every expert matrix must fit each format's groups (an OptionError names the width otherwise)
  for (const p of precisions) for (const m of arch.expertMatrices) matrixLayout(p, m.rows, m.cols, m.bias);
  const contextLength = options.contextLength ?? Math.min(spec.maxPositionEmbeddings, MAX_DEFAULT_CONTEXT);
  if (arch.maxContext !== undefined && contextLength > arch.maxContext) {
    throw new OptionError(
      `Invalid contextLength: ${contextLength} exceeds the model's max_position_embeddings ${arch.maxContext}`,
    );
  }
  if (
    options.maxBatchSequences !== undefined && arch.maxSequences !== undefined &&
    options.maxBatchSequences > arch.maxSequences
  ) {
    throw new OptionError(
      `Invalid maxBatchSequences: ${options.maxBatchSequences}, ${spec.modelType} decodes ${arch.maxSequences} sequence${
        arch.maxSequences === 1 ? "" : "s"
      } at a time (an encoder-decoder's cross-attention holds one prompt's encoding): use ${arch.maxSequences}`,
    );
  }
  const shapeOf = (sequences: number, rows: number): RunShape => ({
    maxRows: Math.min(rows, contextLength),
    contextLength,
    maxGenerated: contextLength,
    sequences,
  });
  onStage("checkpoint");
  const ckpt = Checkpoint.open(modelDir);
  try {
    const tensors = arch.tensors(ckpt.tensors, modelDir);
    const planWith = (sequences: number, rows: number) => {
      const shape = shapeOf(sequences, rows);
      const layout = engineLayout(arch, tensors, ckpt.tensors, shape);
      const plan = new BudgetPlan(footprintOf(arch, layout, shape, precisions), policy, staticSets, {
        planner: options.planner ?? "uniform",
        profile: options.profile,
      });
      return { shape, layout, plan };
    };
    const rows = options.maxBatchTokens ?? defaultRows((r) => planWith(1, r), options.budget);
    const planAt = (sequences: number) => planWith(sequences, rows);
    const { shape, layout, plan } = planAt(
      options.maxBatchSequences ?? defaultSequences(planAt, options.budget, arch.maxSequences),
    );
    return { modelDir, family, arch, ckpt, tensors, shape, layout, plan, staticSets, precisions };
  } catch (e) {
    ckpt.close();
    throw e;
  }
}

/**
 * Prompt rows per pass when `maxBatchTokens` is not given: the first of {@link DEFAULT_ROWS} whose
 * activations beyond those of {@link MIN_DEFAULT_ROWS} rows fit {@link DEFAULT_ROWS_SHARE} of the budget
 * (`planAt(rows)` plans one sequence at that many rows), else {@link MIN_DEFAULT_ROWS}.
 */
function defaultRows(
  planAt: (rows: number) => { plan: BudgetPlan },
  budget: EngineOptions["budget"],
): number {
  const base = planAt(MIN_DEFAULT_ROWS).plan;
  let bytes: number;
  try {
    bytes = base.resolve(budget);
  } catch (e) {
    if (e instanceof BudgetError) return MIN_DEFAULT_ROWS; // the engine's own BudgetError says why
    throw e;
  }
  for (const rows of DEFAULT_ROWS) {
    const extra = planAt(rows).plan.footprint.fixedBytes - base.footprint.fixedBytes;
    if (extra <= bytes * DEFAULT_ROWS_SHARE) return rows;
  }
  return MIN_DEFAULT_ROWS;
}

/**
 * The sequences an engine decodes together when `maxBatchSequences` is not given: as many as have their
 * KV caches (and the rest of a sequence's state) within {@link DEFAULT_SEQUENCES_SHARE} of the budget, at
 * most {@link MAX_DEFAULT_SEQUENCES} (and `max`, a family's limit), at least one; fewer when the budget
 * cannot hold that many beside what the policy needs. `planAt(n)` plans n sequences; `budget` is the
 * option (resolved against each plan: a percentage of an all-resident footprint holding n caches).
 */
function defaultSequences(
  planAt: (sequences: number) => { plan: BudgetPlan },
  budget: EngineOptions["budget"],
  max = MAX_DEFAULT_SEQUENCES,
): number {
  const one = planAt(1).plan;
  const perSequence = planAt(2).plan.footprint.fixedBytes - one.footprint.fixedBytes;
  // below what one sequence needs, the engine's own BudgetError says so
  let bytes: number;
  try {
    bytes = one.resolve(budget);
  } catch (e) {
    if (e instanceof BudgetError) return 1;
    throw e;
  }
  let n = Math.max(
    1,
    Math.min(MAX_DEFAULT_SEQUENCES, max, Math.floor((bytes * DEFAULT_SEQUENCES_SHARE) / perSequence)),
  );
  for (; n > 1; n--) {
    try {
      planAt(n).plan.resolve(budget);
      return n;
    } catch (e) {
      if (!(e instanceof BudgetError)) throw e;
    }
  }
  return 1;
}
