import assert from "node:assert/strict";
import { spreadSlots, topExperts } from "./planner.ts";

Deno.test("spreadSlots uniform: round-robin from the first layer, between top-k and all experts", () => {
  assert.deepEqual(spreadSlots("uniform", 10, 4, 8, 2), [3, 3, 2, 2]);
  assert.deepEqual(spreadSlots("uniform", 8, 4, 8, 2), [2, 2, 2, 2]);
  assert.deepEqual(spreadSlots("uniform", 1, 4, 8, 2), [2, 2, 2, 2], "never below top-k");
  assert.deepEqual(spreadSlots("uniform", 1000, 3, 8, 2), [8, 8, 8], "never above every expert");
  assert.deepEqual(spreadSlots("uniform", 13, 3, 4, 1), [4, 4, 4]);
});

Deno.test("spreadSlots profile: extra slots go where the next expert holds the most of its layer's mass", () => {
  // layer 0 concentrates on one expert, layer 1 is flat: layer 1 gets the extra slots
  const profile = [
    [100, 1, 1, 1],
    [25, 25, 25, 25],
  ];
  assert.deepEqual(spreadSlots("profile", 5, 2, 4, 1, profile), [1, 4]);
  assert.deepEqual(spreadSlots("profile", 8, 2, 4, 1, profile), [4, 4]);
  // without a profile, the profile planner spreads uniformly
  assert.deepEqual(spreadSlots("profile", 5, 2, 4, 1), [3, 2]);
});

Deno.test("topExperts: the n largest, ascending by id, ties to the lower id", () => {
  assert.deepEqual(topExperts([0.1, 0.9, 0.5, 0.9], 2), [1, 3]);
  assert.deepEqual(topExperts([1, 1, 1, 1], 3), [0, 1, 2]);
  assert.deepEqual(topExperts(Float64Array.from([3, 2, 1]), 5), [0, 1, 2]);
  assert.deepEqual(topExperts([5, 4], 0), []);
});
