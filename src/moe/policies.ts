/**
 * Residency policies: which experts sit in the GPU slots, and when that changes.
 * - `full`: every expert resident.
 * - `static`: a fixed set, given or planned from an importance profile.
 * - `swapmoe`: the virtual experts of Kong et al. — the most important experts by decayed
 *   importance `Σ ‖x‖·G(x)_i·‖E_i‖`, revised every `updateInterval` tokens, swapped in with at most
 *   `maxUploadBytesPerStep` per step; tokens route among residents (masked gating).
 * - `lru`: exact on-demand loading after reading the routing back, least recently used evicted.
 *
 * @module
 */
import { topExperts } from "./planner.ts";

/** The policy names the API accepts. */
export type PolicyName = "full" | "static" | "swapmoe" | "lru";
/** Every policy name. */
export const POLICIES: readonly PolicyName[] = ["full", "static", "swapmoe", "lru"];

/** What a policy moves experts in and out of: the expert cache, or a stand-in in tests. */
export interface Residency {
  readonly moeLayers: number;
  /** GPU bytes of one expert slot. */
  readonly slotBytes: number;
  /** Slots per MoE layer. */
  readonly capacity: readonly number[];
  resident(l: number): number[];
  isResident(l: number, e: number): boolean;
  /** A free slot of layer `l`, or −1. */
  freeSlot(l: number): number;
  evict(l: number, e: number): void;
  /** Uploads expert `e` of layer `l` into free slot `slot` (default: a free one). */
  load(l: number, e: number, slot?: number): void;
}

/** Whether a policy routes among resident experts only (masked gating) rather than exactly. */
export function isMasked(policy: PolicyName): boolean {
  return policy === "static" || policy === "swapmoe";
}

/**
 * The experts a layer starts with, `capacity` of them: the given set (`static` with sets), the top
 * of a profile, else the most important so far (nothing seen yet: the lowest ids).
 */
export function initialResidents(
  capacity: number,
  o: { set?: readonly number[]; profile?: readonly number[]; importance: ArrayLike<number> },
): number[] {
  if (o.set) return [...o.set];
  return topExperts(o.profile ?? o.importance, capacity);
}

/** Swaps waiting to be uploaded: bring `expert` into `layer`, evicting `victim`. */
interface PendingSwap {
  layer: number;
  expert: number;
  victim: number;
}

/** SwapMoE's virtual-expert manager. */
export class SwapMoePolicy {
  #pending: PendingSwap[] = [];
  swaps = 0;

  /** The desired resident set per layer: the top experts by `score` (importance × ‖E‖), as many as fit. */
  revise(cache: Residency, score: readonly Float64Array[]): void {
    this.#pending = [];
    const cap = cache.capacity;
    for (let l = 0; l < cache.moeLayers; l++) {
      const s = score[l]!;
      const want = new Set(topExperts(s, cap[l]!));
      const resident = cache.resident(l);
      const incoming = [...want].filter((e) => !cache.isResident(l, e)).sort((a, b) => s[b]! - s[a]!);
      // the least important residents that are no longer wanted leave first
      const leaving = resident.filter((e) => !want.has(e)).sort((a, b) => s[a]! - s[b]!);
      const free = cap[l]! - resident.length;
      incoming.forEach((e, i) => {
        const victim = i < free ? -1 : leaving[i - free];
        if (victim !== undefined) this.#pending.push({ layer: l, expert: e, victim });
      });
    }
    // most important first across layers
    this.#pending.sort((a, b) => score[b.layer]![b.expert]! - score[a.layer]![a.expert]!);
  }

  /** Swaps still waiting. */
  get pending(): number {
    return this.#pending.length;
  }

  /** Performs waiting swaps worth at most `maxBytes` (at least one). Returns bytes uploaded. */
  pump(cache: Residency, maxBytes: number): number {
    let bytes = 0;
    while (this.#pending.length > 0 && (bytes === 0 || bytes + cache.slotBytes <= maxBytes)) {
      const s = this.#pending.shift()!;
      if (cache.isResident(s.layer, s.expert)) continue;
      if (s.victim >= 0) cache.evict(s.layer, s.victim);
      const slot = cache.freeSlot(s.layer);
      if (slot < 0) continue;
      cache.load(s.layer, s.expert, slot);
      bytes += cache.slotBytes;
      this.swaps++;
    }
    return bytes;
  }

  /** Forgets waiting swaps (after a resize). */
  clear(): void {
    this.#pending = [];
  }
}

/** Exact on-demand loading with least-recently-used eviction. */
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
    const cap = cache.capacity[layer]!;
    const all = [...new Set(needed)].sort((a, b) =>
      Number(cache.isResident(layer, b)) - Number(cache.isResident(layer, a)) || a - b
    );
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
      if (cache.isResident(layer, e)) continue;
      this.misses++;
      let slot = cache.freeSlot(layer);
      if (slot < 0) {
        let victim = -1;
        for (const r of cache.resident(layer)) {
          if (need.has(r)) continue;
          if (victim < 0 || last[r]! < last[victim]!) victim = r;
        }
        if (victim < 0) throw new Error(`Internal: no evictable expert in MoE layer ${layer}`);
        cache.evict(layer, victim);
        slot = cache.freeSlot(layer);
      }
      cache.load(layer, e, slot);
    }
  }
}
