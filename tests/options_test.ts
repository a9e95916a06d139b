/**
 * Options are validated before any work: every invalid engine option, request field, sampling value
 * and budget throws {@link OptionError} (or {@link BudgetError} for a budget too small to run) with a
 * message saying what is wrong and what would be right — and a refused engine never asks for a GPU.
 */
import assert from "node:assert/strict";
import { BudgetError, createEngine, type Engine, type EngineOptions, OptionError, POLICIES } from "../mod.ts";
import {
  assertLogitsClose,
  assertRejects,
  drain,
  FIXTURES,
  referenceLogits,
  spyOnAdapters,
} from "./support/hostile.ts";

const MODEL = `${FIXTURES}tiny-olmoe`; // 2 MoE layers of 16 experts, top-4, vocabulary 512
const MISSING = `${FIXTURES}no-such-model`;
const ALL = Array.from({ length: 16 }, (_, i) => i);

/** Engine options refused by `validateOptions` alone: the model folder is never read. */
const WITHOUT_MODEL: [string, Record<string, unknown>, ...string[]][] = [
  ["budget lots", { budget: "lots" }, 'Invalid budget: "lots"', '"512MiB"', '"50%"'],
  ["budget -5", { budget: -5 }, "Invalid budget: -5, expected a whole number of bytes (at most 2^53 - 1)"],
  ["budget 1.5", { budget: 1.5 }, "Invalid budget: 1.5, expected a whole number of bytes"],
  ["budget 2^53 + 5", { budget: 2 ** 53 + 5 }, "Invalid budget: 9007199254740996"],
  ["budget 1e300", { budget: 1e300 }, "Invalid budget: 1e+300"],
  ['budget "1.5" bytes', { budget: "1.5" }, 'Invalid budget: "1.5"'],
  ["budget 3/0 experts", { budget: "3/0" }, 'Invalid budget: "3/0", expected n/E'],
  ["budget 0", { budget: 0 }, "Invalid budget: 0"],
  ["budget NaN", { budget: NaN }, "Invalid budget: NaN"],
  ["budget Infinity", { budget: Infinity }, "Invalid budget: Infinity"],
  ["budget 0%", { budget: "0%" }, 'Invalid budget: "0%", a percentage must be in (0, 100]'],
  ["budget 150%", { budget: "150%" }, 'Invalid budget: "150%", a percentage must be in (0, 100]'],
  ["budget 2 parsecs", { budget: "2 parsecs" }, 'Invalid budget: "2 parsecs"'],
  ["budget an object", { budget: { bytes: 5 } }, "Invalid budget"],
  ["policy fast", { policy: "fast" }, 'Invalid policy: "fast"', `expected one of ${POLICIES.join(", ")}`],
  ["policy null", { policy: null }, "Invalid policy: null"],
  ["unknown option", { fast: true }, 'Unknown option: "fast"', "known are model, policy"],
  ["misspelt option", { contextLen: 64 }, 'Unknown option: "contextLen"'],
  ["model a number", { model: 5 }, "Invalid model: 5, expected a folder path"],
  ["model empty", { model: "" }, 'Invalid model: ""'],
  ["residentExperts without static", { residentExperts: [ALL, ALL] }, 'only policy "static"'],
  ["planner unknown", { planner: "greedy" }, 'Invalid planner: "greedy"'],
  ["planner profile without a profile", { planner: "profile" }, '"profile" needs a profile'],
  ["profile not a list", { profile: "hot" }, "Invalid profile"],
  ["profile with a null row", { profile: [ALL, null] }, "Invalid profile"],
  ["contextLength 0", { contextLength: 0 }, "Invalid contextLength: 0, expected an integer in [1, 1048576]"],
  ["contextLength 1.5", { contextLength: 1.5 }, "Invalid contextLength: 1.5"],
  ["contextLength 2^30", { contextLength: 2 ** 30 }, "Invalid contextLength: 1073741824"],
  ["maxBatchTokens 0", { maxBatchTokens: 0 }, "Invalid maxBatchTokens: 0"],
  ["maxBatchTokens 10^6", { maxBatchTokens: 1e6 }, "Invalid maxBatchTokens: 1000000"],
  ["updateInterval -1", { updateInterval: -1 }, "Invalid updateInterval: -1"],
  ["maxUploadBytesPerStep 0.5", { maxUploadBytesPerStep: 0.5 }, "Invalid maxUploadBytesPerStep: 0.5"],
  ["importanceDecay 0", { importanceDecay: 0 }, "Invalid importanceDecay: 0, expected a number in (0, 1]"],
  ["importanceDecay 1.5", { importanceDecay: 1.5 }, "Invalid importanceDecay: 1.5"],
  ["onProgress not a function", { onProgress: "log" }, "Invalid onProgress: expected a function"],
];

for (const [name, options, ...parts] of WITHOUT_MODEL) {
  Deno.test(`options: ${name} → OptionError before the model is read`, async () => {
    using adapters = spyOnAdapters();
    // the folder does not exist: an OptionError proves the options came first
    await assertRejects(
      () => createEngine({ model: MISSING, ...options } as EngineOptions),
      OptionError,
      ...parts,
    );
    await assertRejects(
      () => createEngine({ model: MODEL, ...options } as EngineOptions),
      OptionError,
      ...parts,
    );
    assert.equal(adapters.calls, 0);
  });
}

Deno.test("options: not an object → OptionError", async () => {
  for (const o of [null, 5, "tiny", [MODEL]]) {
    await assertRejects(() => createEngine(o as unknown as EngineOptions), OptionError, "Invalid options");
  }
});

/** Options that need config.json (expert counts, top-k, max_position_embeddings), refused before the GPU. */
const WITH_MODEL: [string, EngineOptions, typeof OptionError | typeof BudgetError, ...string[]][] = [
  [
    "residentExperts of the wrong length",
    { policy: "static", residentExperts: [ALL] },
    OptionError,
    "Invalid residentExperts: expected 2 lists (one per MoE layer), got 1",
  ],
  [
    "residentExperts not a list",
    { policy: "static", residentExperts: "all" as unknown as number[][] },
    OptionError,
    "Invalid residentExperts: expected 2 lists",
  ],
  [
    "residentExperts with an id out of range",
    { policy: "static", residentExperts: [ALL, [0, 1, 2, 16]] },
    OptionError,
    "Invalid residentExperts[1]: expected expert ids in [0, 16)",
  ],
  [
    "residentExperts with a negative id",
    { policy: "static", residentExperts: [[-1, 0, 1, 2], ALL] },
    OptionError,
    "Invalid residentExperts[0]",
  ],
  [
    "residentExperts with a fractional id",
    { policy: "static", residentExperts: [[0.5, 1, 2, 3], ALL] },
    OptionError,
    "Invalid residentExperts[0]",
  ],
  [
    "residentExperts fewer than top-k",
    { policy: "static", residentExperts: [[0, 1, 2], ALL] },
    OptionError,
    "Invalid residentExperts[0]: 3 experts, at least top-k = 4 are needed",
  ],
  [
    "residentExperts fewer than top-k after duplicates",
    { policy: "static", residentExperts: [ALL, [5, 5, 6, 7]] },
    OptionError,
    "Invalid residentExperts[1]: 3 experts, at least top-k = 4",
  ],
  [
    "profile of the wrong length",
    { planner: "profile", profile: [ALL] },
    OptionError,
    "Invalid profile: expected 2 lists",
  ],
  [
    "profile with negative importance",
    { planner: "profile", profile: [ALL, ALL.map((i) => -i)] },
    OptionError,
    "Invalid profile: expected 2 rows of 16 non-negative numbers",
  ],
  [
    "profile with a short row",
    { planner: "profile", profile: [ALL, [1, 2]] },
    OptionError,
    "Invalid profile: expected 2 rows of 16",
  ],
  [
    "contextLength above max_position_embeddings",
    { contextLength: 1024 },
    OptionError,
    "Invalid contextLength: 1024 exceeds the model's max_position_embeddings 512",
  ],
  [
    "swapmoe with 10% of the footprint",
    { policy: "swapmoe", budget: "10%" },
    BudgetError,
    "Budget too small",
    'policy "swapmoe" needs at least',
    "one expert 12.0 KiB",
  ],
  [
    "lru with 1000 bytes",
    { policy: "lru", budget: 1000 },
    BudgetError,
    "Budget too small: 1000 bytes (1000 B) given",
  ],
  [
    "full with half the footprint",
    { policy: "full", budget: "50%" },
    BudgetError,
    'policy "full" needs at least',
  ],
  [
    "static set larger than the budget",
    { policy: "static", residentExperts: [ALL, ALL], budget: "60%" },
    BudgetError,
    'policy "static" needs at least',
  ],
  [
    "budget in a unit too small",
    { policy: "swapmoe", budget: "1KiB" },
    BudgetError,
    "Budget too small: 1024 bytes",
  ],
];

for (const [name, options, cls, ...parts] of WITH_MODEL) {
  Deno.test(`options: ${name} → ${cls.name} before the GPU`, async () => {
    using adapters = spyOnAdapters();
    await assertRejects(() => createEngine({ model: MODEL, ...options }), cls, ...parts);
    assert.equal(adapters.calls, 0);
  });
}

/** A request with `ids` plus `extra`; refusals happen before anything is queued. */
const REQUESTS: [string, Record<string, unknown>, ...string[]][] = [
  ["temperature -1", { temperature: -1 }, "Invalid temperature: -1, expected a number in [0, 100]"],
  ["temperature NaN", { temperature: NaN }, "Invalid temperature: NaN"],
  ["temperature a string", { temperature: "hot" }, "Invalid temperature: hot"],
  ["topP 0", { topP: 0 }, "Invalid topP: 0, expected a number in (0, 1]"],
  ["topP 1.5", { topP: 1.5 }, "Invalid topP: 1.5"],
  ["topK -1", { topK: -1 }, "Invalid topK: -1, expected an integer >= 0"],
  ["topK 2.5", { topK: 2.5 }, "Invalid topK: 2.5"],
  ["maxTokens 0", { maxTokens: 0 }, "Invalid maxTokens: 0, expected an integer >= 1"],
  ["maxTokens Infinity", { maxTokens: Infinity }, "Invalid maxTokens: Infinity"],
  ["seed -1", { seed: -1 }, "Invalid seed: -1, expected an integer >= 0"],
  ["seed 0.5", { seed: 0.5 }, "Invalid seed: 0.5"],
  ["seed 2^60", { seed: 2 ** 60 }, "Invalid seed"],
  ["minTokens -3", { minTokens: -3 }, "Invalid minTokens: -3"],
  ["stop an empty string", { stop: [""] }, "Invalid stop: expected a list of non-empty strings"],
  ["stop a string", { stop: "\n" }, "Invalid stop"],
  ["unknown field", { max_tokens: 5 }, 'Unknown request field: "max_tokens"', "maxTokens"],
  ["signal not an AbortSignal", { signal: true }, "Invalid signal: expected an AbortSignal"],
];

Deno.test("options: requests, sampling values, ids and budgets on a live engine → OptionError/BudgetError", async (t) => {
  await using engine: Engine = await createEngine({ model: MODEL });
  const { ids, logits } = referenceLogits(MODEL);
  for (const [name, extra, ...parts] of REQUESTS) {
    await t.step(`generate: ${name}`, async () => {
      // generate may throw when called or when iterated: either way, an OptionError
      await assertRejects(() => drain(engine, { ids, maxTokens: 2, ...extra }), OptionError, ...parts);
    });
  }
  await t.step("generate: malformed requests", async () => {
    const bad = (r: unknown, ...parts: string[]) =>
      assertRejects(() => drain(engine, r as Parameters<Engine["generate"]>[0]), OptionError, ...parts);
    await bad(null, "Invalid request: expected an object");
    await bad({}, "Invalid request: give exactly one of ids, prompt, messages");
    await bad({ ids, prompt: "x" }, "give exactly one of ids, prompt, messages");
    await bad({ ids: "abc" }, "Invalid ids");
    await bad({ ids: [] }, "Invalid ids: expected a non-empty array");
    await bad({ ids: [1, 512] }, "Invalid token id: 512, expected an integer in [0, 512)");
    await bad({ ids: [1, -1] }, "Invalid token id: -1");
    await bad({ ids: [1, 2.5] }, "Invalid token id: 2.5");
    await bad({ ids: Array(513).fill(1) }, "Too many tokens: 513, the context holds 512");
    await bad({ prompt: 42 }, "Invalid prompt: expected a string");
    await bad({ messages: "hello" }, "Invalid messages");
    await bad(
      { messages: [{ role: "evil", content: "hi" }] },
      'Invalid messages[0].role: "evil", expected one of system, developer, user, assistant, tool',
    );
    await bad(
      { messages: [{ role: "user", content: "hi" }, { role: "user", content: 5 }] },
      "Invalid messages[1].content: 5, expected a string",
    );
    await bad({ messages: ["hi"] }, "Invalid messages[0]: expected an object {role, content}");
    await bad({ messages: [{ content: "hi" }] }, "Invalid messages[0].role: undefined");
  });
  await t.step("generate: an already aborted signal ends with one chunk, finishReason abort", async () => {
    const chunks = [];
    for await (const c of engine.generate({ ids, maxTokens: 4, signal: AbortSignal.abort() })) chunks.push(c);
    assert.equal(chunks.length, 1);
    const { usage, ...chunk } = chunks[0]!;
    assert.deepEqual(chunk, { ids: [], text: "", finishReason: "abort" });
    assert.equal(usage?.promptTokens, ids.length);
    assert.equal(usage?.completionTokens, 0);
  });
  await t.step("forward: bad ids", async () => {
    for (
      const [bad, part] of [
        [[], "Invalid ids"],
        [null, "Invalid ids"],
        [[1, NaN], "Invalid token id: NaN"],
        [[600], "Invalid token id: 600"],
        [Array(513).fill(0), "Too many tokens: 513"],
      ] as const
    ) {
      await assertRejects(() => engine.forward(bad as unknown as number[]), OptionError, part);
    }
  });
  await t.step("setBudget: bad budgets", async () => {
    await assertRejects(() => engine.setBudget("lots"), OptionError, 'Invalid budget: "lots"');
    await assertRejects(() => engine.setBudget(-5), OptionError, "Invalid budget: -5");
    await assertRejects(() => engine.setBudget("0%"), OptionError, 'Invalid budget: "0%"');
    await assertRejects(() => engine.setBudget("150%"), OptionError, 'Invalid budget: "150%"');
    await assertRejects(
      () => engine.setBudget(1000),
      BudgetError,
      "Budget too small: 1000 bytes",
      'policy "full"',
    );
    assert.equal(engine.stats().budgetBytes, engine.stats().fullBytes, "a refused budget changes nothing");
  });
  await t.step("the engine still answers correctly after every refusal", async () => {
    assertLogitsClose(await engine.forward(ids), logits);
    assert.equal((await drain(engine, { ids, maxTokens: 3, minTokens: 3 })).length, 3);
  });
});
