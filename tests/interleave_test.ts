/**
 * No call waits forever on a generation: an iterator advanced and then dropped gives the engine up to
 * the calls that want it, and generations whose `next()` calls interleave both make progress, each
 * giving what it gives alone (its GPU state rebuilt when another call ran in between). Every wait here
 * has a deadline, so that a regression fails rather than hangs.
 */
import assert from "node:assert/strict";
import { createEngine, type Engine, type GenerateChunk, type GenerateRequest } from "../mod.ts";
import { drain, FIXTURES, within } from "./support/hostile.ts";

/** Reads `gens` in turn, one `next()` each per round, until all are done; returns each one's ids. */
async function interleave(gens: AsyncGenerator<GenerateChunk>[]): Promise<number[][]> {
  const ids = gens.map(() => [] as number[]);
  const open = new Set(gens.keys());
  for (let round = 0; open.size > 0; round++) {
    for (const i of [...open]) {
      const r = await within(gens[i]!.next(), `generation ${i}'s next() in round ${round}`);
      if (r.done) open.delete(i);
      else ids[i]!.push(...r.value.ids);
    }
  }
  return ids;
}

const A: GenerateRequest = { ids: [1, 2, 3, 4, 5], maxTokens: 24, minTokens: 24 };
const B: GenerateRequest = { ids: [9, 8, 7], maxTokens: 20, minTokens: 20 };

Deno.test("interleave: an iterator advanced once and dropped does not hold the engine", async () => {
  await using engine = await createEngine({
    model: `${FIXTURES}tiny-olmoe`,
    policy: "swapmoe",
    budget: "90%",
  });
  const dropped = engine.generate({ ids: [1, 2, 3], maxTokens: 64, minTokens: 64 });
  assert.equal((await within(dropped.next(), "the first next()")).done, false);
  // the consumer never calls next() again nor return(): every other call still runs
  const logits = await within(engine.forward([1, 2, 3]), "forward after a dropped iterator");
  assert.equal(logits.length, 3 * engine.spec.vocabSize);
  const ids = await within(drain(engine, { ids: [4, 5], maxTokens: 4, minTokens: 4 }), "generate");
  assert.equal(ids.length, 4);
  const stats = await within(engine.setBudget("95%"), "setBudget after a dropped iterator");
  assert.equal(stats.budgetBytes, engine.stats().budgetBytes);
  // and the dropped one still works when its consumer comes back
  const rest: number[] = [];
  for (
    let r = await within(dropped.next(), "next() of the dropped iterator");
    !r.done;
    r = await dropped.next()
  ) {
    rest.push(...r.value.ids);
  }
  assert.ok(rest.length > 0 && rest.length < 64, `${rest.length} more tokens`);
});

for (const name of ["tiny-mixtral", "tiny-switch"]) {
  Deno.test(`interleave: ${name}: two generations read in turn both finish, each with its own output`, async () => {
    await using engine = await createEngine({ model: `${FIXTURES}${name}` });
    const alone = [await drain(engine, A), await drain(engine, B)];
    const both = await interleave([engine.generate(A), engine.generate(B)]);
    assert.deepEqual(both, alone);
  });
}

Deno.test("interleave: lru, with the prompt and the rebuilt state in chunks of 4 rows, gives what each gives alone", async () => {
  await using engine = await createEngine({
    model: `${FIXTURES}tiny-qwen3-moe`,
    policy: "lru",
    budget: "90%",
    maxBatchTokens: 4,
  });
  const a = { ...A, ids: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11] };
  const alone = [await drain(engine, a), await drain(engine, B)];
  assert.deepEqual(await interleave([engine.generate(a), engine.generate(B)]), alone);
});

Deno.test("interleave: sampled generations read in turn give what they give alone (the same seed)", async () => {
  await using engine = await createEngine({ model: `${FIXTURES}tiny-qwen3-moe` });
  const a = { ...A, temperature: 1, topP: 0.9, seed: 7 };
  const b = { ...B, temperature: 0.8, topK: 20, seed: 3 };
  const alone = [await drain(engine, a), await drain(engine, b)];
  assert.deepEqual(await interleave([engine.generate(a), engine.generate(b)]), alone);
});

Deno.test("interleave: forward and setBudget between the chunks of a generation leave its output as it was", async () => {
  await using engine = await createEngine({
    model: `${FIXTURES}tiny-qwen2-moe`,
    policy: "static",
    budget: "100%",
  });
  const alone = await drain(engine, A);
  const gen = engine.generate(A);
  const ids: number[] = [];
  for (let i = 0;; i++) {
    const r = await within(gen.next(), `next() ${i}`);
    if (r.done) break;
    ids.push(...r.value.ids);
    if (i === 0) await within(engine.forward([3, 1, 4, 1, 5]), "forward between chunks");
    if (i === 1) await within(engine.setBudget("100%"), "setBudget between chunks");
    if (i === 2) await within(drain(engine, B), "another generation between chunks");
  }
  assert.deepEqual(ids, alone);
});

Deno.test("interleave: concurrent readers of two generations (Promise.all) both finish", async () => {
  await using engine = await createEngine({ model: `${FIXTURES}tiny-olmoe` });
  const alone = [await drain(engine, A), await drain(engine, B)];
  const slowly = async (request: GenerateRequest) => {
    const ids: number[] = [];
    for await (const c of engine.generate(request)) {
      ids.push(...c.ids);
      await new Promise((r) => setTimeout(r, 5)); // a consumer that writes to a socket between chunks
    }
    return ids;
  };
  assert.deepEqual(await within(Promise.all([slowly(A), slowly(B)]), "both generations"), alone);
});

Deno.test("interleave: close ends generations that wait for the engine and those left suspended", async () => {
  const engine: Engine = await createEngine({ model: `${FIXTURES}tiny-olmoe` });
  const a = engine.generate(A);
  const b = engine.generate(B);
  assert.equal((await within(a.next(), "a's first chunk")).done, false);
  assert.equal((await within(b.next(), "b's first chunk")).done, false);
  await within(engine.close(), "close");
  assert.deepEqual(await within(a.next(), "a after close"), { value: undefined, done: true });
  assert.deepEqual(await within(b.next(), "b after close"), { value: undefined, done: true });
});
