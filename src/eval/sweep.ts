/**
 * The quality/memory trade-off, measured: perplexity of each residency policy at budgets that hold
 * n of E experts per MoE layer, from the minimum (top-k) to all of them.
 *
 * A budget of "n of E" is `fullBytes − (E − n) × moeLayers × expertBytes`: the all-resident footprint
 * less the expert slots it does not hold (the dense weights, KV cache and scratch stay). Policies:
 *
 * - `full`: every expert (the n = E row, and the reference);
 * - `swapmoe`: SwapMoE's virtual experts, revised after each request from the unmasked router's
 *   decayed importance, starting from the lowest expert ids;
 * - `swapmoe-profile`: the same, starting from (and, with `planner: "profile"`, planned by) the
 *   calibration profile;
 * - `static`: the n experts per layer most used by the unmasked router on the calibration text
 *   (what a deployment can know beforehand);
 * - `static-planned`: the same profile, with the n × layers slots spread over layers by the
 *   `profile` planner (as `swapmoe-profile` does with `planner: "profile"`);
 * - `static-random`: n experts per layer drawn with a seeded generator;
 * - `static-oracle`: the n experts per layer most used on the evaluation text itself (an upper bound
 *   that no deployment has);
 * - `lru`: exact routing, experts loaded on demand, least recently used evicted.
 *
 * Each policy runs at each expert precision asked for (`bf16`, `int8`, `int4`, or a high+low pair for
 * `swapmoe` and `static`): a budget of n of E is always counted in bf16 experts, so that every
 * precision is compared at the same bytes; a lower precision holds more experts in them. `static`
 * then holds the experts its profile ranks first, as many as fit at each tier. `static-planned`,
 * `static-random` and `static-oracle` run at bf16 only. Every single precision also gets its
 * all-resident row (`full`).
 *
 * @module
 */
import { createEngine, type Engine, type EngineOptions, type EngineStats } from "../../mod.ts";
import { spreadSlots, topExperts } from "../moe/planner.ts";
import { perplexity, type PerplexityResult } from "./perplexity.ts";

/** The policies a sweep compares. */
export const SWEEP_POLICIES = [
  "swapmoe",
  "swapmoe-profile",
  "static",
  "static-planned",
  "static-random",
  "static-oracle",
  "lru",
] as const;
/** A policy of a sweep. */
export type SweepPolicy = typeof SWEEP_POLICIES[number] | "full";

/** `swapmoe` settings (engine options) a sweep runs with. */
export type SwapMoeSettings = Pick<
  EngineOptions,
  "updateInterval" | "importanceDecay" | "maxUploadBytesPerStep" | "planner"
>;

/** Options of {@link sweep}. */
export interface SweepOptions {
  /** Model folder; default the bundled model. */
  model?: string;
  /** Token ids to evaluate on, windows in order. */
  ids: readonly number[];
  /** Token ids of the calibration text (not the evaluation text), for the static profile. */
  calibrationIds: readonly number[];
  /** Tokens per window; default 256. */
  window?: number;
  /** Windows of the evaluation text; default all. */
  maxWindows?: number;
  /** Windows of the calibration text, evenly spaced over it; default 64. */
  calibrationWindows?: number;
  /** Experts per layer to hold: the budgets; default 2 (top-k), E/4, E/2, 3E/4, E. */
  experts?: number[];
  /** Policies below the full budget; default all of {@link SWEEP_POLICIES} (`static-planned` only with `planner: "profile"`). */
  policies?: readonly (typeof SWEEP_POLICIES[number])[];
  /** Expert precisions (`expertPrecision` values) to run every policy at; default: the checkpoint's own (bf16, gpt-oss's mxfp4). */
  precisions?: readonly string[];
  /** Seed of `static-random`; default 1. */
  seed?: number;
  /** Engine options of `swapmoe` and `swapmoe-profile`. */
  swapmoe?: SwapMoeSettings;
  /** Prompt tokens per GPU call; default the window (a window is one call). */
  maxBatchTokens?: number;
  /** Tokens of a greedy `generate` after each evaluation, for decode speed; 0 skips it. Default 0. */
  decodeTokens?: number;
  /** Called with each row as it is measured. */
  onRow?: (row: SweepRow) => void;
  /** Called with progress messages. */
  log?: (message: string) => void;
}

/** One measured configuration. */
export interface SweepRow {
  policy: SweepPolicy;
  /** The expert precision (`expertPrecision`): `bf16`, `int4`, `bf16+int4`, … */
  precision: string;
  /** Experts held per MoE layer (slots of the budget ÷ layers). */
  experts: number;
  /** Experts per layer in the model. */
  ofExperts: number;
  /** The budget given, in bytes. */
  budgetBytes: number;
  /** Bytes held on the GPU after the run. */
  gpuBytes: number;
  perplexity: number;
  /** `perplexity` ÷ the full model's. */
  ratio: number;
  /** Windows and scored tokens. */
  windows: number;
  tokens: number;
  /** Share of the unmasked router's choices served as chosen (by a copy at any precision). */
  hitRate: number;
  /** Share served by a copy at the high precision tier. */
  highPrecisionHitRate: number;
  /** `swapmoe` swaps; `lru` loads after the initial fill. */
  swaps: number;
  /** Expert bytes uploaded, the initial fill included. */
  bytesUploaded: number;
  /** Expert bytes uploaded after the initial fill: what the policy swapped. */
  bytesSwapped: number;
  /** Slots per MoE layer. */
  expertSlots: number[];
  /** Seconds of the evaluation (forward calls and loss). */
  seconds: number;
  /** Decode tokens per second of the timing `generate`, when one ran. */
  decodeTokensPerSecond?: number;
}

/** What {@link sweep} returns. */
export interface SweepResult {
  rows: SweepRow[];
  /** Expert usage per [layer][expert] on the calibration windows (the `static` profile). */
  calibrationProfile: number[][];
  /** Expert usage on the evaluation windows (the `static-oracle` profile). */
  oracleProfile: number[][];
  fullBytes: number;
  expertBytes: number;
  moeLayers: number;
  numExperts: number;
  topK: number;
  window: number;
  windows: number;
  calibrationWindows: number;
}

/** A seeded generator of uniform numbers in [0, 1) (mulberry32). */
export function seededRandom(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** `n` distinct experts of `experts` per layer for `layers` layers, drawn by `random`, ascending. */
export function randomExperts(layers: number, experts: number, n: number, random: () => number): number[][] {
  return Array.from({ length: layers }, () => {
    const ids = Array.from({ length: experts }, (_, i) => i);
    for (let i = experts - 1; i > 0; i--) {
      const j = Math.floor(random() * (i + 1));
      [ids[i], ids[j]] = [ids[j]!, ids[i]!];
    }
    return ids.slice(0, n).sort((a, b) => a - b);
  });
}

/** The `n` most important experts per layer of `profile`. */
export function profileExperts(profile: readonly (readonly number[])[], n: number): number[][] {
  return profile.map((row) => topExperts(row, n));
}

/**
 * Experts per layer from a profile with slots spread by `spreadSlots("profile")` over `layers × n`
 * slots: layers whose routing spreads wider get more.
 */
export function plannedExperts(
  profile: readonly (readonly number[])[],
  n: number,
  topK: number,
): number[][] {
  const E = profile[0]?.length ?? 0;
  const slots = spreadSlots("profile", profile.length * n, profile.length, E, topK, profile);
  return profile.map((row, l) => topExperts(row, slots[l]!));
}

/** The budget that holds `n` of `E` experts in each of `layers` MoE layers. */
export function budgetFor(
  fullBytes: number,
  expertBytes: number,
  layers: number,
  experts: number,
  n: number,
): number {
  return fullBytes - (experts - n) * layers * expertBytes;
}

/** Windows `count` evenly spaced over `ids` (all when fewer), concatenated. */
export function spacedWindows(ids: readonly number[], window: number, count: number): number[] {
  const total = Math.floor(ids.length / window);
  const n = Math.min(total, count);
  const out: number[] = [];
  for (let i = 0; i < n; i++) {
    const w = Math.floor((i * total) / n);
    for (let j = w * window; j < (w + 1) * window; j++) out.push(ids[j]!);
  }
  return out;
}

function usageSince(after: number[][], before: number[][]): number[][] {
  return after.map((row, l) => row.map((v, e) => v - before[l]![e]!));
}

function rowOf(
  policy: SweepPolicy,
  precision: string,
  experts: number,
  E: number,
  budgetBytes: number,
  r: PerplexityResult,
  s: EngineStats,
  fullPerplexity: number,
  initialBytes: number,
): SweepRow {
  return {
    policy,
    precision,
    experts,
    ofExperts: E,
    budgetBytes,
    gpuBytes: s.gpuBytes,
    perplexity: r.perplexity,
    ratio: r.perplexity / fullPerplexity,
    windows: r.windows,
    tokens: r.tokens,
    hitRate: s.hitRate,
    highPrecisionHitRate: s.highPrecisionHitRate,
    swaps: policy === "lru" ? Math.round((s.bytesUploaded - initialBytes) / s.expertBytes) : s.swaps,
    bytesUploaded: s.bytesUploaded,
    bytesSwapped: s.bytesUploaded - initialBytes,
    expertSlots: s.expertSlots,
    seconds: r.seconds,
  };
}

async function decodeSpeed(engine: Engine, tokens: number): Promise<number | undefined> {
  if (tokens <= 0) return undefined;
  for await (const _ of engine.generate({ prompt: "The state of the Union is", maxTokens: tokens })) {
    // drain
  }
  return engine.stats().decodeTokensPerSecond;
}

/** What a sweep measures: budgets as experts per layer (ascending), the policies, and the runs in all. */
export interface SweepPlan {
  experts: number[];
  policies: readonly (typeof SWEEP_POLICIES[number])[];
  precisions: readonly string[];
  /** The full model's run, then each policy at each budget below all experts. */
  runs: number;
}

/** The plan of a sweep over a model with `numExperts` experts per layer, top-`topK`, defaults filled in. */
export function sweepPlan(
  o: Pick<SweepOptions, "experts" | "policies" | "swapmoe" | "precisions">,
  numExperts: number,
  topK: number,
  native = "bf16",
): SweepPlan {
  const E = numExperts;
  const experts = (o.experts ?? [topK, E / 4, E / 2, (3 * E) / 4, E].map(Math.round))
    .filter((n, i, a) => a.indexOf(n) === i).sort((a, b) => a - b);
  for (const n of experts) {
    if (!Number.isSafeInteger(n) || n < topK || n > E) {
      throw new RangeError(`Invalid experts per layer: ${n}, expected an integer in [${topK}, ${E}]`);
    }
  }
  const policies = o.policies ??
    SWEEP_POLICIES.filter((p) => p !== "static-planned" || o.swapmoe?.planner === "profile");
  const precisions = o.precisions ?? [native];
  const budgets = experts.filter((n) => n !== E).length;
  const runs = 1 + precisions.filter((p) => p !== native && !p.includes("+")).length +
    budgets * precisions.reduce((a, p) => a + policies.filter((x) => runsAt(x, p, native)).length, 0);
  return { experts, policies, precisions, runs };
}

/**
 * Whether `policy` runs at `precision` in a sweep: pairs for swapmoe and static, the checkpoint's own
 * precision (`native`: bf16, gpt-oss's mxfp4) for the other statics.
 */
export function runsAt(policy: typeof SWEEP_POLICIES[number], precision: string, native = "bf16"): boolean {
  if (policy === "swapmoe" || policy === "swapmoe-profile" || policy === "static") return true;
  if (policy === "lru") return !precision.includes("+");
  return precision === native;
}

/** Runs the sweep: the full model first (calibration profile, oracle profile, reference), then each budget and policy. */
export async function sweep(o: SweepOptions): Promise<SweepResult> {
  const window = o.window ?? 256;
  const log = o.log ?? (() => {});
  const base: EngineOptions = {
    model: o.model,
    contextLength: window,
    maxBatchTokens: o.maxBatchTokens ?? window,
    // one sequence at a time: every configuration's budget holds the same one KV cache
    maxBatchSequences: 1,
  };
  const pOpts = { window, maxWindows: o.maxWindows };
  const decodeTokens = o.decodeTokens ?? 0;
  if (decodeTokens > 0) base.contextLength = Math.max(window, 8 + decodeTokens);

  // The full model: calibration usage first, then the evaluation (reference and oracle usage).
  const calibrationWindows = o.calibrationWindows ?? 64;
  const calib = spacedWindows(o.calibrationIds, window, calibrationWindows);
  let result: SweepResult;
  const rows: SweepRow[] = [];
  const emit = (row: SweepRow) => {
    rows.push(row);
    o.onRow?.(row);
  };
  {
    await using full = await createEngine({ ...base, policy: "full" });
    const s0 = full.stats();
    log(`calibration: ${calib.length / window} windows with every expert`);
    if (calib.length > 0) await perplexity(full, calib, { window });
    const s1 = full.stats();
    const calibrationProfile = usageSince(s1.expertUsage, s0.expertUsage);
    log(`full: evaluating`);
    const r = await perplexity(full, o.ids, pOpts);
    const s2 = full.stats();
    const oracleProfile = usageSince(s2.expertUsage, s1.expertUsage);
    const E = full.spec.numExperts;
    const L = s2.expertSlots.length;
    result = {
      rows,
      calibrationProfile,
      oracleProfile,
      fullBytes: s2.fullBytes,
      expertBytes: s2.expertBytes,
      moeLayers: L,
      numExperts: E,
      topK: full.spec.topK,
      window,
      windows: r.windows,
      calibrationWindows: calib.length / window,
    };
    const row = rowOf("full", s2.expertPrecision, E, E, s2.fullBytes, r, s2, r.perplexity, s2.bytesUploaded);
    row.bytesUploaded = s2.bytesUploaded;
    row.decodeTokensPerSecond = await decodeSpeed(full, decodeTokens);
    emit(row);
  }
  const { numExperts: E, moeLayers: L, topK, fullBytes, expertBytes } = result;
  const fullPpl = rows[0]!.perplexity;
  const native = rows[0]!.precision ?? "bf16";
  const { experts, policies, precisions } = sweepPlan(o, E, topK, native);
  // every expert at each lower single precision: its own all-resident row
  for (const precision of precisions) {
    if (precision === native || precision.includes("+")) continue;
    log(`full at ${precision}`);
    await using engine = await createEngine({ ...base, policy: "full", expertPrecision: precision });
    const r = await perplexity(engine, o.ids, pOpts);
    const s = engine.stats();
    const row = rowOf("full", precision, E, E, s.gpuBytes, r, s, fullPpl, s.bytesUploaded);
    row.decodeTokensPerSecond = await decodeSpeed(engine, decodeTokens);
    emit(row);
  }
  for (const n of experts) {
    if (n === E) continue; // the full row
    const budget = budgetFor(fullBytes, expertBytes, L, E, n);
    for (const precision of precisions) {
      for (const policy of policies) {
        if (!runsAt(policy, precision, native)) continue;
        const options: EngineOptions = { ...base, budget, expertPrecision: precision };
        switch (policy) {
          case "swapmoe":
            // no knowledge beforehand: uniform slots, the lowest ids first
            Object.assign(options, { policy: "swapmoe" }, o.swapmoe ?? {}, { planner: "uniform" });
            break;
          case "swapmoe-profile":
            Object.assign(
              options,
              { policy: "swapmoe", profile: result.calibrationProfile },
              o.swapmoe ?? {},
            );
            break;
          case "static":
            // the calibration profile's top experts, as many per layer as the budget holds at each tier
            Object.assign(options, { policy: "static", profile: result.calibrationProfile });
            break;
          case "static-planned":
            options.policy = "static";
            options.residentExperts = plannedExperts(result.calibrationProfile, n, topK);
            break;
          case "static-random":
            options.policy = "static";
            options.residentExperts = randomExperts(L, E, n, seededRandom((o.seed ?? 1) * 1000 + n));
            break;
          case "static-oracle":
            options.policy = "static";
            options.residentExperts = profileExperts(result.oracleProfile, n);
            break;
          case "lru":
            options.policy = "lru";
            break;
        }
        log(`${policy} at ${precision} with the bytes of ${n} of ${E} ${native} experts per layer`);
        await using engine = await createEngine(options);
        const initial = engine.stats().bytesUploaded;
        const r = await perplexity(engine, o.ids, pOpts);
        const s = engine.stats();
        const row = rowOf(policy, precision, n, E, budget, r, s, fullPpl, initial);
        row.decodeTokensPerSecond = await decodeSpeed(engine, decodeTokens);
        emit(row);
      }
    }
  }
  return result;
}
