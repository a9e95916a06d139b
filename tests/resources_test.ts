/**
 * Nothing leaks: `close()` (and `await using`) releases every GPU buffer, the device and every mapped
 * shard, is idempotent, and waits for running work; a closed engine refuses work with
 * {@link EngineClosedError}. Deno's resource and op sanitizers are on for every test here.
 */
import assert from "node:assert/strict";
import { createEngine, type Engine, EngineClosedError } from "../mod.ts";
import {
  assertLogitsClose,
  assertRejects,
  drain,
  FIXTURES,
  mappedUnder,
  MODELS,
  referenceLogits,
  spyOnAdapters,
} from "./support/hostile.ts";

/** Stats after close: either refused as closed, or reporting nothing held. */
function assertNothingHeld(engine: Engine): void {
  let gpuBytes: number;
  try {
    gpuBytes = engine.stats().gpuBytes;
  } catch (e) {
    assert.ok(e instanceof EngineClosedError, String(e));
    return;
  }
  assert.equal(gpuBytes, 0, "GPU bytes still counted after close");
}

for (const name of MODELS) {
  Deno.test(`resources: ${name}: close unmaps every shard, frees every buffer and destroys the device`, async () => {
    const dir = `${FIXTURES}${name}`;
    using adapters = spyOnAdapters();
    const engine = await createEngine({ model: dir, policy: "swapmoe", budget: "90%" });
    const shards = name === "tiny-mixtral" ? 2 : 1;
    const mapped = new Set(mappedUnder(dir));
    assert.equal(mapped.size, shards, `mapped while open: ${[...mapped]}`);
    assert.ok(engine.stats().gpuBytes > 0);
    await engine.forward([1, 2, 3]);
    await engine.close();
    assert.deepEqual(mappedUnder(dir), [], "a shard stayed mapped");
    assertNothingHeld(engine);
    assert.equal((await adapters.devices[0]!.lost).reason, "destroyed");
    await engine.close(); // idempotent
  });
}

Deno.test("resources: `await using` closes the engine at the end of the block", async () => {
  const dir = `${FIXTURES}tiny-olmoe`;
  const { ids, logits } = referenceLogits(dir);
  let escaped: Engine;
  {
    await using engine = await createEngine({ model: dir });
    escaped = engine;
    assertLogitsClose(await engine.forward(ids), logits);
    assert.equal(mappedUnder(dir).length, 1);
  }
  assert.deepEqual(mappedUnder(dir), []);
  await assertRejects(() => escaped.forward(ids), EngineClosedError, "The engine is closed");
});

Deno.test("resources: forward, generate and setBudget after close → EngineClosedError", async () => {
  const engine = await createEngine({ model: `${FIXTURES}tiny-qwen3-moe`, policy: "swapmoe", budget: "95%" });
  await engine.close();
  await assertRejects(
    () => engine.forward([1, 2]),
    EngineClosedError,
    "create a new one with createEngine()",
  );
  await assertRejects(() => drain(engine, { ids: [1, 2], maxTokens: 2 }), EngineClosedError);
  await assertRejects(() => drain(engine, { prompt: "hello", maxTokens: 2 }), EngineClosedError);
  await assertRejects(() => engine.setBudget("100%"), EngineClosedError);
  // the checks come first: even an invalid request says "closed"
  await assertRejects(() => engine.forward([]), EngineClosedError);
});

Deno.test("resources: close waits for a forward in flight, which completes", async () => {
  const dir = `${FIXTURES}tiny-qwen2-moe`;
  const { ids, logits } = referenceLogits(dir);
  const engine = await createEngine({ model: dir });
  const pending = engine.forward(ids);
  const closing = engine.close();
  assertLogitsClose(await pending, logits);
  await closing;
  assert.deepEqual(mappedUnder(dir), []);
  await assertRejects(() => engine.forward(ids), EngineClosedError);
});

Deno.test("resources: close ends a generation its consumer left suspended", async () => {
  const dir = `${FIXTURES}tiny-olmoe`;
  const engine = await createEngine({ model: dir });
  const abandoned = engine.generate({ ids: [1, 2, 3], maxTokens: 64, minTokens: 64 });
  assert.equal((await abandoned.next()).done, false);
  const notStarted = engine.generate({ ids: [4, 5], maxTokens: 4 });
  let timer: ReturnType<typeof setTimeout> | undefined;
  const outcome = await Promise.race([
    engine.close().then(() => "closed"),
    new Promise((r) => (timer = setTimeout(() => r("close hung"), 20_000))),
  ]);
  clearTimeout(timer);
  assert.equal(outcome, "closed");
  assert.deepEqual(mappedUnder(dir), []);
  assert.deepEqual(await abandoned.next(), { value: undefined, done: true });
  assert.equal((await notStarted.next()).done, true);
});

Deno.test("resources: close from inside a generation loop ends it", async () => {
  const engine = await createEngine({ model: `${FIXTURES}tiny-olmoe` });
  const ids: number[] = [];
  for await (const c of engine.generate({ ids: [1, 2, 3], maxTokens: 32, minTokens: 32 })) {
    ids.push(...c.ids);
    if (ids.length >= 2) await engine.close();
  }
  assert.ok(ids.length >= 2 && ids.length < 32, `${ids.length} tokens`);
  await assertRejects(() => engine.forward([1]), EngineClosedError);
});

Deno.test("resources: concurrent closes settle together", async () => {
  const dir = `${FIXTURES}tiny-mixtral`;
  const engine = await createEngine({ model: dir });
  await Promise.all([engine.close(), engine.close(), engine.close()]);
  assert.deepEqual(mappedUnder(dir), []);
});

/** File-backed mappings of this process (anonymous ones are left out: lavapipe's JIT keeps one per pipeline it ran). */
function fileMappings(): number {
  return Deno.readTextFileSync("/proc/self/maps").split("\n").filter((l) =>
    l.split(/\s+/)[5]?.startsWith("/")
  )
    .length;
}

Deno.test("resources: twenty create/close cycles leave no mapping, device or buffer behind", async () => {
  const dir = `${FIXTURES}tiny-olmoe`;
  using adapters = spyOnAdapters();
  const cycle = async (policy: "lru" | "swapmoe") => {
    const engine = await createEngine({ model: dir, policy, budget: "95%" });
    await engine.forward([1, 2, 3]);
    await engine.close();
  };
  await cycle("swapmoe"); // loads the driver's libraries once
  const before = fileMappings();
  for (let i = 0; i < 20; i++) await cycle(i % 2 ? "lru" : "swapmoe");
  assert.deepEqual(mappedUnder(dir), []);
  const reasons = await Promise.all(adapters.devices.map((d) => d.lost));
  assert.equal(reasons.length, 21);
  assert.ok(reasons.every((r) => r.reason === "destroyed"), "every device destroyed");
  assert.equal(fileMappings(), before, "file mappings left behind");
});

Deno.test("resources: a refused engine leaves nothing mapped and no device", async () => {
  const dir = `${FIXTURES}tiny-olmoe`;
  using adapters = spyOnAdapters();
  await assertRejects(() => createEngine({ model: dir, policy: "swapmoe", budget: 1000 }), Error);
  assert.equal(adapters.calls, 0);
  assert.deepEqual(mappedUnder(dir), []);
});
