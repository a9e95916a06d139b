/**
 * Soak: many short generations on one engine with the budget changing in between, recording host
 * RSS and GPU bytes over time, to show that nothing grows without bound.
 *
 * Usage: deno run -A bench/soak.ts [--model DIR] [--requests 200] [--tokens 16] [--context 128]
 *          [--batch 16] [--every 5] [--budgets 40%,70%,100%] [--policy swapmoe] [--json out.json]
 *
 * Prints start (after the first request), peak and end RSS and GPU bytes, and a sample of the curve.
 */
import { parseArgs } from "node:util";
import { createEngine, formatBytes, type PolicyName } from "../mod.ts";

const { values: args } = parseArgs({
  args: Deno.args,
  strict: true,
  options: {
    model: { type: "string" },
    requests: { type: "string", default: "200" },
    tokens: { type: "string", default: "16" },
    context: { type: "string", default: "128" },
    batch: { type: "string", default: "16" },
    every: { type: "string", default: "5" },
    budgets: { type: "string", default: "40%,70%,100%" },
    policy: { type: "string", default: "swapmoe" },
    json: { type: "string" },
  },
});
const requests = Number(args.requests);
const tokens = Number(args.tokens);
const every = Number(args.every);
const budgets = args.budgets.split(",");

const PROMPTS = [
  "The state of the Union is",
  "My fellow Americans,",
  "Tonight I want to talk about",
  "We will rebuild our roads and bridges",
  "The economy",
  "Our nation's strength",
];

interface Sample {
  request: number;
  budget: string;
  rss: number;
  gpuBytes: number;
  heapUsed: number;
  tokens: number;
  hitRate: number;
  swaps: number;
}

const t0 = performance.now();
await using engine = await createEngine({
  model: args.model,
  policy: args.policy as PolicyName,
  budget: budgets[0],
  contextLength: Number(args.context),
  maxBatchTokens: Number(args.batch),
});
const samples: Sample[] = [];
let budget = budgets[0]!;
let generated = 0;
for (let i = 0; i < requests; i++) {
  if (i > 0 && i % every === 0) {
    budget = budgets[(i / every) % budgets.length]!;
    await engine.setBudget(budget);
  }
  for await (
    const c of engine.generate({
      prompt: PROMPTS[i % PROMPTS.length]!,
      maxTokens: tokens,
      minTokens: tokens,
      temperature: 0.8,
      topP: 0.95,
      seed: i,
    })
  ) generated += c.ids.length;
  const s = engine.stats();
  const mem = Deno.memoryUsage();
  samples.push({
    request: i + 1,
    budget,
    rss: mem.rss,
    gpuBytes: s.gpuBytes,
    heapUsed: mem.heapUsed,
    tokens: generated,
    hitRate: s.hitRate,
    swaps: s.swaps,
  });
}
const seconds = (performance.now() - t0) / 1000;

const first = samples[0]!;
const last = samples.at(-1)!;
const peak = (k: "rss" | "gpuBytes" | "heapUsed") => samples.reduce((a, s) => (s[k] > a[k] ? s : a));
const stats = engine.stats();
console.log(
  `soak: ${requests} requests × ${tokens} tokens (${generated} generated) in ${seconds.toFixed(1)} s, ` +
    `policy ${args.policy}, budgets ${
      budgets.join(" → ")
    } every ${every} requests, on ${stats.gpu.description}`,
);
console.log(
  `full footprint ${formatBytes(stats.fullBytes)}, minimum ${formatBytes(stats.minimumBudgetBytes)}`,
);
for (const k of ["rss", "heapUsed", "gpuBytes"] as const) {
  const p = peak(k);
  console.log(
    `${k.padEnd(8)}  start ${formatBytes(first[k]).padStart(10)}  peak ${
      formatBytes(p[k]).padStart(10)
    } (request ${p.request})  end ${formatBytes(last[k]).padStart(10)}`,
  );
}
console.log("curve (request, budget, rss, heap, gpuBytes, hitRate, swaps):");
const step = Math.max(1, Math.floor(requests / 20));
for (const s of samples.filter((s, i) => i % step === 0 || s === last)) {
  console.log(
    `  ${String(s.request).padStart(4)}  ${s.budget.padStart(5)}  ${formatBytes(s.rss).padStart(10)}  ${
      formatBytes(s.heapUsed).padStart(10)
    }  ${formatBytes(s.gpuBytes).padStart(10)}  ${s.hitRate.toFixed(3)}  ${s.swaps}`,
  );
}
// growth over the second half: the first requests warm caches (pipelines, tokenizer, allocator)
const mid = samples[Math.floor(samples.length / 2)]!;
console.log(
  `RSS growth over the second half: ${formatBytes(Math.max(0, last.rss - mid.rss))} (${
    ((last.rss - mid.rss) / (last.request - mid.request) / 1024).toFixed(1)
  } KiB per request)`,
);
if (args.json) {
  await Deno.writeTextFile(
    args.json,
    JSON.stringify({ requests, tokens, budgets, policy: args.policy, seconds, samples }, null, 1),
  );
}
