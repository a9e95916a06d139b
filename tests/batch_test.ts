/**
 * Batched decoding (issue 14) on the tiny fixtures: generations that run at once on one engine decode
 * together, each in a slot of its own, and give exactly the tokens each gives alone, whatever their
 * prompt lengths and however they arrive; cancelling one leaves the others as they were; past
 * `maxBatchSequences` a generation waits for a slot; every slot's KV caches are in the budget. Every
 * wait has a deadline, so that a regression fails rather than hangs.
 */
import assert from "node:assert/strict";
import { BudgetError, createEngine, type Engine, type GenerateRequest, OptionError } from "../mod.ts";
import { assertRejects, drain, FIXTURES, within } from "./support/hostile.ts";

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** A request of `n` prompt ids (a run through the vocabulary from `from`), `tokens` new tokens exactly. */
function request(
  n: number,
  from: number,
  tokens: number,
  extra: Partial<GenerateRequest> = {},
): GenerateRequest {
  return {
    ids: Array.from({ length: n }, (_, i) => (from + 7 * i) % 500 + 3),
    maxTokens: tokens,
    minTokens: tokens,
    ...extra,
  };
}

/**
 * Runs `requests` at once on `engine`, request i starting `stagger · i` ms after the first (while the
 * others decode), each read as fast as it comes; returns each one's ids and the most generations that
 * held slots at once, as seen between chunks.
 */
async function together(
  engine: Engine,
  requests: GenerateRequest[],
  stagger = 40,
): Promise<{ ids: number[][]; mostActive: number }> {
  let mostActive = 0;
  const ids = await within(
    Promise.all(requests.map(async (r, i) => {
      await sleep(stagger * i);
      const out: number[] = [];
      for await (const c of engine.generate(r)) {
        out.push(...c.ids);
        mostActive = Math.max(mostActive, engine.stats().activeSequences);
      }
      return out;
    })),
    "the generations together",
  );
  return { ids, mostActive };
}

// prompts of 1 token, a few, one longer than a GEMV call's rows (GEMV_MAX_ROWS, 32) but within a prefill
// chunk beside decoding generations (SHARED_CHUNK_ROWS, 64), and one longer than such a chunk
const MIXED = [
  request(1, 0, 12),
  request(5, 40, 20),
  request(40, 90, 9),
  request(70, 200, 16),
  request(3, 7, 5),
];

for (const name of ["tiny-mixtral", "tiny-olmoe", "tiny-qwen2-moe", "tiny-gpt-oss"]) {
  Deno.test(`batch: ${name}: generations decoded together give what each gives alone (greedy)`, async () => {
    await using engine = await createEngine({ model: `${FIXTURES}${name}`, maxBatchSequences: 8 });
    const alone = [];
    for (const r of MIXED) alone.push(await within(drain(engine, r), "a generation alone"));
    const { ids, mostActive } = await together(engine, MIXED);
    assert.deepEqual(ids, alone);
    assert.ok(mostActive >= 3, `${mostActive} generations held slots at once`);
  });
}

Deno.test("batch: alone, a generation's tokens come back in batches of 1, 2, 4, 8, 16, 16, …", async () => {
  await using engine = await createEngine({ model: `${FIXTURES}tiny-mixtral` });
  const sizes = [];
  for await (const c of engine.generate(request(4, 9, 40))) sizes.push(c.ids.length);
  assert.deepEqual(sizes, [1, 2, 4, 8, 16, 9]);
});

Deno.test("batch: prompt chunks past the GEMV path's rows (grouped experts) run alone in their call", async () => {
  // chunks of up to 160 rows: the 150- and 100-token prompts take the grouped expert kernels, as alone
  await using engine = await createEngine({
    model: `${FIXTURES}tiny-olmoe`,
    maxBatchTokens: 160,
    maxBatchSequences: 6,
  });
  const requests = [
    request(3, 0, 30),
    request(150, 11, 10),
    request(7, 50, 26),
    request(100, 200, 12),
    request(1, 9, 20),
  ];
  const alone = [];
  for (const r of requests) alone.push(await drain(engine, r));
  const { ids, mostActive } = await together(engine, requests, 30);
  assert.deepEqual(ids, alone);
  assert.ok(mostActive >= 3, `${mostActive} generations held slots at once`);
});

Deno.test("batch: static routing and sampled generations (their seeds) give what they give alone", async () => {
  await using engine = await createEngine({
    model: `${FIXTURES}tiny-qwen3-moe`,
    policy: "static",
    budget: "8/16",
    maxBatchSequences: 4,
  });
  const requests = [
    request(9, 1, 14, { temperature: 1, topP: 0.9, seed: 7 }),
    request(2, 50, 10),
    request(30, 120, 12, { temperature: 0.8, topK: 20, seed: 3 }),
    request(17, 300, 8, { temperature: 1.2, seed: 11 }),
  ];
  const alone = [];
  for (const r of requests) alone.push(await drain(engine, r));
  assert.deepEqual((await together(engine, requests, 25)).ids, alone);
});

Deno.test("batch: chunks of 4 prompt rows and lru's exact routing, together as alone", async () => {
  await using engine = await createEngine({
    model: `${FIXTURES}tiny-olmoe`,
    policy: "lru",
    budget: "100%",
    maxBatchTokens: 4,
  });
  const requests = [request(11, 5, 9), request(3, 60, 12), request(6, 9, 7)];
  const alone = [];
  for (const r of requests) alone.push(await drain(engine, r));
  assert.deepEqual((await together(engine, requests, 10)).ids, alone);
});

Deno.test("batch: cancelling one stream leaves the others as they were", async () => {
  await using engine = await createEngine({ model: `${FIXTURES}tiny-mixtral` });
  const requests = [request(4, 10, 24), request(12, 30, 24), request(7, 70, 24)];
  const alone = [];
  for (const r of requests) alone.push(await drain(engine, r));
  const abort = new AbortController();
  const got = await within(
    Promise.all([
      drain(engine, requests[0]!),
      (async () => {
        // the consumer stops after its second chunk: return() ends the generation
        const ids: number[] = [];
        let chunks = 0;
        for await (const c of engine.generate(requests[1]!)) {
          ids.push(...c.ids);
          if (++chunks === 2) break;
        }
        return ids;
      })(),
      (async () => {
        const ids: number[] = [];
        let last;
        for await (const c of engine.generate({ ...requests[2]!, signal: abort.signal })) {
          ids.push(...c.ids);
          if (ids.length >= 3) abort.abort();
          last = c;
        }
        assert.equal(last?.finishReason, "abort");
        return ids;
      })(),
    ]),
    "three streams, two of them cancelled",
  );
  assert.deepEqual(got[0], alone[0]);
  assert.deepEqual(
    got[1],
    alone[1]!.slice(0, got[1]!.length),
    "the cancelled stream's tokens as far as it went",
  );
  assert.ok(got[1]!.length < 24);
  assert.deepEqual(got[2], alone[2]!.slice(0, got[2]!.length));
  assert.ok(got[2]!.length < 24);
  // both slots came back: the engine is idle, and runs what comes next
  assert.equal(engine.stats().activeSequences, 0);
  assert.deepEqual(await drain(engine, requests[1]!), alone[1]);
});

Deno.test("batch: past maxBatchSequences a generation waits for a slot, and all finish as alone", async () => {
  await using engine = await createEngine({ model: `${FIXTURES}tiny-olmoe`, maxBatchSequences: 2 });
  assert.equal(engine.stats().maxBatchSequences, 2);
  const requests = [request(5, 1, 10), request(8, 20, 6), request(3, 40, 12), request(20, 60, 8)];
  const alone = [];
  for (const r of requests) alone.push(await drain(engine, r));
  const { ids, mostActive } = await together(engine, requests, 0);
  assert.deepEqual(ids, alone);
  assert.equal(mostActive, 2, "two slots");
});

Deno.test("batch: a generation aborted while it waits for a slot ends at once; the others go on", async () => {
  await using engine = await createEngine({ model: `${FIXTURES}tiny-olmoe`, maxBatchSequences: 1 });
  const long = request(5, 2, 120);
  const next = request(6, 40, 10);
  const alone = [await drain(engine, long), await drain(engine, next)];
  const abort = new AbortController();
  let abortedAt = -1;
  let longChunks = 0;
  const running = (async () => {
    const ids: number[] = [];
    for await (const c of engine.generate(long)) {
      ids.push(...c.ids);
      longChunks++;
    }
    return ids;
  })();
  await sleep(50);
  // two wait for the slot; the second in line is aborted
  const first = drain(engine, next);
  await sleep(20);
  const second = (async () => {
    const chunks = [];
    for await (const c of engine.generate({ ...request(4, 70, 8), signal: abort.signal })) chunks.push(c);
    abortedAt = longChunks;
    return chunks;
  })();
  await sleep(50);
  abort.abort();
  const [ids, firstIds, chunks] = await within(Promise.all([running, first, second]), "all three");
  assert.deepEqual(chunks.map((c) => [c.ids.length, c.finishReason]), [[0, "abort"]]);
  assert.ok(abortedAt < longChunks, `the aborted one ended after ${abortedAt} of ${longChunks} chunks`);
  assert.deepEqual([ids, firstIds], alone);
});

Deno.test("batch: forward takes a slot from a generation whose consumer is away; it rebuilds its cache", async () => {
  await using engine = await createEngine({ model: `${FIXTURES}tiny-qwen2-moe`, maxBatchSequences: 1 });
  const r = request(6, 11, 30);
  const alone = await drain(engine, r);
  const gen = engine.generate(r);
  const ids: number[] = [];
  const first = await within(gen.next(), "the first chunk");
  ids.push(...(first.value?.ids ?? []));
  // the only slot is the generation's; forward runs all the same
  const logits = await within(engine.forward([3, 1, 4, 1, 5]), "forward beside a held slot");
  assert.equal(logits.length, 5 * engine.spec.vocabSize);
  for (let c = await within(gen.next(), "the rest"); !c.done; c = await gen.next()) ids.push(...c.value.ids);
  assert.deepEqual(ids, alone);
});

Deno.test("batch: every slot's KV caches are in the footprint; a budget that cannot hold them is refused", async () => {
  const model = `${FIXTURES}tiny-olmoe`;
  await using one = await createEngine({ model, maxBatchSequences: 1, contextLength: 256 });
  await using four = await createEngine({ model, maxBatchSequences: 4, contextLength: 256 });
  const kv = (e: Engine) => e.stats().gpuBytesByKind.kv!;
  assert.equal(kv(four), 4 * kv(one));
  assert.equal(
    four.stats().budgetBytes - one.stats().budgetBytes,
    four.stats().gpuBytes - one.stats().gpuBytes,
  );
  assert.ok(four.stats().gpuBytes <= four.stats().budgetBytes);
  // a budget in bytes that holds the model with one sequence's caches, not with 64
  const bytes = one.stats().minimumBudgetBytes + 2 * 4 * (one.stats().expertBytes);
  await assertRejects(
    () =>
      createEngine({ model, policy: "swapmoe", budget: bytes, maxBatchSequences: 64, contextLength: 256 }),
    BudgetError,
    "(64 sequences)",
  );
  // without maxBatchSequences, as many as the budget holds
  await using fit = await createEngine({ model, policy: "swapmoe", budget: bytes, contextLength: 256 });
  const n = fit.stats().maxBatchSequences;
  assert.ok(n >= 1 && n < 64, `${n} sequences`);
  assert.ok(fit.stats().gpuBytes <= bytes);
});

Deno.test("batch: maxBatchSequences is checked, and Switch Transformers take one", async () => {
  await assertRejects(
    () => createEngine({ model: `${FIXTURES}tiny-olmoe`, maxBatchSequences: 0 }),
    OptionError,
    "Invalid maxBatchSequences: 0",
  );
  await assertRejects(
    () => createEngine({ model: `${FIXTURES}tiny-switch`, maxBatchSequences: 2 }),
    OptionError,
    "Invalid maxBatchSequences: 2, switch_transformers decodes 1 sequence at a time",
  );
  // Switch's generations take the one slot in turn, each giving what it gives alone
  await using engine = await createEngine({ model: `${FIXTURES}tiny-switch` });
  assert.equal(engine.stats().maxBatchSequences, 1);
  const requests = [request(6, 3, 8), request(9, 30, 6)];
  const alone = [];
  for (const r of requests) alone.push(await drain(engine, r));
  assert.deepEqual((await together(engine, requests, 0)).ids, alone);
});

Deno.test("batch: prompt rows per call default to the most of 512, 256, 128 that 1/32 of the budget holds, else 64", async () => {
  const model = `${FIXTURES}tiny-olmoe`;
  const rows = (e: Engine) => e.stats().maxBatchTokens;
  // all resident at its own footprint (1.9 MB): 128 rows' activations would take more than 60 KB
  await using tight = await createEngine({ model, contextLength: 512 });
  assert.equal(rows(tight), 64);
  // a budget of 1 GiB holds passes of 512 rows many times over
  await using roomy = await createEngine({ model, contextLength: 512, budget: "1GiB" });
  assert.equal(rows(roomy), 512);
  assert.ok(roomy.stats().gpuBytes <= roomy.stats().budgetBytes);
  // never more rows than the context holds, and an explicit maxBatchTokens is kept
  await using short = await createEngine({ model, contextLength: 100, budget: "1GiB" });
  assert.equal(rows(short), 100);
  await using set = await createEngine({ model, contextLength: 512, budget: "1GiB", maxBatchTokens: 40 });
  assert.equal(rows(set), 40);
});
