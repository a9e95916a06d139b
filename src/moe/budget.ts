/**
 * The budget's one home: budget strings, the footprint arithmetic (what every policy needs, the
 * minimum a model runs with), resolving a budget against the footprint, how many expert slots a
 * budget buys per MoE layer, the allocator's limit while slots change, and the audit that the
 * allocator holds exactly what was planned. The engine's `createEngine` and `setBudget` both go
 * through {@link BudgetPlan}.
 *
 * "Budget" means bytes of GPU memory everywhere in this code; a limit on tokens has its own name.
 *
 * @module
 */
import { BudgetError, OptionError, SwapMoeError } from "../errors.ts";
import type { GpuMemory } from "../gpu/memory.ts";
import { type PlannerKind, spreadSlots } from "./planner.ts";
import type { PolicyName } from "./policies.ts";

/**
 * A budget as the API accepts it: bytes, a size (`"512MiB"`, `"2GiB"`, `"1.5GB"`), a share of the
 * all-resident footprint (`"50%"`), or experts per MoE layer (`"8/16"`: the bytes that hold 8 of a
 * model's 16 experts in every MoE layer, with everything else).
 */
export type Budget = number | string;

const UNITS: Record<string, number> = {
  b: 1,
  kb: 1e3,
  mb: 1e6,
  gb: 1e9,
  tb: 1e12,
  kib: 2 ** 10,
  mib: 2 ** 20,
  gib: 2 ** 30,
  tib: 2 ** 40,
};

/** The forms a budget takes, for messages. */
export const BUDGET_FORMS =
  `a whole number of bytes (at most 2^53 - 1), a size such as "512MiB", "2GiB" or "1.5GB", a percentage such as "50%", or experts per layer such as "8/16"`;

/** What a budget's relative forms refer to. */
export interface BudgetBasis {
  /** The all-resident footprint, which `"N%"` is a share of. */
  readonly fullBytes: number;
  /** Experts per MoE layer and the bytes that `n` of them per layer take with everything else (`"n/E"`). */
  readonly experts?: { readonly perLayer: number; readonly bytesFor: (n: number) => number };
}

/**
 * Resolves a {@link Budget} to bytes. `basis` is a footprint's full size (or the whole
 * {@link BudgetBasis}, which `"n/E"` needs). A number must be a whole number of bytes.
 * @throws {OptionError} naming the accepted forms
 */
export function parseBudget(budget: Budget, basis: number | BudgetBasis): number {
  const b: BudgetBasis = typeof basis === "number" ? { fullBytes: basis } : basis;
  if (typeof budget === "number") {
    if (!Number.isSafeInteger(budget) || budget <= 0) {
      throw new OptionError(`Invalid budget: ${budget}, expected ${BUDGET_FORMS}`);
    }
    return budget;
  }
  if (typeof budget !== "string") {
    throw new OptionError(`Invalid budget: ${JSON.stringify(budget)}, expected ${BUDGET_FORMS}`);
  }
  const s = budget.trim().toLowerCase();
  const pct = /^(\d+(?:\.\d+)?)\s*%$/.exec(s);
  if (pct) {
    const p = Number(pct[1]);
    if (!(p > 0 && p <= 100)) {
      throw new OptionError(`Invalid budget: "${budget}", a percentage must be in (0, 100]`);
    }
    return Math.floor((b.fullBytes * p) / 100);
  }
  const per = /^(\d+)\s*\/\s*(\d+)$/.exec(s);
  if (per) {
    const n = Number(per[1]);
    const of = Number(per[2]);
    if (b.experts && of !== b.experts.perLayer) {
      throw new OptionError(
        `Invalid budget: "${budget}", this model has ${b.experts.perLayer} experts per layer: use "n/${b.experts.perLayer}"`,
      );
    }
    if (!(n >= 1 && n <= of)) {
      throw new OptionError(`Invalid budget: "${budget}", expected n/E with 1 <= n <= E experts per layer`);
    }
    // the syntax alone is checked before a model is known
    return b.experts ? b.experts.bytesFor(n) : 1;
  }
  const bytes = sizeBytes(s);
  if (bytes === undefined) throw new OptionError(`Invalid budget: "${budget}", expected ${BUDGET_FORMS}`);
  return bytes;
}

/** Bytes of a lower-case size such as "12mib" or "4096"; undefined when it is not one, under a byte, or a fraction of a byte. */
function sizeBytes(s: string): number | undefined {
  const m = /^(\d+(?:\.\d+)?)\s*([a-z]*)$/.exec(s);
  const unit = m ? UNITS[m[2] || "b"] : undefined;
  if (!m || unit === undefined) return undefined;
  const exact = Number(m[1]) * unit;
  const bytes = Math.floor(exact);
  if (unit === 1 && bytes !== exact) return undefined; // "1.5" bytes
  return bytes >= 1 && Number.isSafeInteger(bytes) ? bytes : undefined;
}

/**
 * Bytes in a size: a number of bytes or a size such as "512KiB", "12MiB" or "1.5GB".
 * @throws {OptionError} naming `what` when the text is not a size of at least one byte
 */
export function parseSize(text: string, what = "size"): number {
  const bytes = sizeBytes(text.trim().toLowerCase());
  if (bytes === undefined) {
    throw new OptionError(`Invalid ${what}: "${text}", expected bytes or a size such as "512KiB" or "12MiB"`);
  }
  return bytes;
}

/** Formats bytes for people: `1.50 GiB`, `12.0 MiB`, `512 B`. */
export function formatBytes(n: number): string {
  if (n >= 2 ** 30) return `${(n / 2 ** 30).toFixed(2)} GiB`;
  if (n >= 2 ** 20) return `${(n / 2 ** 20).toFixed(1)} MiB`;
  if (n >= 2 ** 10) return `${(n / 2 ** 10).toFixed(1)} KiB`;
  return `${n} B`;
}

/** The GPU footprint of a model and run shape, known before anything is allocated; all in bytes. */
export interface Footprint {
  /** Everything but the expert slots: dense weights, run state (KV caches included), tables, staging. */
  readonly fixedBytes: number;
  /** One copy of an expert at each precision tier the engine holds, high first (one or two). */
  readonly copyBytes: readonly number[];
  /** One copy of an expert at the checkpoint's precision: what `"50%"` and `"n/E"` budgets count in. */
  readonly nativeCopyBytes: number;
  /** MoE layers (routers). */
  readonly moeLayers: number;
  /** Experts per MoE layer. */
  readonly experts: number;
  /** Experts per token: the fewest slots a MoE layer can run with. */
  readonly topK: number;
  /** Positions each sequence's KV caches hold (for messages). */
  readonly contextLength: number;
  /** Sequences decoded together, each with KV caches of its own, all counted in `fixedBytes` (for messages). */
  readonly sequences: number;
}

/** How the slots a budget buys are spread over MoE layers. */
export interface SlotPlanning {
  readonly planner: PlannerKind;
  /** Importance per [MoE layer][expert], for the `profile` planner. */
  readonly profile?: readonly (readonly number[])[];
}

/**
 * A footprint under a policy: what the policy needs at least, what a budget resolves to, and the
 * slots per tier and MoE layer a budget buys. Every budget decision goes through here.
 *
 * With two tiers (a high and a low precision), a budget first buys every expert a low copy, as far
 * as it reaches; what is left promotes experts to the high tier, at (high − low) bytes each.
 */
export class BudgetPlan {
  readonly footprint: Footprint;
  readonly policy: PolicyName;
  /** `static` with given sets: the resident experts per MoE layer. */
  readonly staticSets: readonly (readonly number[])[] | undefined;
  readonly planning: SlotPlanning;

  /** A plan of `footprint` under `policy`. */
  constructor(
    footprint: Footprint,
    policy: PolicyName,
    staticSets: readonly (readonly number[])[] | undefined,
    planning: SlotPlanning,
  ) {
    this.footprint = footprint;
    this.policy = policy;
    this.staticSets = staticSets;
    this.planning = planning;
  }

  /** Bytes with `n` experts per MoE layer resident at `copyBytes` each (default: the checkpoint's precision). */
  bytesFor(n: number, copyBytes: number = this.footprint.nativeCopyBytes): number {
    const f = this.footprint;
    return f.fixedBytes + f.moeLayers * n * copyBytes;
  }

  /** Every expert resident at the checkpoint's precision: the all-resident footprint `"N%"` refers to. */
  get fullBytes(): number {
    return this.bytesFor(this.footprint.experts);
  }

  /** The least any policy but `full` runs with: top-k experts per MoE layer at the lowest tier. */
  get floorBytes(): number {
    const c = this.footprint.copyBytes;
    return this.bytesFor(this.footprint.topK, c[c.length - 1]!);
  }

  /**
   * The smallest budget this policy runs with: every expert at its one tier (`full`), the given sets
   * (`static`), else top-k experts per layer at the lowest tier.
   */
  get minimumBytes(): number {
    const f = this.footprint;
    if (this.policy === "full") return this.bytesFor(f.experts, f.copyBytes[0]);
    if (this.staticSets) {
      return f.fixedBytes + this.staticSets.reduce((a, s) => a + s.length, 0) * f.copyBytes[0]!;
    }
    return this.floorBytes;
  }

  /** What the relative budget forms refer to. */
  get basis(): BudgetBasis {
    return {
      fullBytes: this.fullBytes,
      experts: { perLayer: this.footprint.experts, bytesFor: (n) => this.bytesFor(n) },
    };
  }

  /**
   * The budget in bytes: `given` resolved against the footprint, else everything the policy holds
   * under `full`, the static sets' need when sets are given, or half of the all-resident footprint (at
   * least the minimum).
   * @throws {BudgetError} when it is below what the policy needs, naming both figures and the parts
   */
  resolve(given: Budget | undefined): number {
    let bytes: number;
    if (given !== undefined) bytes = parseBudget(given, this.basis);
    else if (this.policy === "full" || this.staticSets) bytes = this.minimumBytes;
    else bytes = Math.max(this.minimumBytes, Math.floor(this.fullBytes / 2));
    const need = this.minimumBytes;
    if (bytes < need) {
      const f = this.footprint;
      throw new BudgetError(
        `Budget too small: ${bytes} bytes (${
          formatBytes(bytes)
        }) given, policy "${this.policy}" needs at least ${need} bytes (${
          formatBytes(need)
        }): dense weights, KV caches for ${f.contextLength} positions (${f.sequences} sequence${
          f.sequences === 1 ? "" : "s"
        }) and scratch take ${formatBytes(f.fixedBytes)}, one expert ${
          f.copyBytes.map(formatBytes).join(" or ")
        }`,
      );
    }
    return bytes;
  }

  /**
   * Slots per tier and MoE layer that `bytes` buy, [tier][layer]: every expert (`full`), the given
   * sets (`static`), or the planner's spread — with two tiers, low copies for every expert as far as
   * the bytes reach, then promotions to the high tier with what is left.
   */
  slots(bytes: number): number[][] {
    const f = this.footprint;
    const L = f.moeLayers;
    const E = f.experts;
    if (this.policy === "full") return [Array(L).fill(E)];
    if (this.staticSets) return [this.staticSets.map((s) => s.length)];
    const { planner, profile } = this.planning;
    const room = bytes - f.fixedBytes;
    if (f.copyBytes.length === 1) {
      return [spreadSlots(planner, Math.floor(room / f.copyBytes[0]!), L, E, f.topK, profile)];
    }
    const [hi, lo] = f.copyBytes as [number, number];
    if (room < L * E * lo) {
      return [Array(L).fill(0), spreadSlots(planner, Math.floor(room / lo), L, E, f.topK, profile)];
    }
    const promotions = Math.min(L * E, Math.floor((room - L * E * lo) / (hi - lo)));
    const high = spreadSlots(planner, promotions, L, E, 0, profile);
    return [high, high.map((n) => E - n)];
  }

  /**
   * The allocator must hold exactly what was planned, byte for byte: the budget is a promise.
   * @throws {SwapMoeError} when it does not (a bug in the footprint arithmetic, not a user error)
   */
  audit(memory: GpuMemory, slots: readonly (readonly number[])[]): void {
    const f = this.footprint;
    const planned = f.fixedBytes +
      slots.reduce((a, tier, t) => a + tier.reduce((x, n) => x + n, 0) * f.copyBytes[t]!, 0);
    if (memory.bytes !== planned) {
      throw new SwapMoeError(
        `Internal: GPU bytes ${memory.bytes} disagree with the planned footprint ${planned}`,
      );
    }
    if (memory.bytes > memory.limit) {
      throw new SwapMoeError(`Internal: GPU bytes ${memory.bytes} exceed the budget ${memory.limit}`);
    }
  }
}

/**
 * Changes the allocator's limit to `bytes` around `change` (which frees and reallocates expert
 * slots): during the change the limit is the larger of the old holding and the new budget, so usage
 * never exceeds max(old budget, new budget) as long as `change` frees before it allocates; after it,
 * the new budget.
 */
export function changeLimit<T>(memory: GpuMemory, bytes: number, change: () => T): T {
  const before = memory.limit;
  memory.limit = Math.max(bytes, memory.bytes);
  try {
    const out = change();
    memory.limit = bytes;
    return out;
  } catch (e) {
    memory.limit = before;
    throw e;
  }
}
