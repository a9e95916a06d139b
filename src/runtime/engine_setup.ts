/**
 * The steps both engines' `create` take, whatever the model family: the residency options checked
 * against the model, the GPU footprint and the budget resolved before any allocation, the readback
 * buffers, and the byte-for-byte audit of the footprint once everything is allocated. The causal
 * engine (engine.ts) and the encoder-decoder (seq2seq.ts) differ only in what they feed these.
 *
 * @module
 */
import { UniformArena } from "../gpu/dispatch.ts";
import type { GpuMemory, TrackedBuffer } from "../gpu/memory.ts";
import { type Budget, formatBytes, parseBudget } from "../moe/budget.ts";
import type { PolicyName } from "../moe/policies.ts";
import { BudgetError, OptionError, SwapMoeError } from "../errors.ts";
import type { PlanOptions } from "./engine_core.ts";
import { validateExpertSets } from "./requests.ts";
import type { EngineOptions } from "./types.ts";

/** How `validateExpertSets` describes the lists it expects of a causal model. */
const ONE_PER_LAYER = "one per MoE layer";

/**
 * Checks `residentExperts` (each layer's set, at least `topK` experts) and `profile` (`layers` rows of
 * `experts` non-negative numbers) against the model; returns the resident sets, deduplicated and sorted.
 */
export function checkExpertOptions(
  options: Pick<EngineOptions, "residentExperts" | "profile">,
  layers: number,
  experts: number,
  topK: number,
  routers = ONE_PER_LAYER,
): number[][] | undefined {
  const sets = options.residentExperts
    ? validateExpertSets("residentExperts", options.residentExperts, layers, experts, topK, routers)
    : undefined;
  const profile = options.profile;
  if (profile) {
    validateExpertSets("profile", profile.map((r) => r.map((_, i) => i)), layers, experts, 0, routers);
    if (!profile.every((r) => r.length === experts && r.every((v) => Number.isFinite(v) && v >= 0))) {
      throw new OptionError(`Invalid profile: expected ${layers} rows of ${experts} non-negative numbers`);
    }
  }
  return sets;
}

/** The planner settings, with their defaults: uniform planner, revisions every 16 tokens, two experts per step. */
export function planOptions(options: EngineOptions, slotBytes: number): PlanOptions {
  return {
    planner: options.planner ?? "uniform",
    updateInterval: options.updateInterval ?? 16,
    maxUploadBytesPerStep: options.maxUploadBytesPerStep ?? 2 * slotBytes,
    profile: options.profile,
  };
}

/** Sizes of the readback (MAP_READ) buffers; the routing statistics ride behind each payload. */
export interface StagingSizes {
  /** `maxRows × V` f32 logits of a forward call. */
  logits: number;
  /** One of the two decode readbacks: `maxGenerated` u32 token ids. */
  tokens: number;
  /** The per-row expert choices a forward call reads back (exact `lru` prefill). */
  topk: number;
  /** Routing statistics: `moeLayers × E` × 16 bytes. */
  stats: number;
}

/** Bytes the readback buffers take: what {@link allocStaging} allocates. */
export function stagingBytes(s: StagingSizes): number {
  return s.logits + s.stats + 2 * (s.tokens + s.stats) + s.topk;
}

/** The readback buffers, counted against the budget as "staging". */
export function allocStaging(
  memory: GpuMemory,
  s: StagingSizes,
): { logits: TrackedBuffer; tokens: TrackedBuffer[]; topk: TrackedBuffer } {
  const read = GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST;
  return {
    logits: memory.alloc("staging.logits", s.logits + s.stats, read, "staging"),
    tokens: [0, 1].map((i) => memory.alloc(`staging.tokens${i}`, s.tokens + s.stats, read, "staging")),
    topk: memory.alloc("staging.topk", s.topk, read, "staging"),
  };
}

/** Bytes of the tables every engine holds beside its model: the step uniform, the uniform arena, the slot table. */
export function tableBytes(uniformSlots: number, moeLayers: number, experts: number): number {
  return UniformArena.bytes(uniformSlots) + 32 + Math.max(4, moeLayers * experts * 4);
}

/** What the footprint and the budget come to; all in bytes. */
export interface Footprint {
  /** Everything but the expert slots. */
  fixedBytes: number;
  slotBytes: number;
  /** Every expert resident: what `full` holds. */
  fullBytes: number;
  /** `topK` experts per MoE layer: the least `static`, `swapmoe` and `lru` run with. */
  minimumBytes: number;
  /** The budget the engine holds itself to. */
  budget: number;
}

/**
 * Resolves the budget against the footprint: the option as given (bytes, a size or a share of `full`),
 * else all of it under `full`, the static sets' need when sets are given, or half (at least the minimum).
 * @throws {BudgetError} when it is below what the policy needs, naming both figures
 */
export function resolveBudget(o: {
  policy: PolicyName;
  budget: Budget | undefined;
  fixedBytes: number;
  slotBytes: number;
  moeLayers: number;
  experts: number;
  topK: number;
  staticSets: number[][] | undefined;
  contextLength: number;
}): Footprint {
  const { policy, fixedBytes, slotBytes, staticSets } = o;
  const fullBytes = fixedBytes + o.moeLayers * o.experts * slotBytes;
  const minimumBytes = fixedBytes + o.moeLayers * o.topK * slotBytes;
  const staticNeed = staticSets ? fixedBytes + staticSets.reduce((a, s) => a + s.length, 0) * slotBytes : 0;
  let budget: number;
  if (o.budget !== undefined) budget = parseBudget(o.budget, fullBytes);
  else if (policy === "full") budget = fullBytes;
  else if (staticSets) budget = staticNeed;
  else budget = Math.max(minimumBytes, Math.floor(fullBytes / 2));
  const need = policy === "full" ? fullBytes : staticSets ? staticNeed : minimumBytes;
  if (budget < need) {
    throw new BudgetError(
      `Budget too small: ${budget} bytes (${
        formatBytes(budget)
      }) given, policy "${policy}" needs at least ${need} bytes (${
        formatBytes(need)
      }): dense weights, KV caches for ${o.contextLength} positions and scratch take ${
        formatBytes(fixedBytes)
      }, one expert ${formatBytes(slotBytes)}`,
    );
  }
  return { fixedBytes, slotBytes, fullBytes, minimumBytes, budget };
}

/**
 * The footprint formula and the allocator must agree byte for byte: the budget is a promise.
 * @throws {SwapMoeError} when they do not (a bug in the formula, not a user error)
 */
export function auditFootprint(
  memory: GpuMemory,
  fixedBytes: number,
  slots: readonly number[],
  slotBytes: number,
): void {
  const planned = fixedBytes + slots.reduce((a, b) => a + b, 0) * slotBytes;
  if (memory.bytes !== planned) {
    throw new SwapMoeError(
      `Internal: GPU bytes ${memory.bytes} disagree with the planned footprint ${planned}`,
    );
  }
}
