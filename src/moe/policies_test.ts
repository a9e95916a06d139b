import assert from "node:assert/strict";
import { SlotMap } from "./expert_cache.ts";
import { initialResidents, isMasked, LruPolicy, type Residency, SwapMoePolicy } from "./policies.ts";

/** The expert cache's bookkeeping without a GPU: loads are recorded, not uploaded. */
class FakeResidency implements Residency {
  readonly maps: SlotMap[];
  readonly copyBytes: number[];
  readonly loads: [number, number, number][] = [];
  /** `capacity[t][l]` slots at tier t; copies of `copyBytes[t]` bytes (default 100, and 30 for a low tier). */
  constructor(layers: number, experts: number, capacity: number[][], copyBytes = [100, 30]) {
    this.maps = capacity.map((c) => {
      const m = new SlotMap(layers, experts);
      m.resize(c);
      return m;
    });
    this.copyBytes = copyBytes.slice(0, capacity.length);
  }
  get moeLayers(): number {
    return this.maps[0]!.moeLayers;
  }
  get tiers(): number {
    return this.maps.length;
  }
  get capacity(): number[][] {
    return this.maps.map((m) => m.capacity);
  }
  resident(l: number, tier = 0): number[] {
    return this.maps[tier]!.resident(l);
  }
  tierOf(l: number, e: number): number {
    return this.maps.findIndex((m) => m.isResident(l, e));
  }
  freeSlot(l: number, tier = 0): number {
    return this.maps[tier]!.freeSlot(l);
  }
  evict(l: number, e: number, tier = 0): void {
    this.maps[tier]!.evict(l, e);
  }
  load(l: number, e: number, tier = 0, slot: number = this.freeSlot(l, tier)): void {
    if (this.maps[tier]!.isResident(l, e)) return;
    this.maps[tier]!.assign(l, e, slot);
    this.loads.push([l, e, tier]);
  }
}

const scores = (...rows: number[][]) => rows.map((r) => Float64Array.from(r));

Deno.test("swapmoe: a revision wants the top experts by score, swapped in most important first", () => {
  const c = new FakeResidency(2, 6, [[2, 2]]);
  for (const e of [0, 1]) c.load(0, e);
  for (const e of [0, 1]) c.load(1, e);
  const p = new SwapMoePolicy();
  // layer 0 wants 4 and 5 (5 first), layer 1 keeps 1 and wants 3 in place of 0
  p.revise(c, scores([0.1, 0.2, 0, 0, 3, 9], [0.5, 7, 0, 4, 0, 0]));
  assert.equal(p.pending, 3);
  const uploaded = p.pump(c, 100); // one slot's worth
  assert.equal(uploaded, 100);
  assert.deepEqual(c.resident(0), [1, 5], "expert 5 (score 9) came first and evicted the least important, 0");
  p.pump(c, 250); // two more fit in 250 bytes
  assert.deepEqual(c.resident(0), [4, 5]);
  assert.deepEqual(c.resident(1), [1, 3]);
  assert.equal(p.pending, 0);
  assert.equal(p.swaps, 3);
  assert.equal(p.pump(c, 100), 0, "nothing left");
});

Deno.test("swapmoe: pump uploads at least one expert even under a tiny cap, and never more than the cap allows", () => {
  const c = new FakeResidency(1, 8, [[4]]);
  const p = new SwapMoePolicy();
  p.revise(c, scores([1, 2, 3, 4, 5, 6, 7, 8]));
  assert.equal(p.pending, 4, "four free slots, four wanted");
  assert.equal(p.pump(c, 1), 100, "one expert although it exceeds the cap");
  assert.equal(p.pump(c, 299), 200, "two experts fit in 299 bytes, a third does not");
  assert.equal(p.pump(c, 10_000), 100);
  assert.deepEqual(c.resident(0), [4, 5, 6, 7]);
});

Deno.test("swapmoe: a new revision replaces waiting swaps; clear forgets them", () => {
  const c = new FakeResidency(1, 4, [[1]]);
  c.load(0, 0);
  const p = new SwapMoePolicy();
  p.revise(c, scores([0, 5, 0, 0]));
  p.revise(c, scores([0, 0, 0, 5]));
  p.pump(c, 1000);
  assert.deepEqual(c.resident(0), [3], "only the latest revision's want");
  p.revise(c, scores([9, 0, 0, 0]));
  p.clear();
  assert.equal(p.pump(c, 1000), 0);
  assert.deepEqual(c.resident(0), [3]);
});

Deno.test("swapmoe: a wanted set already resident swaps nothing", () => {
  const c = new FakeResidency(1, 4, [[2]]);
  c.load(0, 2);
  c.load(0, 3);
  const p = new SwapMoePolicy();
  p.revise(c, scores([0, 1, 5, 6]));
  assert.equal(p.pending, 0);
});

Deno.test("lru: loads what is needed, evicting the least recently used", () => {
  const c = new FakeResidency(1, 8, [[2]]);
  const p = new LruPolicy(1, 8);
  p.ensure(c, 0, [1, 2]);
  assert.deepEqual(c.resident(0), [1, 2]);
  assert.equal(p.misses, 2);
  p.ensure(c, 0, [2]); // 2 used more recently than 1
  p.ensure(c, 0, [5]);
  assert.deepEqual(c.resident(0), [2, 5], "1 was the least recently used");
  assert.equal(p.misses, 3);
  p.ensure(c, 0, [5, 2]);
  assert.equal(p.misses, 3, "hits load nothing");
});

Deno.test("lru: more experts than slots split into groups, residents first", () => {
  const c = new FakeResidency(1, 8, [[2]]);
  c.load(0, 6);
  const p = new LruPolicy(1, 8);
  assert.deepEqual(p.groups(c, 0, [3, 6, 1, 3, 7]), [[6, 1], [3, 7]]);
  assert.deepEqual(p.groups(c, 0, [6]), [[6]]);
  assert.deepEqual(p.groups(c, 0, []), [[]]);
});

Deno.test("static and first fills: given sets, a profile's top, else the most important (lowest ids at first)", () => {
  assert.deepEqual(initialResidents([3], { set: [7, 2, 9], importance: [] }), [[7, 2, 9]]);
  assert.deepEqual(initialResidents([2], { profile: [0, 5, 1, 5], importance: [9, 9, 9, 9] }), [[1, 3]]);
  assert.deepEqual(initialResidents([2], { importance: [0, 0, 0, 0] }), [[0, 1]]);
  assert.deepEqual(initialResidents([2], { importance: [0, 3, 0, 4] }), [[1, 3]]);
  // two tiers: the top at the high tier, the next at the low one
  assert.deepEqual(initialResidents([1, 2], { profile: [1, 9, 5, 7], importance: [] }), [[1], [2, 3]]);
  assert.equal(isMasked("static"), true);
  assert.equal(isMasked("swapmoe"), true);
  assert.equal(isMasked("lru"), false);
  assert.equal(isMasked("full"), false);
});

Deno.test("swapmoe with two tiers: the top experts high, the next low; promotion and demotion in one step", () => {
  // 6 experts, 2 high slots (100 bytes) and 4 low slots (30 bytes)
  const c = new FakeResidency(1, 6, [[2], [4]]);
  for (const e of [0, 1]) c.load(0, e, 0);
  for (const e of [2, 3, 4, 5]) c.load(0, e, 1);
  const p = new SwapMoePolicy();
  // expert 4 becomes the most important, expert 1 the least: 4 goes high, 1 comes down to low
  p.revise(c, scores([5, 0.1, 2, 3, 9, 1]));
  assert.equal(p.pending, 2, "4 high, 1 low");
  const bytes = p.pump(c, 1);
  assert.equal(bytes, 130, "the promotion and the demotion it forces: 100 + 30 bytes, at once");
  assert.deepEqual(c.resident(0, 0), [0, 4]);
  assert.deepEqual(c.resident(0, 1), [1, 2, 3, 5], "1 took the low slot 4 gave up");
  assert.equal(c.tierOf(0, 4), 0);
  assert.equal(c.tierOf(0, 1), 1);
  assert.equal(p.pending, 0, "1's low copy was the second placement, done already");
  assert.equal(p.swaps, 2);
  // every expert kept a copy throughout: six resident, none masked
  assert.deepEqual([0, 1, 2, 3, 4, 5].map((e) => c.tierOf(0, e) >= 0), Array(6).fill(true));
});

Deno.test("swapmoe with two tiers: a low tier that cannot hold everyone evicts the least important", () => {
  const c = new FakeResidency(1, 6, [[1], [2]]);
  c.load(0, 0, 0);
  c.load(0, 1, 1);
  c.load(0, 2, 1);
  const p = new SwapMoePolicy();
  p.revise(c, scores([1, 0.5, 0.2, 0, 8, 0])); // 4 high; 0 low with 1; 2 leaves
  p.pump(c, 10_000);
  assert.deepEqual(c.resident(0, 0), [4]);
  assert.deepEqual(c.resident(0, 1), [0, 1]);
  assert.equal(c.tierOf(0, 2), -1);
});
