import assert from "node:assert/strict";
import { SlotMap } from "./expert_cache.ts";

Deno.test("SlotMap: experts take free slots, the table mirrors the owners", () => {
  const m = new SlotMap(2, 8);
  m.resize([3, 2]);
  assert.deepEqual(m.capacity, [3, 2]);
  assert.deepEqual([...m.table], Array(16).fill(-1));
  assert.equal(m.freeSlot(0), 0);
  m.assign(0, 5, 0);
  m.assign(0, 2, m.freeSlot(0));
  m.assign(1, 7, 1);
  assert.deepEqual(m.resident(0), [2, 5]);
  assert.deepEqual(m.resident(1), [7]);
  assert.equal(m.slotOf(0, 5), 0);
  assert.equal(m.slotOf(0, 2), 1);
  assert.equal(m.table[8 + 7], 1, "layer 1's row starts at E");
  assert.equal(m.ownerOf(0, 1), 2);
  assert.equal(m.ownerOf(1, 0), -1);
  assert.equal(m.freeSlot(0), 2);
  assert.equal(m.freeSlot(1), 0);
  m.assign(0, 0, 2);
  assert.equal(m.freeSlot(0), -1, "full");
});

Deno.test("SlotMap: eviction frees the slot for the next expert; a second eviction is a no-op", () => {
  const m = new SlotMap(1, 4);
  m.resize([2]);
  m.assign(0, 1, 0);
  m.assign(0, 3, 1);
  assert.equal(m.evict(0, 1), true);
  assert.equal(m.evict(0, 1), false);
  assert.equal(m.isResident(0, 1), false);
  assert.equal(m.freeSlot(0), 0);
  m.assign(0, 2, 0);
  assert.deepEqual(m.resident(0), [2, 3]);
  assert.equal(m.ownerOf(0, 0), 2);
});

Deno.test("SlotMap: refuses a taken slot, a slot out of range, a resident expert and a bad layer", () => {
  const m = new SlotMap(1, 4);
  m.resize([2]);
  m.assign(0, 1, 0);
  assert.throws(() => m.assign(0, 2, 0), /Slot 0 of MoE layer 0 is not free/);
  assert.throws(() => m.assign(0, 2, 2), /Slot 2 of MoE layer 0 is not free/);
  assert.throws(() => m.assign(0, 1, 1), /Expert 1 of MoE layer 0 is already resident/);
  assert.throws(() => m.assign(0, 4, 1), /No expert 4/);
  assert.throws(() => m.assign(1, 0, 0), /No MoE layer 1/);
  assert.throws(() => m.resize([1, 1]), /Expected slots for 1 MoE layers, got 2/);
});

Deno.test("SlotMap: resize drops every resident and sets the new capacity", () => {
  const m = new SlotMap(2, 4);
  m.resize([2, 2]);
  m.assign(0, 0, 0);
  m.assign(1, 3, 1);
  m.resize([4, 1]);
  assert.deepEqual(m.capacity, [4, 1]);
  assert.deepEqual(m.resident(0), []);
  assert.deepEqual(m.resident(1), []);
  assert.deepEqual([...m.table], Array(8).fill(-1));
  assert.equal(m.freeSlot(0), 0);
  assert.equal(m.freeSlot(1), 0);
});
