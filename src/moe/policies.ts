/**
 * Residency policies: which experts sit in the GPU slots, and when that changes.
 * - `full`: every expert resident.
 * - `static`: a fixed set, given or planned from an importance profile.
 * - `swapmoe`: the virtual experts of Kong et al. — the most important experts by decayed
 *   importance `Σ ‖x‖·G(x)_i·‖E_i‖`, revised every `updateInterval` tokens, swapped in as far as
 *   the engine's upload pacing allows per step; tokens route among residents (masked gating). With two
 *   precision tiers, the most important are held at the high tier, the next at the low tier, and
 *   revisions promote and demote between them.
 * - `lru`: exact on-demand loading after reading the routing back, least recently used evicted.
 *
 * @module
 */
import { topExperts } from "./planner.ts";

/** The policy names the API accepts. */
export type PolicyName = "full" | "static" | "swapmoe" | "lru";
/** Every policy name. */
export const POLICIES: readonly PolicyName[] = ["full", "static", "swapmoe", "lru"];

/**
 * What a policy moves experts in and out of: the expert cache, or a stand-in in tests. Tier 0 is the
 * high precision, tier 1 (when there are two) the low; an expert's best copy is the one routed to.
 */
export interface Residency {
  readonly moeLayers: number;
  /** Tiers: 1 or 2. */
  readonly tiers: number;
  /** GPU bytes of one copy at each tier. */
  readonly copyBytes: readonly number[];
  /** Slots per tier and layer: [tier][layer]. */
  readonly capacity: readonly (readonly number[])[];
  /** Experts of layer `l` with a copy at `tier`. */
  resident(l: number, tier: number): number[];
  /** The best tier expert `e` of layer `l` has a copy at, or −1. */
  tierOf(l: number, e: number): number;
  /** A free slot of layer `l` at `tier`, or −1. */
  freeSlot(l: number, tier: number): number;
  evict(l: number, e: number, tier: number): void;
  /** Uploads expert `e` of layer `l` at `tier` into free slot `slot` (default: a free one). */
  load(l: number, e: number, tier: number, slot?: number): void;
}

/** Whether a policy routes among resident experts only (masked gating) rather than exactly. */
export function isMasked(policy: PolicyName): boolean {
  return policy === "static" || policy === "swapmoe";
}

/**
 * The experts a layer starts with at each tier, `capacity[t]` of them: the given set (`static` with
 * sets, one tier), else experts ranked by a profile, or by importance so far (nothing seen yet: the
 * lowest ids), the first `capacity[0]` at the high tier and the next at the low tier.
 */
export function initialResidents(
  capacity: readonly number[],
  o: { set?: readonly number[]; profile?: readonly number[]; importance: ArrayLike<number> },
): number[][] {
  if (o.set) return [[...o.set]];
  const ranked = topExperts(o.profile ?? o.importance, capacity.reduce((a, b) => a + b, 0), true);
  let at = 0;
  return capacity.map((n) => ranked.slice(at, at += n).sort((a, b) => a - b));
}

/** The experts wanted at each tier of a layer: the top `capacity[0]` by score high, the next low. */
function wanted(capacity: readonly number[], score: ArrayLike<number>): Set<number>[] {
  const ranked = topExperts(score, capacity.reduce((a, b) => a + b, 0), true);
  let at = 0;
  return capacity.map((n) => new Set(ranked.slice(at, at += n)));
}

/** A copy waiting to be uploaded: expert `expert` of `layer` at `tier`. */
interface Placement {
  layer: number;
  expert: number;
  tier: number;
  score: number;
}

/** SwapMoE's virtual-expert manager, over one or two precision tiers. */
export class SwapMoePolicy {
  #pending: Placement[] = [];
  #wanted: Set<number>[][] = [];
  #score: readonly Float64Array[] = [];
  /** Copies uploaded since the start (swaps, promotions and demotions). */
  swaps = 0;

  /**
   * The desired copies per layer: the top experts by `score` (importance × ‖E‖) at the high tier, as
   * many as fit, the next at the low tier; what is not yet there waits to be uploaded, the most
   * important first across layers.
   */
  revise(cache: Residency, score: readonly Float64Array[]): void {
    this.#pending = [];
    this.#score = score;
    this.#wanted = [];
    for (let l = 0; l < cache.moeLayers; l++) {
      const s = score[l]!;
      const want = wanted(cache.capacity.map((c) => c[l]!), s);
      this.#wanted.push(want);
      want.forEach((set, tier) => {
        const there = new Set(cache.resident(l, tier));
        for (const e of set) {
          if (!there.has(e)) this.#pending.push({ layer: l, expert: e, tier, score: s[e]! });
        }
      });
    }
    this.#pending.sort((a, b) => b.score - a.score || a.tier - b.tier);
  }

  /** Copies still waiting. */
  get pending(): number {
    return this.#pending.length;
  }

  /** Bytes the next waiting copy uploads (its demoted expert's low copy included), or 0. */
  nextCost(cache: Residency): number {
    while (this.#pending.length > 0) {
      const p = this.#pending[0]!;
      if (!cache.resident(p.layer, p.tier).includes(p.expert)) return this.#cost(cache, p);
      this.#pending.shift();
    }
    return 0;
  }

  /**
   * Uploads waiting copies worth at most `maxBytes` (at least one placement unless `atLeastOne` is
   * false). A placement that takes a slot from an expert still wanted at the low tier uploads that
   * expert's low copy at once (into the slot the promoted expert's low copy frees), so that no wanted
   * expert is ever without a copy.
   * Returns bytes uploaded.
   */
  pump(cache: Residency, maxBytes: number, atLeastOne = true): number {
    let bytes = 0;
    while (this.#pending.length > 0) {
      const p = this.#pending[0]!;
      if (cache.resident(p.layer, p.tier).includes(p.expert)) {
        this.#pending.shift();
        continue;
      }
      const cost = this.#cost(cache, p);
      if ((bytes > 0 || !atLeastOne) && bytes + cost > maxBytes) break;
      this.#pending.shift();
      bytes += this.#place(cache, p);
    }
    return bytes;
  }

  /** The resident copy at `tier` that leaves first: the least important not wanted there, or −1. */
  #victim(cache: Residency, l: number, tier: number): number {
    const s = this.#score[l]!;
    let victim = -1;
    for (const e of cache.resident(l, tier)) {
      if (this.#wanted[l]![tier]!.has(e)) continue;
      if (victim < 0 || s[e]! < s[victim]!) victim = e; // ties: the lowest id leaves first
    }
    return victim;
  }

  /** Bytes a placement uploads, the demoted expert's low copy included. */
  #cost(cache: Residency, p: Placement): number {
    let bytes = cache.copyBytes[p.tier]!;
    if (cache.freeSlot(p.layer, p.tier) < 0) {
      const v = this.#victim(cache, p.layer, p.tier);
      if (v >= 0 && this.#needsLow(cache, p.layer, v, p.tier)) bytes += cache.copyBytes[p.tier + 1]!;
    }
    return bytes;
  }

  /** Whether expert `v`, leaving `tier`, is wanted at the next tier down and has no copy there. */
  #needsLow(cache: Residency, l: number, v: number, tier: number): boolean {
    const low = tier + 1;
    return low < cache.tiers && this.#wanted[l]![low]!.has(v) && !cache.resident(l, low).includes(v);
  }

  /** Uploads one placement (and a demotion it causes); returns the bytes. */
  #place(cache: Residency, p: Placement): number {
    const { layer: l, expert: e, tier } = p;
    let slot = cache.freeSlot(l, tier);
    let demoted = -1;
    if (slot < 0) {
      const v = this.#victim(cache, l, tier);
      if (v < 0) return 0; // every copy there is wanted: a later revision sorts it out
      demoted = this.#needsLow(cache, l, v, tier) ? v : -1;
      cache.evict(l, v, tier);
      slot = cache.freeSlot(l, tier);
    }
    cache.load(l, e, tier, slot);
    this.swaps++;
    let bytes = cache.copyBytes[tier]!;
    // a promoted expert's low copy is no longer routed to: its slot goes to whoever needs one
    for (let t = tier + 1; t < cache.tiers; t++) {
      if (cache.resident(l, t).includes(e) && !this.#wanted[l]![t]!.has(e)) cache.evict(l, e, t);
    }
    if (demoted >= 0) {
      const low = tier + 1;
      let s = cache.freeSlot(l, low);
      if (s < 0) {
        const v = this.#victim(cache, l, low);
        if (v >= 0) {
          cache.evict(l, v, low);
          s = cache.freeSlot(l, low);
        }
      }
      if (s >= 0) {
        cache.load(l, demoted, low, s);
        this.swaps++;
        bytes += cache.copyBytes[low]!;
      }
    }
    return bytes;
  }

  /** Forgets waiting copies (after a resize). */
  clear(): void {
    this.#pending = [];
  }
}

/** Exact on-demand loading with least-recently-used eviction, at one precision (tier 0). */
export class LruPolicy {
  #tick = 0;
  #lastUse: Float64Array[];
  misses = 0;

  /** Tracks `layers` × `experts`. */
  constructor(layers: number, experts: number) {
    this.#lastUse = Array.from({ length: layers }, () => new Float64Array(experts));
  }

  /**
   * Splits the experts a call needs in `layer` into groups that fit its slots, residents first
   * (so the first group needs the fewest loads). One group when they all fit.
   */
  groups(cache: Residency, layer: number, needed: Iterable<number>): number[][] {
    const cap = cache.capacity[0]![layer]!;
    const resident = (e: number) => Number(cache.tierOf(layer, e) >= 0);
    const all = [...new Set(needed)].sort((a, b) => resident(b) - resident(a) || a - b);
    const out: number[][] = [];
    for (let i = 0; i < all.length; i += cap) out.push(all.slice(i, i + cap));
    return out.length > 0 ? out : [[]];
  }

  /** Makes every expert in `needed` (at most the layer's slots) resident in `layer`, evicting the least recently used others. */
  ensure(cache: Residency, layer: number, needed: Iterable<number>): void {
    const now = ++this.#tick;
    const need = new Set(needed);
    const last = this.#lastUse[layer]!;
    for (const e of need) last[e] = now;
    for (const e of need) {
      if (cache.tierOf(layer, e) >= 0) continue;
      this.misses++;
      let slot = cache.freeSlot(layer, 0);
      if (slot < 0) {
        let victim = -1;
        for (const r of cache.resident(layer, 0)) {
          if (need.has(r)) continue;
          if (victim < 0 || last[r]! < last[victim]!) victim = r;
        }
        if (victim < 0) throw new Error(`Internal: no evictable expert in MoE layer ${layer}`);
        cache.evict(layer, victim, 0);
        slot = cache.freeSlot(layer, 0);
      }
      cache.load(layer, e, 0, slot);
    }
  }
}
