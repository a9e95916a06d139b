/**
 * The budget and the policies: the budget is never exceeded (through generation and setBudget),
 * a budget below the minimum is refused naming it, `lru` is exact, `swapmoe` adapts.
 */
import assert from "node:assert/strict";
import { BudgetError, createEngine, type Engine } from "../mod.ts";
import { SafetensorsFile } from "../src/checkpoint/safetensors.ts";
import { logitError } from "./support/logits.ts";

const fixture = (name: string) => new URL(`./fixtures/${name}/`, import.meta.url).pathname;

async function generateIds(engine: Engine, request: Parameters<Engine["generate"]>[0]): Promise<number[]> {
  const out: number[] = [];
  for await (const c of engine.generate(request)) out.push(...c.ids);
  return out;
}

function assertWithinBudget(engine: Engine, ceiling = engine.stats().budgetBytes): void {
  const s = engine.stats();
  assert.ok(s.gpuBytes <= s.budgetBytes, `gpuBytes ${s.gpuBytes} > budget ${s.budgetBytes}`);
  assert.ok(s.peakGpuBytes <= ceiling, `peak ${s.peakGpuBytes} > ${ceiling}`);
}

Deno.test("a budget below the minimum is refused, naming the minimum", async () => {
  await using probe = await createEngine({ model: fixture("tiny-mixtral"), policy: "swapmoe" });
  const min = probe.stats().minimumBudgetBytes;
  await assert.rejects(
    () => createEngine({ model: fixture("tiny-mixtral"), policy: "swapmoe", budget: min - 1 }),
    (e: Error) => e instanceof BudgetError && e.message.includes(String(min)),
  );
  await assert.rejects(
    () => probe.setBudget(min - 1),
    (e: Error) => e instanceof BudgetError && e.message.includes(String(min)),
  );
  // exactly the minimum works and holds top-k experts per layer
  await using engine = await createEngine({ model: fixture("tiny-mixtral"), policy: "swapmoe", budget: min });
  assert.equal(engine.stats().budgetBytes, min);
  assert.deepEqual(engine.stats().expertSlots, [2, 2]);
});

Deno.test("budgets in bytes, sizes and percentages resolve as documented", async () => {
  await using full = await createEngine({ model: fixture("tiny-olmoe") });
  const s = full.stats();
  assert.equal(s.gpuBytes, s.fullBytes, "full holds exactly the all-resident footprint");
  await using pct = await createEngine({ model: fixture("tiny-olmoe"), policy: "swapmoe", budget: "90%" });
  assert.equal(pct.stats().budgetBytes, Math.floor(s.fullBytes * 0.9));
  await using bytes = await createEngine({
    model: fixture("tiny-olmoe"),
    policy: "swapmoe",
    budget: s.fullBytes - 12345,
  });
  assert.equal(bytes.stats().budgetBytes, s.fullBytes - 12345);
  await using mib = await createEngine({ model: fixture("tiny-olmoe"), policy: "swapmoe", budget: "2MiB" });
  assert.equal(mib.stats().budgetBytes, 2 * 2 ** 20);
});

for (const name of ["sotu-moe-mini", "tiny-olmoe", "tiny-gpt-oss"]) {
  Deno.test(`${name}: the budget holds through generation and setBudget (shrink, grow)`, async () => {
    const model = name === "sotu-moe-mini" ? undefined : fixture(name);
    // one sequence's KV caches in every engine here, whatever the budget (by default their number follows it)
    const options = { model, policy: "swapmoe" as const, contextLength: 256, maxBatchSequences: 1 };
    // budgets that hold a share of the experts on top of everything else
    await using probe = await createEngine(options);
    const p = probe.stats();
    await probe.close();
    const experts = p.expertBytes * p.expertSlots.length * probe.spec.numExperts;
    const share = (f: number) => Math.floor(p.fullBytes - experts + f * experts);
    await using engine = await createEngine({ ...options, budget: share(0.7) });
    const b0 = engine.stats().budgetBytes;
    const slots0 = engine.stats().expertSlots.reduce((a, b) => a + b, 0);
    await generateIds(engine, { prompt: "The state of the Union is", maxTokens: 12 });
    assertWithinBudget(engine, b0);
    const shrunk = await engine.setBudget(share(0.4));
    assert.ok(shrunk.gpuBytes <= shrunk.budgetBytes && shrunk.budgetBytes < b0);
    const slots1 = shrunk.expertSlots.reduce((a, b) => a + b, 0);
    assert.ok(slots1 < slots0, `shrinking evicts: ${slots1} slots, was ${slots0}`);
    assert.deepEqual(shrunk.residentExperts.map((r) => r.length), shrunk.expertSlots);
    await generateIds(engine, { prompt: "Our economy has grown", maxTokens: 12 });
    assertWithinBudget(engine, b0);
    const grown = await engine.setBudget("100%");
    assert.equal(grown.budgetBytes, p.fullBytes);
    assert.ok(
      grown.expertSlots.every((n) => n === engine.spec.numExperts),
      "a full budget holds every expert",
    );
    await generateIds(engine, { prompt: "Call me Ishmael", maxTokens: 12 });
    assertWithinBudget(engine, grown.budgetBytes);
    assert.ok(engine.stats().hitRate < 1, "misses were counted while experts were missing");
  });
}

for (const name of ["tiny-mixtral", "tiny-qwen2-moe", "tiny-gpt-oss"]) {
  Deno.test(`${name}: lru under the minimum budget equals full (logits and greedy ids)`, async () => {
    const dir = fixture(name);
    const ref = JSON.parse(await Deno.readTextFile(`${dir}reference.json`));
    using logits = SafetensorsFile.open(`${dir}reference.safetensors`);
    await using probe = await createEngine({ model: dir, policy: "lru" });
    const min = probe.stats().minimumBudgetBytes;
    await probe.close();
    await using engine = await createEngine({ model: dir, policy: "lru", budget: min });
    assert.ok(engine.stats().expertSlots.every((n) => n === engine.spec.topK));
    for (const [i, p] of ref.prompts.entries()) {
      const want = logits.bytes(`p${i}.logits`);
      const { err, tol } = logitError(
        await engine.forward(p.ids),
        new Float32Array(want.buffer, want.byteOffset, want.byteLength / 4),
      );
      assert.ok(err <= tol, `prompt ${i}: lru logit error ${err} > ${tol}`);
      const n = ref.greedy_new_tokens;
      assert.deepEqual(await generateIds(engine, { ids: p.ids, maxTokens: n, minTokens: n }), p.greedy);
    }
    assert.equal(engine.stats().hitRate, 1, "lru serves every choice exactly");
    assert.ok(engine.stats().bytesUploaded > engine.stats().expertBytes * 4, "lru loaded experts on demand");
    assertWithinBudget(engine, min);
  });
}

Deno.test("swapmoe with every expert resident equals full", async () => {
  const dir = fixture("tiny-qwen3-moe");
  const ref = JSON.parse(await Deno.readTextFile(`${dir}reference.json`));
  await using engine = await createEngine({ model: dir, policy: "swapmoe", budget: "100%" });
  const n = ref.greedy_new_tokens;
  assert.deepEqual(
    await generateIds(engine, { ids: ref.prompts[1].ids, maxTokens: n, minTokens: n }),
    ref.prompts[1].greedy,
  );
});

Deno.test("sotu-moe-mini: swapmoe settles on a steady hit rate and swaps when the text changes", async () => {
  // half of the experts: the all-resident footprint less half the experts' bytes
  await using probe = await createEngine({ contextLength: 512, maxBatchSequences: 1 });
  const full = probe.stats();
  await probe.close();
  const half = full.fullBytes - (full.expertBytes * 4 * 16) / 2;
  await using engine = await createEngine({
    policy: "swapmoe",
    budget: half,
    contextLength: 512,
    maxBatchSequences: 1,
    updateInterval: 8,
  });
  assert.deepEqual(engine.stats().expertSlots, [8, 8, 8, 8]);
  const sotu = "Mr. Speaker, Mr. Vice President, Members of Congress, my fellow Americans: Tonight we gather";
  await generateIds(engine, { prompt: sotu, maxTokens: 48, minTokens: 48 });
  const warm = engine.stats();
  await generateIds(engine, { prompt: sotu, maxTokens: 48, minTokens: 48 });
  const steady = engine.stats();
  const hits = (s: typeof warm) => s.hitRate * s.routedChoices;
  const windowRate = (hits(steady) - hits(warm)) / (steady.routedChoices - warm.routedChoices);
  assert.ok(windowRate >= 0.6, `steady hit rate ${windowRate.toFixed(3)} with half of the experts`);
  assert.ok(
    windowRate >= warm.hitRate - 0.05,
    `hit rate did not settle: ${windowRate} after ${warm.hitRate}`,
  );
  const residentBefore = JSON.stringify(steady.residentExperts);
  const moby =
    "Call me Ishmael. Some years ago—never mind how long precisely—having little or no money in my purse";
  await generateIds(engine, { prompt: moby, maxTokens: 48, minTokens: 48 });
  const after = engine.stats();
  assert.ok(after.swaps > steady.swaps, `no swaps after the text changed (${after.swaps})`);
  assert.notEqual(JSON.stringify(after.residentExperts), residentBefore);
  assert.ok(after.gpuBytes <= after.budgetBytes && after.peakGpuBytes <= after.budgetBytes);
});

Deno.test("swapmoe uploads at most maxUploadBytesPerStep per decode step, and the cap is what binds", async () => {
  const sotu = "Mr. Speaker, Mr. Vice President, Members of Congress, my fellow Americans: Tonight we gather";
  const moby =
    "Call me Ishmael. Some years ago—never mind how long precisely—having little or no money in my purse";
  const tokens = 8;
  const swapsAfterTopicChange = async (experts: number) => {
    await using probe = await createEngine({ contextLength: 256 });
    const slot = probe.stats().expertBytes;
    await probe.close();
    await using engine = await createEngine({
      policy: "swapmoe",
      budget: "60%",
      contextLength: 256,
      updateInterval: 1,
      maxUploadBytesPerStep: experts * slot,
    });
    await generateIds(engine, { prompt: sotu, maxTokens: 32, minTokens: 32 });
    const before = engine.stats();
    await generateIds(engine, { prompt: moby, maxTokens: tokens, minTokens: tokens });
    const after = engine.stats();
    assert.equal(after.bytesUploaded - before.bytesUploaded, (after.swaps - before.swaps) * slot);
    return after.swaps - before.swaps;
  };
  // one expert per step: the prefill's allowance, then one per decode step
  const capped = await swapsAfterTopicChange(1);
  assert.ok(capped <= 1 + tokens, `${capped} swaps in ${tokens} steps with one expert per step`);
  const free = await swapsAfterTopicChange(64);
  console.log(
    `  swaps in ${tokens} steps after a topic change: ${capped} capped at one per step, ${free} uncapped`,
  );
  assert.ok(free > capped, `without the cap ${free} swaps, with it ${capped}: the cap did not bind`);
});

Deno.test("swapmoe paces its uploads by default and reports how; a fixed cap turns the pacing off", async () => {
  const prompt =
    "Mr. Speaker, Mr. Vice President, Members of Congress, my fellow Americans: Tonight we gather";
  await using paced = await createEngine({ policy: "swapmoe", budget: "60%", contextLength: 256 });
  assert.equal(paced.stats().uploadPacing?.share, 0.1); // the initial share, before any step
  await generateIds(paced, { prompt, maxTokens: 40, minTokens: 40 });
  const s = paced.stats();
  const pacing = s.uploadPacing!;
  assert.ok(pacing.share >= 0.01 && pacing.share <= 0.5, `share ${pacing.share}`);
  assert.ok(pacing.bytesPerSecond > 0);
  assert.ok(pacing.stepSeconds! > 0, "no decode step measured without uploads");
  // lavapipe has timestamp queries: the steps were timed on the device, and as long as the host saw them
  assert.equal(pacing.clock, "gpu");
  const hostStep = s.decodeTokensPerSecond > 0 ? 1 / s.decodeTokensPerSecond : 0;
  console.log(
    `  step without uploads: ${(pacing.stepSeconds! * 1e3).toFixed(2)} ms on the GPU's clock, ${
      (hostStep * 1e3).toFixed(2)
    } ms a token on the host's`,
  );
  assert.ok(pacing.stepSeconds! > hostStep / 3 && pacing.stepSeconds! < hostStep * 3);
  // the same timestamps give the decode's GPU timeline: steps inside batches, and idle time between them
  const tl = s.gpuTimeline!;
  assert.ok(tl.steps > 0 && tl.stepSeconds > 0, JSON.stringify(tl));
  assert.ok(tl.gaps > 0 && tl.gapSeconds >= 0 && tl.gaps < tl.steps, JSON.stringify(tl));
  console.log(
    `  GPU timeline: ${(1e3 * tl.stepSeconds / tl.steps).toFixed(2)} ms a step, ${
      (1e3 * tl.gapSeconds / tl.gaps).toFixed(2)
    } ms idle between batches`,
  );
  assert.ok(s.swaps > 0, "no swaps while decoding 40 tokens");
  assert.ok(s.peakGpuBytes <= s.budgetBytes);
  await using capped = await createEngine({
    policy: "swapmoe",
    budget: "60%",
    contextLength: 256,
    maxUploadBytesPerStep: 1 << 20,
  });
  assert.equal(capped.stats().uploadPacing, undefined);
  await using full = await createEngine({ contextLength: 256 });
  assert.equal(full.stats().uploadPacing, undefined);
});

Deno.test("sotu-moe-mini: static with a profile gives the same greedy output for the same request, whatever came between", async () => {
  // the README's recipe for repeatable output: swapmoe's resident set follows the requests, static's does not
  const { usage } = JSON.parse(
    await Deno.readTextFile(new URL("../models/sotu-moe-mini/expert_profile.json", import.meta.url)),
  );
  const sotu = "Mr. Speaker, Mr. Vice President, Members of Congress, my fellow Americans: Tonight we gather";
  const moby = "Call me Ishmael. Some years ago—never mind how long precisely—having little or no money";
  const request = { prompt: sotu, maxTokens: 24, minTokens: 24 };
  for (const policy of ["static", "swapmoe"] as const) {
    await using engine = await createEngine({ policy, budget: "8/16", profile: usage, contextLength: 256 });
    const first = await generateIds(engine, request);
    const resident = JSON.stringify(engine.stats().residentExperts);
    await generateIds(engine, { prompt: moby, maxTokens: 32, minTokens: 32 });
    const moved = JSON.stringify(engine.stats().residentExperts) !== resident;
    const again = await generateIds(engine, request);
    if (policy === "static") {
      assert.equal(moved, false, "static's resident experts moved");
      assert.deepEqual(again, first);
      assert.equal(engine.stats().swaps, 0);
    } else {
      // what makes swapmoe's output depend on earlier requests (the README says so)
      assert.equal(moved, true, "swapmoe's resident experts did not follow the other text");
    }
  }
});
