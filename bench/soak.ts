/**
 * Soak: many short generations on one engine with the budget changing in between, recording host
 * RSS and GPU bytes over time, to show that nothing grows without bound.
 *
 * Usage: deno run -A bench/soak.ts [--model DIR] [--requests 200] [--tokens 16] [--context 128]
 *          [--batch 16] [--every 5] [--budgets 40%,70%,100%] [--policy swapmoe] [--json out.json]
 *          [--warmup N] [--max-growth 100MiB]
 *
 * Prints start (after the first request), peak and end RSS and GPU bytes, and a sample of the curve.
 * The warmed-up figure is the peak RSS over the first `--warmup` requests (default: one cycle of the
 * budgets, `every` × their count, so that it includes the largest one); the soak fails (exit code 1,
 * stopping at once) when a later request leaves RSS more than `--max-growth` above it.
 * CI runs a small one on lavapipe: `--requests 24 --tokens 8 --warmup 15 --max-growth 32MiB`.
 */
import { parseArgs } from "node:util";
import { createEngine, formatBytes, parseBudget, type PolicyName } from "../mod.ts";

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
    warmup: { type: "string" },
    "max-growth": { type: "string", default: "100MiB" },
  },
});
const requests = Number(args.requests);
const tokens = Number(args.tokens);
const every = Number(args.every);
const budgets = args.budgets.split(",");
const warmup = args.warmup === undefined ? every * budgets.length : Number(args.warmup);
if (!(Number.isInteger(warmup) && warmup >= 1 && warmup < requests)) {
  throw new RangeError(
    `--warmup must be an integer in [1, ${requests - 1}] (below --requests), got ${args.warmup}`,
  );
}
if (args["max-growth"].includes("%")) {
  throw new RangeError(`--max-growth must be a size such as 100MiB, got ${args["max-growth"]}`);
}
const maxGrowth = parseBudget(args["max-growth"], 0);

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
  maxBatchSequences: 1, // one request at a time
});
const samples: Sample[] = [];
let budget = budgets[0]!;
let generated = 0;
let warmRss = 0; // peak RSS over the warm-up requests
let failure: Sample | undefined; // the first request after warm-up above warmRss + maxGrowth
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
  if (i < warmup) warmRss = Math.max(warmRss, mem.rss);
  else if (mem.rss - warmRss > maxGrowth) {
    failure = samples.at(-1);
    break;
  }
}
const seconds = (performance.now() - t0) / 1000;

const first = samples[0]!;
const last = samples.at(-1)!;
const peak = (k: "rss" | "gpuBytes" | "heapUsed") => samples.reduce((a, s) => (s[k] > a[k] ? s : a));
const stats = engine.stats();
console.log(
  `soak: ${samples.length} of ${requests} requests × ${tokens} tokens (${generated} generated) in ` +
    `${seconds.toFixed(1)} s, policy ${args.policy}, budgets ${budgets.join(" → ")} every ${every} ` +
    `requests, on ${stats.gpu.description}`,
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
const step = Math.max(1, Math.floor(samples.length / 20));
for (const s of samples.filter((s, i) => i % step === 0 || s === last)) {
  console.log(
    `  ${String(s.request).padStart(4)}  ${s.budget.padStart(5)}  ${formatBytes(s.rss).padStart(10)}  ${
      formatBytes(s.heapUsed).padStart(10)
    }  ${formatBytes(s.gpuBytes).padStart(10)}  ${s.hitRate.toFixed(3)}  ${s.swaps}`,
  );
}
// growth after warm-up: the first requests warm caches (pipelines, tokenizer, allocator) and cycle
// through the budgets once
const after = samples.slice(warmup);
const peakAfter = after.reduce((a, s) => (s.rss > a.rss ? s : a));
const growth = peakAfter.rss - warmRss;
const slope = after.length > 1 ? (last.rss - after[0]!.rss) / (last.request - after[0]!.request) : 0;
console.log(
  `RSS after warm-up (${warmup} requests, peak ${formatBytes(warmRss)}): peak ${
    formatBytes(peakAfter.rss)
  } at request ${peakAfter.request}, ${growth >= 0 ? "+" : "-"}${formatBytes(Math.abs(growth))}; ` +
    `${(slope / 1024).toFixed(1)} KiB per request from request ${warmup + 1} to the end; ` +
    `limit +${formatBytes(maxGrowth)}`,
);
if (failure) {
  console.error(
    `FAILED: RSS grew by ${formatBytes(failure.rss - warmRss)} after warm-up, more than ${
      formatBytes(maxGrowth)
    }, by request ${failure.request} of ${requests}`,
  );
  Deno.exitCode = 1;
}
if (args.json) {
  await Deno.writeTextFile(
    args.json,
    JSON.stringify(
      {
        requests,
        tokens,
        budgets,
        policy: args.policy,
        seconds,
        warmup,
        maxGrowth,
        growth,
        passed: !failure,
        samples,
      },
      null,
      1,
    ),
  );
}
