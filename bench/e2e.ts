/**
 * End-to-end decode and prefill speed for each policy and budget, in one process, on one model.
 * Writes JSON (one record per configuration) and prints a Markdown table.
 *
 *   deno run -A bench/e2e.ts --model DIR --configs full,swapmoe@4GiB,full/int4,swapmoe@4GiB/bf16+int4 \
 *     [--prompt 32] [--new 128] [--prefill 512] [--context 1024] [--max-upload-mib M] [--batch-tokens N] [--warmup 64] [--repeat N] [--out results.json]
 *
 * A config is `policy[@budget][/precision]`: the policy, its budget, and the experts' precision
 * (`expertPrecision`; default bf16). Load and quantizing times are recorded: the first load at a new
 * precision quantizes (into `$SWAPMOE_CACHE`), later loads map the cache.
 *
 * Decode tok/s counts the new tokens that arrive after the first chunk (the first token comes out of
 * the prefill; a chunk is one readback) over the wall time from the first chunk to the last; prefill
 * tok/s is a `--prefill`-token prompt over the time to its first token. Greedy decoding with
 * end-of-sequence suppressed so every run decodes exactly `--new` tokens. `--max-upload-mib` sets
 * the engines' `maxUploadBytesPerStep` (default: paced by the decode steps' slack), `--batch-tokens` their `maxBatchTokens`
 * (prompt rows per GPU call; default the engine's). `--warmup N`: tokens decoded untimed first (an
 * engine's first steps after the load are slow, see {@link WARMUP_TOKENS}; 0: none). `--repeat N` times N
 * generations per engine (each one's rate, GPU step and GPU step chunk by chunk in the JSON's `repeats`;
 * the table shows the first).
 *
 * @module
 */
import { parseArgs } from "node:util";
import {
  createEngine,
  type Engine,
  type EngineOptions,
  type EngineStats,
  formatBytes,
  type PolicyName,
} from "../mod.ts";

/** One measured configuration. */
export interface E2eRecord {
  config: string;
  policy: PolicyName;
  /** The experts' precision (`expertPrecision`). */
  precision: string;
  /** Seconds spent quantizing experts during the load (0 when the copies came from the cache or none were needed). */
  quantizeSeconds: number;
  budget: string | null;
  decodeTokensPerSecond: number;
  prefillTokensPerSecond: number | null;
  newTokens: number;
  promptTokens: number;
  gpuBytes: number;
  budgetBytes: number;
  fullBytes: number;
  hitRate: number;
  cacheHitRate: number;
  swaps: number;
  bytesUploaded: number;
  uploadSeconds: number;
  /** swapmoe's upload pacing at the end of the run (EngineStats.uploadPacing). */
  uploadPacing: EngineStats["uploadPacing"] | null;
  /**
   * The decode on the GPU's clock (EngineStats.gpuTimeline, over the timed generation): milliseconds a
   * step takes inside a batch, and milliseconds the GPU sat idle between batches, per batch and per
   * token. Null without timestamp queries.
   */
  gpu: { msPerStep: number; idleMsPerBatch: number; idleMsPerToken: number } | null;
  /** With `--repeat N` (N > 1): each of the N timed generations of one engine, the first as above. */
  repeats?: DecodeRun[];
  loadSeconds: number;
  adapter: string;
}

function promptIds(n: number, vocab: number, seed: number): number[] {
  let s = seed;
  return Array.from({ length: n }, (_, i) => {
    s = (s * 1103515245 + 12345) >>> 0;
    return i === 0 ? 1 : 10 + (s % Math.min(1000, vocab - 10));
  });
}

/**
 * Tokens decoded, untimed, before the timed generation. On the H200 (bench/e2e.ts --repeat 4, 12 engines,
 * docs/runs/h200_run9_repeat_*.json) the slow runs were all first generations: their first 3–5 readbacks
 * (7–31 steps) ran at 3.5–7.3 ms a step against 2.5–2.7 later, in one `full` engine of six (the GPU after
 * the load's idle) and in every `swapmoe` engine (also its first swaps, as the resident set settles).
 * With the 4 tokens of warm-up of earlier rounds they fell inside the timed run: whole runs 5–20 % slow.
 */
export const WARMUP_TOKENS = 64;

/** Measures one configuration. */
export async function measure(
  model: string | undefined,
  config: string,
  o: {
    prompt: number;
    newTokens: number;
    prefill: number;
    context: number;
    uploadMiB?: number;
    /** `maxBatchTokens`: prompt rows per GPU call (the engine's default when absent). */
    batchTokens?: number;
    /** Tokens of the untimed generation before the timed ones (default {@link WARMUP_TOKENS}). */
    warmup?: number;
    /** Timed generations per engine (default 1): the decode figures are the first's; hit rate, swaps and uploads span all. */
    repeat?: number;
  },
): Promise<E2eRecord> {
  // policy[@budget][/precision], e.g. full, swapmoe@4GiB, full/int4, swapmoe@4GiB/bf16+int4
  const [head, precision] = config.split("/") as [string, string | undefined];
  const [policy, budget] = head.split("@") as [PolicyName, string | undefined];
  const t0 = performance.now();
  let quantizeStart = 0;
  let quantizeSeconds = 0;
  const engineOptions: EngineOptions = {
    model,
    policy,
    budget,
    contextLength: o.context,
    maxBatchTokens: o.batchTokens,
    // batch 1: one sequence's KV caches, so that the budget's experts are those of earlier runs
    maxBatchSequences: 1,
    expertPrecision: precision,
    onProgress: (p) => {
      if (p.stage === "quantize" && quantizeStart === 0) quantizeStart = performance.now();
      if (p.stage === "gpu" && quantizeStart > 0) {
        quantizeSeconds = (performance.now() - quantizeStart) / 1000;
      }
    },
  };
  if (o.uploadMiB !== undefined) engineOptions.maxUploadBytesPerStep = Math.round(o.uploadMiB * 2 ** 20);
  await using engine = await createEngine(engineOptions);
  const loadSeconds = (performance.now() - t0) / 1000;
  if (quantizeStart > 0 && quantizeSeconds === 0) {
    quantizeSeconds = (performance.now() - quantizeStart) / 1000;
  }
  const vocab = engine.spec.vocabSize;
  // warm-up: compile pipelines, fill caches, and time the steady state: an engine's first steps after the
  // load can take 2–3 × as long as the later ones (WARMUP_TOKENS)
  const warm = o.warmup ?? WARMUP_TOKENS;
  if (warm > 0) {
    for await (
      const _ of engine.generate({ ids: promptIds(o.prompt, vocab, 7), maxTokens: warm, minTokens: warm })
    ) { /* */ }
  }
  const before: EngineStats = engine.stats();
  const runs: DecodeRun[] = [];
  for (let i = 0; i < (o.repeat ?? 1); i++) runs.push(await timedDecode(engine, o.prompt, o.newTokens));
  const [{ tokensPerSecond, gpu, tokens: n }] = runs as [DecodeRun];
  let prefill: number | null = null;
  if (o.prefill > 0) {
    const ids = promptIds(o.prefill, vocab, 3);
    const t = performance.now();
    for await (const _ of engine.generate({ ids, maxTokens: 1, minTokens: 1 })) { /* first token */ }
    prefill = o.prefill / ((performance.now() - t) / 1000);
  }
  const s = engine.stats();
  const choices = s.routedChoices - before.routedChoices;
  return {
    config,
    policy,
    precision: s.expertPrecision,
    quantizeSeconds,
    budget: budget ?? null,
    decodeTokensPerSecond: tokensPerSecond,
    prefillTokensPerSecond: prefill,
    newTokens: n,
    promptTokens: o.prompt,
    gpuBytes: s.gpuBytes,
    budgetBytes: s.budgetBytes,
    fullBytes: s.fullBytes,
    hitRate: choices > 0
      ? (s.hitRate * s.routedChoices - before.hitRate * before.routedChoices) / choices
      : 1,
    cacheHitRate: s.cacheHitRate,
    swaps: s.swaps - before.swaps,
    bytesUploaded: s.bytesUploaded - before.bytesUploaded,
    uploadSeconds: s.uploadSeconds - before.uploadSeconds,
    uploadPacing: s.uploadPacing ?? null,
    gpu,
    repeats: runs.length > 1 ? runs : undefined,
    loadSeconds,
    adapter: s.gpu.description,
  };
}

/** One timed generation: its decode rate, its steps on the GPU's clock, overall and chunk by chunk. */
export interface DecodeRun {
  tokensPerSecond: number;
  tokens: number;
  gpu: E2eRecord["gpu"];
  /** GPU milliseconds a step over each chunk's steps (one readback each), in order. */
  chunkMsPerStep: number[];
}

/**
 * Decodes `newTokens` greedy tokens after a `prompt`-token prompt. The rate counts the tokens that arrive
 * after the first chunk over the time since the first chunk (tokens come in chunks of up to 16 per
 * readback, so the first chunk's extra tokens are not timed).
 */
async function timedDecode(engine: Engine, prompt: number, newTokens: number): Promise<DecodeRun> {
  const vocab = engine.spec.vocabSize;
  const before = engine.stats().gpuTimeline;
  let first = 0;
  let last = 0;
  let n = 0;
  let timed = 0;
  const chunkMsPerStep: number[] = [];
  let mark = before;
  for await (
    const c of engine.generate({
      ids: promptIds(prompt, vocab, 1),
      maxTokens: newTokens,
      minTokens: newTokens,
    })
  ) {
    if (c.ids.length === 0) continue;
    if (n === 0) first = performance.now();
    else timed += c.ids.length;
    n += c.ids.length;
    last = performance.now();
    const now = engine.stats().gpuTimeline;
    if (mark && now && now.steps > mark.steps) {
      chunkMsPerStep.push(
        +((1e3 * (now.stepSeconds - mark.stepSeconds)) / (now.steps - mark.steps)).toFixed(3),
      );
    }
    mark = now;
  }
  if (timed === 0) {
    throw new RangeError(`--new ${newTokens}: every token came in the first chunk, nothing to time`);
  }
  const after = engine.stats().gpuTimeline;
  const gpu = before && after && after.steps > before.steps
    ? {
      msPerStep: (1e3 * (after.stepSeconds - before.stepSeconds)) / (after.steps - before.steps),
      idleMsPerBatch: after.gaps > before.gaps
        ? (1e3 * (after.gapSeconds - before.gapSeconds)) / (after.gaps - before.gaps)
        : 0,
      idleMsPerToken: (1e3 * (after.gapSeconds - before.gapSeconds)) / n,
    }
    : null;
  return { tokensPerSecond: timed / ((last - first) / 1000), tokens: n, gpu, chunkMsPerStep };
}

/** A Markdown table of records. */
export function table(rows: E2eRecord[]): string {
  const head =
    "| config | decode tok/s | prefill tok/s | GPU bytes | budget | hit rate | swaps | uploaded | load s | quantize s | GPU ms/step | GPU idle ms/token |\n" +
    "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|";
  const lines = rows.map((r) =>
    `| ${r.config} | ${r.decodeTokensPerSecond.toFixed(1)} | ${
      r.prefillTokensPerSecond?.toFixed(0) ?? "–"
    } | ${formatBytes(r.gpuBytes)} | ${formatBytes(r.budgetBytes)} | ${r.hitRate.toFixed(3)} | ${r.swaps} | ${
      formatBytes(r.bytesUploaded)
    } | ${r.loadSeconds.toFixed(1)} | ${r.quantizeSeconds.toFixed(1)} | ${
      r.gpu?.msPerStep.toFixed(2) ?? "–"
    } | ${r.gpu?.idleMsPerToken.toFixed(2) ?? "–"} |`
  );
  return [head, ...lines].join("\n");
}

if (import.meta.main) {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      model: { type: "string" },
      configs: { type: "string", default: "full,swapmoe@75%,swapmoe@50%,static@50%,lru@50%" },
      prompt: { type: "string", default: "32" },
      new: { type: "string", default: "128" },
      prefill: { type: "string", default: "512" },
      context: { type: "string", default: "1024" },
      out: { type: "string" },
      "max-upload-mib": { type: "string" },
      "batch-tokens": { type: "string" },
      repeat: { type: "string", default: "1" },
      warmup: { type: "string", default: String(WARMUP_TOKENS) },
    },
  });
  for (const [flag, least] of [["repeat", 1], ["warmup", 0]] as const) {
    const v = Number(values[flag]);
    if (!Number.isInteger(v) || v < least) {
      console.error(`--${flag} ${values[flag]}: expected a whole number of at least ${least}`);
      Deno.exit(2);
    }
  }
  const rows: E2eRecord[] = [];
  for (const config of values.configs!.split(",")) {
    const [policy] = config.split("@");
    const newTokens = Number(values.new) / (policy === "lru" ? 4 : 1);
    try {
      const r = await measure(values.model, config, {
        prompt: Number(values.prompt),
        newTokens,
        prefill: Number(values.prefill),
        context: Number(values.context),
        uploadMiB: values["max-upload-mib"] === undefined ? undefined : Number(values["max-upload-mib"]),
        batchTokens: values["batch-tokens"] === undefined ? undefined : Number(values["batch-tokens"]),
        repeat: Number(values.repeat),
        warmup: Number(values.warmup),
      });
      rows.push(r);
      console.error(JSON.stringify(r));
    } catch (e) {
      console.error(`${config}: ${(e as Error).message}`);
    }
    if (values.out) await Deno.writeTextFile(values.out, JSON.stringify(rows, null, 1));
  }
  console.log(table(rows));
}
