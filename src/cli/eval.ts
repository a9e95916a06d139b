/**
 * `eval`: perplexity of a model on a text corpus under a budget and policy, over non-overlapping
 * windows (each one `engine.forward` request, in order); `--sweep` measures every policy at budgets
 * from the minimum to all experts and writes a Markdown table and an SVG plot.
 *
 * @module
 */
import { fileURLToPath } from "node:url";
import { type EngineOptions, formatBytes, type PlannerKind } from "../../mod.ts";
import { loadModelConfig } from "../models/registry.ts";
import { CorpusError, loadCorpus, tokenizeCorpus } from "../eval/corpus.ts";
import { perplexity } from "../eval/perplexity.ts";
import { markdownTable, svgPlot } from "../eval/report.ts";
import {
  spacedWindows,
  sweep,
  SWEEP_POLICIES,
  type SweepPlan,
  sweepPlan,
  type SweepPolicy,
  type SweepResult,
} from "../eval/sweep.ts";
import { parsePrecision } from "../quant/formats.ts";
import { Tokenizer } from "../text/tokenizer.ts";
import { type Command, UsageError } from "./command.ts";
import { PROGRAM } from "./program.ts";
import {
  displayPath,
  engineOptions,
  intFlag,
  MODEL_OPTIONS,
  modelUsage,
  numberFlag,
  openEngine,
  parseFlags,
  resolveModelOption,
} from "./options.ts";
import { formatDuration, PLAIN_EVERY_MS, stepProgress, timeLeft } from "./progress.ts";

const usage = `Usage: ${PROGRAM} eval [options]

Perplexity of the model on a corpus, over non-overlapping windows of --window tokens (a partial
last window is dropped), each window one forward request, in order: a policy that adapts between
requests (swapmoe) scores window i with what it learnt from the windows before it. Each document
is tokenised with <s> first, State of the Union addresses are followed by </s>, as the bundled
model's training script did. Progress and the time left go to stderr: one line that redraws
itself on a terminal, else a line every ${PLAIN_EVERY_MS / 1000} s.

Options:
  --corpus <name|file>    sotu-test (the held-out addresses, 2012 on), sotu-train (before 2012),
                          sotu-recent (1990 to 2011), moby (Moby-Dick), or a UTF-8 text file;
                          default sotu-test
  --window <n>            Tokens per window; default 256
  --max-windows <n>       Evaluate the first n windows only; default all
  --max-batch-tokens <n>  Tokens per GPU call; default the window (one call per window)
  --json                  Print one JSON object instead

SwapMoE options (policy swapmoe; --max-upload and --profile are among the model options):
  --importance-decay <d>  Per-token decay of expert importance, in (0, 1]; default 0.97
  --update-interval <n>   Tokens between revisions of the resident set; default 16
  --planner <name>        uniform or profile (slots per layer from --profile); default uniform

Sweep (--sweep): every policy at budgets holding n of E experts per MoE layer, i.e.
fullBytes − (E − n) × layers × expertBytes (bf16 experts, the checkpoint's), at each expert
precision; the static profile comes from the unmasked router on a calibration corpus that is
not the evaluation corpus.
  --sweep                 Run the sweep instead of one evaluation
  --per-layer <list>      n per layer, comma-separated; default top-k, E/4, E/2, 3E/4, E
  --policies <list>       ${
  SWEEP_POLICIES.join(", ")
}; default all (static-planned only with --planner profile)
  --calibration <name>    The profile's corpus; default sotu-train
  --calibration-windows <n>
                          Windows evenly spaced over it; default 64
  --seed <n>              Seed of static-random; default 1
  --decode-tokens <n>     Time a greedy generate of n tokens after each run; default 32, 0 skips
  --markdown <file>       Write the table there
  --svg <file>            Write the plot there

${
  modelUsage({
    policy: "full, or swapmoe when --budget is given (not with --sweep)",
    experts: "with --sweep, a comma-separated list of precisions to compare",
  })
}`;

/** What `eval --json` prints. */
export interface EvalOutput {
  /** The model folder. */
  model: string;
  /** The corpus as named. */
  corpus: string;
  /** Where its text comes from. */
  source: string;
  perplexity: number;
  /** Mean negative log-likelihood in nats. */
  meanNll: number;
  /** Tokens scored: windows × (window − 1). */
  tokens: number;
  windows: number;
  window: number;
  policy: string;
  /** The budget in force, in bytes. */
  budget: number;
  /** Bytes held on the GPU after the run. */
  gpuBytes: number;
  /** The all-resident footprint with these options. */
  fullBytes: number;
  /** Slots per MoE layer. */
  expertSlots: number[];
  hitRate: number;
  swaps: number;
  bytesUploaded: number;
  /** Seconds of the evaluation (forward calls and loss), loading and tokenising excluded. */
  seconds: number;
}

function parseList(name: string, value: string | undefined): string[] | undefined {
  if (value === undefined) return undefined;
  const items = value.split(",").map((s) => s.trim()).filter((s) => s !== "");
  if (items.length === 0) {
    throw new UsageError(`Invalid --${name}: "${value}", expected a comma-separated list`);
  }
  return items;
}

/** Loads a corpus, turning an unknown name into a usage error. */
async function corpusOrUsage(name: string, modelDir: string | undefined) {
  try {
    return await loadCorpus(name, modelDir);
  } catch (e) {
    if (e instanceof CorpusError) throw new UsageError(e.message);
    throw e;
  }
}

const DEFAULT_MODEL = fileURLToPath(new URL("../../models/sotu-moe-mini", import.meta.url));

/** The `eval` subcommand. */
export const command: Command = {
  name: "eval",
  summary: "Perplexity on a corpus under a budget and policy; --sweep compares policies",
  usage,
  async run(args) {
    const { values } = parseFlags({
      args,
      options: {
        ...MODEL_OPTIONS,
        corpus: { type: "string" },
        window: { type: "string" },
        "max-windows": { type: "string" },
        "max-batch-tokens": { type: "string" },
        json: { type: "boolean" },
        "importance-decay": { type: "string" },
        "update-interval": { type: "string" },
        planner: { type: "string" },
        sweep: { type: "boolean" },
        "per-layer": { type: "string" },
        policies: { type: "string" },
        calibration: { type: "string" },
        "calibration-windows": { type: "string" },
        seed: { type: "string" },
        "decode-tokens": { type: "string" },
        markdown: { type: "string" },
        svg: { type: "string" },
      },
    });
    if (values.help) {
      console.log(usage);
      return 0;
    }
    const window = intFlag("window", values.window, 2, 1 << 20) ?? 256;
    const maxWindows = intFlag("max-windows", values["max-windows"], 1);
    const maxBatch = intFlag("max-batch-tokens", values["max-batch-tokens"], 1, 4096);
    const decay = numberFlag(
      "importance-decay",
      values["importance-decay"],
      (d) => d > 0 && d <= 1,
      "a number in (0, 1]",
    );
    const interval = intFlag("update-interval", values["update-interval"], 1);
    if (values.planner !== undefined && values.planner !== "uniform" && values.planner !== "profile") {
      throw new UsageError(`Invalid --planner: "${values.planner}", expected uniform or profile`);
    }
    const planner = values.planner as PlannerKind | undefined;
    // with --sweep, --experts lists the precisions to compare, read by runSweep
    const flags = values.sweep ? { ...values, experts: undefined } : values;
    const options: EngineOptions = await resolveModelOption(engineOptions(flags), !values.json);
    const modelDir = options.model ?? DEFAULT_MODEL;
    const corpusName = values.corpus ?? "sotu-test";
    if ((await loadModelConfig(modelDir)).architecture.decoderStartTokenId !== undefined) {
      throw new UsageError(
        `${modelDir} is an encoder-decoder (switch_transformers): eval measures a causal model's next-token perplexity over a corpus, which needs a causal model (mixtral, qwen2_moe, qwen3_moe, olmoe)`,
      );
    }
    if (values.sweep) return await runSweep();

    for (
      const flag of [
        "per-layer",
        "policies",
        "calibration",
        "calibration-windows",
        "seed",
        "markdown",
        "svg",
      ] as const
    ) {
      if (values[flag] !== undefined) throw new UsageError(`Option --${flag} needs --sweep`);
    }
    if (values["decode-tokens"] !== undefined) throw new UsageError("Option --decode-tokens needs --sweep");
    const corpus = await corpusOrUsage(corpusName, modelDir);
    Object.assign(options, {
      contextLength: options.contextLength ?? window,
      maxBatchTokens: maxBatch ?? Math.min(window, 4096),
    });
    if (decay !== undefined) options.importanceDecay = decay;
    if (interval !== undefined) options.updateInterval = interval;
    if (planner !== undefined) options.planner = planner;
    if (options.contextLength! < window) {
      throw new UsageError(`Invalid --context-length: ${options.contextLength}, a window needs ${window}`);
    }
    // windows one at a time: one sequence's KV caches, the rest of the budget for experts
    await using engine = await openEngine({ ...options, maxBatchSequences: 1 }, !values.json);
    return await evaluateOn(engine);

    async function evaluateOn(e: Awaited<ReturnType<typeof openEngine>>): Promise<number> {
      const need = maxWindows === undefined ? Infinity : maxWindows * window;
      const ids = tokenizeCorpus(e.tokenizer, corpus, need);
      tooFew(ids.length, window, corpus.name);
      const windows = Math.min(Math.floor(ids.length / window), maxWindows ?? Infinity);
      const progress = values.json ? undefined : stepProgress("window", windows);
      const r = await perplexity(e, ids, {
        window,
        maxWindows,
        onWindow: (i, _, p) => progress?.step(i, `perplexity ${p.toFixed(2)}`),
      });
      progress?.done();
      const s = e.stats();
      const out: EvalOutput = {
        model: e.modelDir,
        corpus: corpus.name,
        source: corpus.source,
        perplexity: r.perplexity,
        meanNll: r.meanNll,
        tokens: r.tokens,
        windows: r.windows,
        window,
        policy: s.policy,
        budget: s.budgetBytes,
        gpuBytes: s.gpuBytes,
        fullBytes: s.fullBytes,
        expertSlots: s.expertSlots,
        hitRate: s.hitRate,
        swaps: s.swaps,
        bytesUploaded: s.bytesUploaded,
        seconds: r.seconds,
      };
      if (values.json) console.log(JSON.stringify(out));
      else {
        console.log(
          `perplexity ${
            r.perplexity.toFixed(3)
          } on ${corpus.name} (${r.windows} windows of ${window}, ${r.tokens} tokens scored) in ${
            r.seconds.toFixed(1)
          } s`,
        );
        console.log(
          `policy ${s.policy} · GPU ${formatBytes(s.gpuBytes)} of ${
            formatBytes(s.budgetBytes)
          } budget (all-resident ${formatBytes(s.fullBytes)}) · experts per layer ${
            s.expertSlots.join(" ")
          } · hit rate ${(100 * s.hitRate).toFixed(1)}% · swaps ${s.swaps} · uploaded ${
            formatBytes(s.bytesUploaded)
          }`,
        );
      }
      return 0;
    }

    async function runSweep(): Promise<number> {
      if (values.policy !== undefined) throw new UsageError("Option --policy does not apply to --sweep");
      // --experts is the sweep's list of precisions here, read below
      if (values.budget !== undefined) throw new UsageError("Option --budget does not apply to --sweep");
      if (values.profile !== undefined) throw new UsageError("Option --profile does not apply to --sweep");
      if (values["context-length"] !== undefined) {
        throw new UsageError("Option --context-length does not apply to --sweep (the window sets it)");
      }
      const experts = parseList("per-layer", values["per-layer"])?.map((s) => {
        const n = intFlag("per-layer", s, 1);
        return n!;
      });
      const precisions = parseList("experts", values.experts)?.map((p) => {
        try {
          return parsePrecision(p).join("+"); // the syntax here; against the checkpoint below
        } catch (e) {
          throw new UsageError((e as Error).message.replace(/^Invalid expertPrecision/, "Invalid --experts"));
        }
      });
      const policies = parseList("policies", values.policies)?.map((p) => {
        if (!(SWEEP_POLICIES as readonly string[]).includes(p)) {
          throw new UsageError(`Invalid --policies: "${p}", expected some of ${SWEEP_POLICIES.join(", ")}`);
        }
        return p as Exclude<SweepPolicy, "full">;
      });
      const calibrationName = values.calibration ?? "sotu-train";
      if (calibrationName === corpusName) {
        throw new UsageError(`Invalid --calibration: "${calibrationName}" is the evaluation corpus`);
      }
      const calibrationWindows = intFlag("calibration-windows", values["calibration-windows"], 1) ?? 64;
      const { spec, nativePrecision } = (await loadModelConfig(modelDir)).architecture;
      for (const p of precisions ?? []) {
        try {
          parsePrecision(p, nativePrecision);
        } catch (e) {
          throw new UsageError((e as Error).message.replace(/^Invalid expertPrecision/, "Invalid --experts"));
        }
      }
      let plan: SweepPlan;
      try {
        plan = sweepPlan(
          { experts, policies, precisions, swapmoe: { planner } },
          spec.numExperts,
          spec.topK,
          nativePrecision,
        );
      } catch (e) {
        if (e instanceof RangeError) {
          throw new UsageError(e.message.replace(/^Invalid experts per layer/, "Invalid --per-layer"));
        }
        throw e;
      }
      const seed = intFlag("seed", values.seed, 0) ?? 1;
      const decodeTokens = intFlag("decode-tokens", values["decode-tokens"], 0) ?? 32;
      const log = (m: string) => {
        if (!values.json) console.error(m);
      };
      const tokenizer = await Tokenizer.load(modelDir);
      const corpus = await corpusOrUsage(corpusName, modelDir);
      const calibration = await corpusOrUsage(calibrationName, modelDir);
      log(`corpus ${corpus.source}; calibration ${calibration.source}; ${plan.runs} runs`);
      const start = performance.now();
      let rows = 0;
      const ids = tokenizeCorpus(
        tokenizer,
        corpus,
        maxWindows === undefined ? Infinity : maxWindows * window,
      );
      tooFew(ids.length, window, corpus.name);
      const calibrationIds = spacedWindows(
        tokenizeCorpus(tokenizer, calibration),
        window,
        calibrationWindows,
      );
      const result = await sweep({
        model: options.model,
        ids,
        calibrationIds,
        window,
        maxWindows,
        calibrationWindows,
        experts,
        policies,
        precisions,
        seed,
        maxBatchTokens: maxBatch,
        decodeTokens,
        swapmoe: {
          importanceDecay: decay,
          updateInterval: interval,
          maxUploadBytesPerStep: options.maxUploadBytesPerStep,
          planner,
        },
        log,
        onRow: (r) => {
          rows++;
          const elapsed = (performance.now() - start) / 1000;
          const left = timeLeft(rows, plan.runs, elapsed);
          log(
            `  ${r.policy} ${r.precision} ${r.experts}/${r.ofExperts}: perplexity ${
              r.perplexity.toFixed(2)
            } (×${r.ratio.toFixed(3)}), ${formatBytes(r.gpuBytes)}, hit rate ${
              (100 * r.hitRate).toFixed(1)
            }%, ${r.swaps} swaps` +
              ` · run ${rows}/${plan.runs}, ${formatDuration(elapsed)}` +
              (rows < plan.runs && left !== undefined ? `, about ${formatDuration(left)} left` : ""),
          );
        },
      });
      const title = `${displayPath(modelDir)} on ${corpus.name}: ${result.windows} windows of ${window}`;
      if (values.markdown) await Deno.writeTextFile(values.markdown, markdownTable(result.rows) + "\n");
      if (values.svg) await Deno.writeTextFile(values.svg, svgPlot(result, title));
      if (values.json) console.log(JSON.stringify(sweepOutput(result, corpus.name, calibrationName)));
      else console.log(`${title}\n\n${markdownTable(result.rows)}`);
      return 0;
    }
  },
};

/** What `eval --sweep --json` prints. */
export interface SweepOutput extends SweepResult {
  corpus: string;
  calibration: string;
}

function sweepOutput(result: SweepResult, corpus: string, calibration: string): SweepOutput {
  return { ...result, corpus, calibration };
}

/** A corpus shorter than one window is a usage error. */
function tooFew(tokens: number, window: number, corpus: string): void {
  if (tokens < window) {
    throw new UsageError(`Too few tokens: ${corpus} has ${tokens}, one window needs ${window} (--window)`);
  }
}
