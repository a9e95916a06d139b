import assert from "node:assert/strict";
import type { GpuMemory } from "../gpu/memory.ts";
import { BudgetError, OptionError } from "../errors.ts";
import { BudgetPlan, changeLimit, type Footprint, formatBytes, parseBudget, parseSize } from "./budget.ts";

Deno.test("parseBudget: bytes, sizes in both unit systems, and shares of the footprint", () => {
  assert.equal(parseBudget(1234, 1), 1234);
  assert.equal(parseBudget("4096", 1), 4096);
  assert.equal(parseBudget("512MiB", 1), 512 * 2 ** 20);
  assert.equal(parseBudget(" 1.5 GB ", 1), 1.5e9);
  assert.equal(parseBudget("2gib", 1), 2 * 2 ** 30);
  assert.equal(parseBudget("50%", 1001), 500);
  assert.equal(parseBudget("100%", 1001), 1001);
  for (
    const bad of [
      0,
      -1,
      NaN,
      1234.9,
      2 ** 53 + 5,
      1e300,
      "0%",
      "101%",
      "lots",
      "12 parsecs",
      "0",
      "0.5",
      "1.5",
      "",
    ]
  ) {
    assert.throws(() => parseBudget(bad, 1000), OptionError, `${JSON.stringify(bad)}`);
  }
});

Deno.test("parseSize: a size of at least one byte, never a share", () => {
  assert.equal(parseSize("12MiB"), 12 * 2 ** 20);
  assert.equal(parseSize("192KiB"), 192 * 1024);
  assert.equal(parseSize("1"), 1);
  for (const bad of ["12%", "0", "0.4", "-3MiB", "many", ""]) {
    assert.throws(
      () => parseSize(bad, "--max-upload"),
      (e: Error) => e instanceof OptionError && e.message.startsWith(`Invalid --max-upload: "${bad}"`),
    );
  }
});

Deno.test("formatBytes: binary units, one decimal above KiB", () => {
  assert.equal(formatBytes(1000), "1000 B");
  assert.equal(formatBytes(12 * 2 ** 20), "12.0 MiB");
  assert.equal(formatBytes(1.35 * 2 ** 30), "1.35 GiB");
});

/** 1000 fixed bytes, 4 MoE layers of 8 experts of 100 bytes, top-2, 512 positions. */
const FP: Footprint = {
  fixedBytes: 1000,
  copyBytes: [100],
  nativeCopyBytes: 100,
  moeLayers: 4,
  experts: 8,
  topK: 2,
  contextLength: 512,
  sequences: 1,
};

Deno.test("BudgetPlan: each policy's minimum, the full footprint, and the default budgets", () => {
  const uniform = { planner: "uniform" } as const;
  const full = new BudgetPlan(FP, "full", undefined, uniform);
  const swap = new BudgetPlan(FP, "swapmoe", undefined, uniform);
  const fixed = new BudgetPlan(FP, "static", [[0, 1, 2], [0, 1], [3, 4], [5, 6, 7]], uniform);
  assert.equal(full.fullBytes, 1000 + 32 * 100);
  assert.equal(full.minimumBytes, full.fullBytes, "full needs every expert");
  assert.equal(swap.minimumBytes, 1000 + 8 * 100, "top-k per layer");
  assert.equal(swap.floorBytes, 1800);
  assert.equal(fixed.minimumBytes, 1000 + 10 * 100, "the static sets");
  assert.equal(full.resolve(undefined), 4200);
  assert.equal(swap.resolve(undefined), 2100, "half of full");
  assert.equal(fixed.resolve(undefined), 2000, "what the sets take");
  assert.equal(
    new BudgetPlan({ ...FP, fixedBytes: 10_000 }, "lru", undefined, uniform).resolve(undefined),
    10_800,
  );
});

Deno.test("BudgetPlan: budgets in every form, and below the minimum a BudgetError naming both figures", () => {
  const p = new BudgetPlan(FP, "swapmoe", undefined, { planner: "uniform" });
  assert.equal(p.resolve(3000), 3000);
  assert.equal(p.resolve("50%"), 2100);
  assert.equal(p.resolve("4/8"), 1000 + 4 * 4 * 100, "experts per layer");
  assert.throws(() => p.resolve("4/16"), /this model has 8 experts per layer: use "n\/8"/);
  assert.throws(() => p.resolve("9/8"), OptionError);
  assert.throws(
    () => p.resolve(1799),
    (e: Error) =>
      e instanceof BudgetError &&
      /1799 bytes .* given, policy "swapmoe" needs at least 1800 bytes/.test(e.message) &&
      /KV caches for 512 positions/.test(e.message),
  );
  assert.throws(
    () => new BudgetPlan(FP, "full", undefined, { planner: "uniform" }).resolve("99%"),
    BudgetError,
  );
});

Deno.test("BudgetPlan: slots per layer from the bytes left after the fixed part", () => {
  const p = new BudgetPlan(FP, "swapmoe", undefined, { planner: "uniform" });
  assert.deepEqual(p.slots(1000 + 10 * 100 + 99), [[3, 3, 2, 2]]);
  assert.deepEqual(p.slots(p.fullBytes), [[8, 8, 8, 8]]);
  assert.deepEqual(new BudgetPlan(FP, "full", undefined, { planner: "uniform" }).slots(0), [[8, 8, 8, 8]]);
  assert.deepEqual(
    new BudgetPlan(FP, "static", [[1, 2], [3, 4, 5], [0, 1], [6, 7]], { planner: "uniform" }).slots(0),
    [[2, 3, 2, 2]],
  );
});

Deno.test("BudgetPlan.audit and changeLimit: the allocator holds what was planned, never above its limit", () => {
  const p = new BudgetPlan(FP, "swapmoe", undefined, { planner: "uniform" });
  const memory = { bytes: 1000 + 10 * 100, limit: 5000 } as unknown as GpuMemory;
  p.audit(memory, [[3, 3, 2, 2]]);
  assert.throws(
    () => p.audit(memory, [[3, 3, 3, 2]]),
    /Internal: GPU bytes 2000 disagree with the planned footprint 2100/,
  );
  // while a change runs, the limit is the larger of the old holding and the new budget; after it, the budget
  const seen: number[] = [];
  changeLimit(memory, 1500, () => seen.push(memory.limit));
  assert.deepEqual(seen, [2000]);
  assert.equal(memory.limit, 1500);
  assert.throws(() =>
    changeLimit(memory, 9000, () => {
      throw new Error("boom");
    })
  );
  assert.equal(memory.limit, 1500, "a failed change restores the limit");
});

Deno.test("BudgetPlan with two tiers: low copies for all first, then promotions at (high − low) each", () => {
  // high copies 100 bytes, low 30; 4 layers of 8 experts, top-2
  const two: Footprint = { ...FP, copyBytes: [100, 30] };
  const p = new BudgetPlan(two, "swapmoe", undefined, { planner: "uniform" });
  assert.equal(p.minimumBytes, 1000 + 4 * 2 * 30, "top-k at the lowest tier");
  assert.equal(
    p.fullBytes,
    1000 + 32 * 100,
    "shares count against every expert at the checkpoint's precision",
  );
  // too little for everyone low: low copies only, as many as fit
  assert.deepEqual(p.slots(1000 + 20 * 30), [[0, 0, 0, 0], [5, 5, 5, 5]]);
  // everyone low (960) plus 5 promotions of 70
  assert.deepEqual(p.slots(1000 + 960 + 5 * 70 + 69), [[2, 1, 1, 1], [6, 7, 7, 7]]);
  // enough for everyone high
  assert.deepEqual(p.slots(p.fullBytes), [[8, 8, 8, 8], [0, 0, 0, 0]]);
  const memory = { bytes: 1000 + 2 * 100 + 30 * 30, limit: 10_000 } as unknown as GpuMemory;
  p.audit(memory, [[2, 0, 0, 0], [6, 8, 8, 8]]);
  assert.throws(
    () => p.resolve(1000 + 4 * 2 * 30 - 1),
    /needs at least 1240 bytes .* one expert 100 B or 30 B/,
  );
});
