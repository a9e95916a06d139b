/**
 * The host's side of a prompt and of a decode, one engine: every `queue.submit` (and how long the call
 * took), every `mapAsync` (how long its call blocked: Deno's waits there until all submitted work has run;
 * and when its promise settled: 10 ms after that), and each chunk a generation yields. Shows where the GPU
 * waits for the host (docs/benchmarks.md); the per-batch summary at the end gives the steady state.
 *
 *   deno run -A bench/host_trace.ts --model /tmp/olmoe [--policy full] [--prefill 512] [--new 160]
 *
 * @module
 */
import { parseArgs } from "node:util";
import { createEngine, type PolicyName } from "../mod.ts";

interface Event {
  t: number;
  what: string;
  ms?: number;
}

const { values } = parseArgs({
  args: Deno.args,
  options: {
    model: { type: "string" },
    policy: { type: "string", default: "full" },
    prefill: { type: "string", default: "512" },
    new: { type: "string", default: "160" },
  },
});
const prefill = Number(values.prefill), decode = Number(values.new);
if (!values.model || ![prefill, decode].every((n) => Number.isInteger(n) && n >= 0)) {
  console.error(
    "usage: host_trace.ts --model DIR [--policy full] [--prefill 512] [--new 160] (token counts: whole numbers, 0 skips)",
  );
  Deno.exit(2);
}
const log: Event[] = [];
const now = () => performance.now();

// wrap the three calls the timeline is made of; the engine reaches them through the prototypes
const submit = GPUQueue.prototype.submit;
GPUQueue.prototype.submit = function (buffers: GPUCommandBuffer[]): undefined {
  const t = now();
  submit.call(this, buffers);
  log.push({ t, what: "submit", ms: now() - t });
};
const encoder = GPUDevice.prototype.createCommandEncoder;
GPUDevice.prototype.createCommandEncoder = function (d?: GPUCommandEncoderDescriptor): GPUCommandEncoder {
  log.push({ t: now(), what: `encoder ${d?.label ?? ""}` });
  return encoder.call(this, d);
};
const mapAsync = GPUBuffer.prototype.mapAsync;
GPUBuffer.prototype.mapAsync = function (mode: number, offset?: number, size?: number): Promise<undefined> {
  const t = now();
  const p = mapAsync.call(this, mode, offset, size);
  log.push({ t, what: "mapAsync call", ms: now() - t });
  p.then(() => log.push({ t: now(), what: "mapAsync settled", ms: now() - t }), () => {});
  return p;
};

await using engine = await createEngine({
  model: values.model,
  policy: values.policy as PolicyName,
  contextLength: 2048,
  maxBatchSequences: 1,
});
const vocab = engine.spec.vocabSize;
const ids = (n: number, seed: number) =>
  Array.from({ length: n }, (_, i) => 3 + ((i * 7919 + seed) % (vocab - 10)));

/** Runs one generation with the log cleared, and prints its timeline. */
async function trace(name: string, prompt: number[], tokens: number): Promise<number[]> {
  log.length = 0;
  const t0 = now();
  const chunks: number[] = [];
  for await (const c of engine.generate({ ids: prompt, maxTokens: tokens, minTokens: tokens })) {
    log.push({ t: now(), what: `chunk of ${c.ids.length}` });
    chunks.push(now() - t0);
  }
  console.log(`## ${name}: ${(now() - t0).toFixed(1)} ms`);
  let last = t0;
  for (const e of log) {
    const ms = e.ms === undefined ? "" : ` (${e.ms.toFixed(2)} ms)`;
    console.log(
      `${(e.t - t0).toFixed(2).padStart(9)} +${(e.t - last).toFixed(2).padStart(6)}  ${e.what}${ms}`,
    );
    last = e.t;
  }
  return chunks;
}

for await (const _ of engine.generate({ ids: ids(32, 1), maxTokens: 64, minTokens: 64 })) { /* warm-up */ }
if (prefill > 0) {
  for (let r = 0; r < 2; r++) await trace(`prefill of ${prefill} tokens, round ${r + 1}`, ids(prefill, r), 1);
}
if (decode > 0) {
  const chunks = await trace(`decode of ${decode} tokens`, ids(32, 9), decode);
  const gaps = chunks.slice(1).map((t, i) => (t - chunks[i]!).toFixed(1));
  console.log(`ms between chunks: ${gaps.join(", ")}`);
}
