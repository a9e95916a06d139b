import assert from "node:assert/strict";
import {
  budgetFor,
  plannedExperts,
  profileExperts,
  randomExperts,
  seededRandom,
  spacedWindows,
} from "./sweep.ts";

Deno.test("seededRandom: deterministic per seed, in [0, 1)", () => {
  const a = seededRandom(7), b = seededRandom(7), c = seededRandom(8);
  const xs = Array.from({ length: 100 }, () => a());
  assert.deepEqual(xs, Array.from({ length: 100 }, () => b()));
  assert.notDeepEqual(xs, Array.from({ length: 100 }, () => c()));
  assert.ok(xs.every((x) => x >= 0 && x < 1));
});

Deno.test("randomExperts: n distinct experts per layer, ascending, reproducible", () => {
  const sets = randomExperts(4, 16, 5, seededRandom(3));
  assert.equal(sets.length, 4);
  for (const s of sets) {
    assert.equal(new Set(s).size, 5);
    assert.deepEqual(s, [...s].sort((x, y) => x - y));
    assert.ok(s.every((e) => e >= 0 && e < 16));
  }
  assert.deepEqual(sets, randomExperts(4, 16, 5, seededRandom(3)));
});

Deno.test("profileExperts and plannedExperts: the most used per layer; planned spreads slots by mass", () => {
  const profile = [
    [10, 0, 5, 1],
    [1, 1, 1, 1],
  ];
  assert.deepEqual(profileExperts(profile, 2), [[0, 2], [0, 1]]);
  // a concentrated layer needs fewer slots than a flat one: 4 slots in all, at least top-k 1 each
  const planned = plannedExperts(profile, 2, 1);
  assert.equal(planned.flat().length, 4);
  assert.ok(planned[1]!.length >= planned[0]!.length);
});

Deno.test("budgetFor: the all-resident footprint less the experts not held", () => {
  assert.equal(budgetFor(1000, 10, 4, 16, 16), 1000);
  assert.equal(budgetFor(1000, 10, 4, 16, 8), 1000 - 8 * 4 * 10);
});

Deno.test("spacedWindows: evenly spaced whole windows, all when fewer", () => {
  const ids = Array.from({ length: 20 }, (_, i) => i);
  assert.deepEqual(spacedWindows(ids, 4, 2), [0, 1, 2, 3, 8, 9, 10, 11]);
  assert.deepEqual(spacedWindows(ids, 4, 9), ids);
  assert.deepEqual(spacedWindows(ids, 30, 2), []);
});
