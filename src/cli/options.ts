/**
 * What the subcommands share: strict flag parsing with one-line usage errors, the model options
 * (`--model`, `--budget`, `--policy`, `--context-length`) and the sampling options, opening an engine
 * behind a progress bar, and the run summary.
 *
 * @module
 */
import { relative } from "node:path";
import { parseArgs, type ParseArgsConfig } from "node:util";
import {
  type Budget,
  createEngine,
  type Engine,
  type EngineOptions,
  type EngineStats,
  formatBytes,
  type GenerateRequest,
  OptionError,
  parseBudget,
  POLICIES,
  type PolicyName,
} from "../../mod.ts";
import { describeSpec } from "../models/registry.ts";
import { parseSize } from "../moe/budget.ts";
import { parsePrecision } from "../quant/formats.ts";
import { parseModelName } from "../hub/mod.ts";
import { resolveWithProgress } from "./hub_progress.ts";
import { UsageError } from "./command.ts";
import { loadProgress } from "./progress.ts";
import { closest } from "./suggest.ts";

/** Parses `config.args` strictly; a bad flag becomes a {@link UsageError} with a one-line message. */
export function parseFlags<T extends ParseArgsConfig & { args: string[] }>(
  config: T,
): ReturnType<typeof parseArgs<T>> {
  const args = joinDashedValues(config.args, config.options ?? {});
  try {
    return parseArgs({ ...config, args, strict: true }) as ReturnType<typeof parseArgs<T>>;
  } catch (e) {
    throw new UsageError(flagErrorMessage(e, Object.keys(config.options ?? {})));
  }
}

/** `--max-tokens -5` → `--max-tokens=-5`: a negative number after a string flag is its value, not a flag. */
function joinDashedValues(args: string[], options: NonNullable<ParseArgsConfig["options"]>): string[] {
  const takesValue = (arg: string): boolean => {
    const long = /^--([^=]+)$/.exec(arg)?.[1];
    if (long !== undefined) return options[long]?.type === "string";
    const short = /^-([^-])$/.exec(arg)?.[1];
    return short !== undefined &&
      Object.values(options).some((o) => o.short === short && o.type === "string");
  };
  const out: string[] = [];
  for (let i = 0; i < args.length; i++) {
    const a = args[i]!;
    const next = args[i + 1];
    if (a === "--") {
      out.push(...args.slice(i));
      break;
    }
    if (next !== undefined && /^-\d/.test(next) && takesValue(a)) {
      out.push(`${a}=${next}`);
      i++;
    } else out.push(a);
  }
  return out;
}

/** node:util's parse errors, as one capitalised line; an unknown flag gets the closest of `known`. */
function flagErrorMessage(e: unknown, known: string[]): string {
  const code = (e as { code?: string }).code;
  const message = e instanceof Error ? e.message : String(e);
  const quoted = /'([^']*)'/.exec(message)?.[1] ?? "";
  const flag = quoted.replace(/ <value>$/, "").replace(/^-\w, /, "");
  switch (code) {
    case "ERR_PARSE_ARGS_UNKNOWN_OPTION": {
      const hit = flag.startsWith("--") ? closest(flag.slice(2), known) : undefined;
      return `Unknown option: ${flag}${hit === undefined ? "" : ` (did you mean --${hit}?)`}`;
    }
    case "ERR_PARSE_ARGS_UNEXPECTED_POSITIONAL":
      return `Unexpected argument: "${flag}", this command takes none`;
    case "ERR_PARSE_ARGS_INVALID_OPTION_VALUE":
      if (message.includes("does not take an argument")) return `Option ${flag} takes no value`;
      return `Option ${flag} needs a value`;
    default:
      return message.split("\n")[0]!;
  }
}

/** An integer flag value in [min, max]; `undefined` when the flag was not given. */
export function intFlag(
  name: string,
  value: string | undefined,
  min: number,
  max = Number.MAX_SAFE_INTEGER,
): number | undefined {
  if (value === undefined) return undefined;
  const n = Number(value);
  if (!/^[+-]?\d+$/.test(value.trim()) || !Number.isSafeInteger(n) || n < min || n > max) {
    const range = max === Number.MAX_SAFE_INTEGER ? `>= ${min}` : `in [${min}, ${max}]`;
    throw new UsageError(`Invalid --${name}: "${value}", expected an integer ${range}`);
  }
  return n;
}

/** A number flag value accepted by `ok` (described by `expected`); `undefined` when not given. */
export function numberFlag(
  name: string,
  value: string | undefined,
  ok: (n: number) => boolean,
  expected: string,
): number | undefined {
  if (value === undefined) return undefined;
  const n = Number(value);
  if (value.trim() === "" || !Number.isFinite(n) || !ok(n)) {
    throw new UsageError(`Invalid --${name}: "${value}", expected ${expected}`);
  }
  return n;
}

/** The model options every engine-loading command takes. */
export const MODEL_OPTIONS = {
  model: { type: "string" },
  budget: { type: "string" },
  policy: { type: "string" },
  "context-length": { type: "string" },
  profile: { type: "string" },
  "max-upload": { type: "string" },
  experts: { type: "string" },
  help: { type: "boolean", short: "h" },
} as const;

/** Help text of {@link MODEL_OPTIONS}; `defaults` overrides the shown defaults of a command. */
export function modelUsage(
  defaults: { budget?: string; policy?: string; contextLength?: string; profile?: string; experts?: string } =
    {},
): string {
  return `Model options:
  --model <dir>           A Hugging Face checkpoint folder (config.json, *.safetensors,
                          tokenizer.json), or org/name[@revision] on the hub, downloaded
                          once into its cache (see pull); default: the bundled
                          models/sotu-moe-mini
  --budget <size>         GPU memory budget: bytes, 512MiB, 2GiB or a share of the
                          all-resident footprint such as 60%; default: ${
    defaults.budget ?? "all of it under full,\n                          else 50% (at least the minimum)"
  }
  --policy <name>         Expert residency: ${POLICIES.join(", ")}; default: ${
    defaults.policy ?? "full,\n                          or swapmoe when --budget is given"
  }
  --context-length <n>    Positions the KV cache holds; default: ${
    defaults.contextLength ?? "the model's, at most 4096"
  }
  --profile <file>        An expert-usage profile (JSON: {"usage": [[…], …]}, one row per
                          MoE layer, as bench/expert_profile.ts writes): static keeps its
                          top experts, swapmoe starts from them${
    defaults.profile ? `; default: ${defaults.profile}` : ""
  }
  --max-upload <size>     swapmoe: a fixed cap on expert bytes uploaded per decode step,
                          such as 12MiB (info prints an expert's size); default: paced
                          to what the steps can hide
  --experts <precision>   The experts' precision on the GPU: bf16 (as stored), int8, int4,
                          or a high+low pair (swapmoe, static) such as bf16+int4 or
                          int8+int4; quantized once into $SWAPMOE_CACHE; default: as
                          stored (bf16; gpt-oss: mxfp4, its only precision)${
    defaults.experts ? `;\n                          ${defaults.experts}` : ""
  }
  -h, --help              Show this help`;
}

/** Values of {@link MODEL_OPTIONS} as parsed. */
export interface ModelFlags {
  model?: string;
  budget?: string;
  policy?: string;
  "context-length"?: string;
  profile?: string;
  "max-upload"?: string;
  experts?: string;
}

/** Reads an expert-usage profile: `{"usage": number[][]}` or the bare rows (the engine checks their shape). */
export function readProfile(file: string): number[][] {
  let json: unknown;
  try {
    json = JSON.parse(Deno.readTextFileSync(file));
  } catch (e) {
    throw new UsageError(`Invalid --profile: cannot read ${file} as JSON (${(e as Error).message})`);
  }
  const rows = Array.isArray(json) ? json : (json as { usage?: unknown } | null)?.usage;
  if (!Array.isArray(rows) || !rows.every((r) => Array.isArray(r) && r.every((v) => typeof v === "number"))) {
    throw new UsageError(`Invalid --profile: ${file} holds no "usage" rows of numbers, one per MoE layer`);
  }
  return rows as number[][];
}

/** Validates the model flags before anything is loaded; `defaults` fill what was not given. */
export function engineOptions(flags: ModelFlags, defaults: EngineOptions = {}): EngineOptions {
  const options: EngineOptions = { ...defaults };
  if (flags.model !== undefined) {
    let info: Deno.FileInfo | undefined;
    try {
      info = Deno.statSync(flags.model);
    } catch {
      // no such folder: a name on the hub (org/name[@revision]), fetched by openEngine
      if (parseModelName(flags.model) === undefined) {
        throw new UsageError(
          `Model folder not found: ${flags.model}; a model on the Hugging Face hub is named org/name[@revision]`,
        );
      }
    }
    if (info !== undefined && !info.isDirectory) {
      throw new UsageError(`Invalid --model: ${flags.model} is not a folder`);
    }
    options.model = flags.model;
  }
  if (flags.policy !== undefined) {
    if (!(POLICIES as readonly string[]).includes(flags.policy)) {
      throw new UsageError(`Invalid --policy: "${flags.policy}", expected one of ${POLICIES.join(", ")}`);
    }
    options.policy = flags.policy as PolicyName;
  }
  if (flags.budget !== undefined) {
    try {
      // the syntax only: a percentage needs the footprint, which the engine knows
      parseBudget(flags.budget, 1);
    } catch (e) {
      if (e instanceof OptionError) {
        throw new UsageError(e.message.replace(/^Invalid budget/, "Invalid --budget"));
      }
      throw e;
    }
    options.budget = flags.budget;
    // a budget is for a policy that holds less than every expert: --budget alone selects swapmoe
    if (flags.policy === undefined) options.policy = "swapmoe";
  }
  const contextLength = intFlag("context-length", flags["context-length"], 1);
  if (contextLength !== undefined) options.contextLength = contextLength;
  if (flags.profile !== undefined) options.profile = readProfile(flags.profile);
  if (flags.experts !== undefined) {
    try {
      // the syntax only: which precisions a model's experts take is known once its config is read
      parsePrecision(flags.experts);
    } catch (e) {
      if (e instanceof OptionError) {
        throw new UsageError(e.message.replace(/^Invalid expertPrecision/, "Invalid --experts"));
      }
      throw e;
    }
    options.expertPrecision = flags.experts;
  }
  if (flags["max-upload"] !== undefined) {
    try {
      options.maxUploadBytesPerStep = parseSize(flags["max-upload"], "--max-upload");
    } catch (e) {
      if (e instanceof OptionError) throw new UsageError(e.message);
      throw e;
    }
  }
  return options;
}

/**
 * The model options of `demo` and `serve`, which show SwapMoE at work: `swapmoe` unless `--policy`
 * says otherwise, and `budget` for a policy that takes one (`full` holds every expert, so it gets
 * its whole footprint).
 */
export function budgetedOptions(
  flags: ModelFlags,
  budget: Budget,
  defaults: EngineOptions = {},
): EngineOptions {
  const options = engineOptions(flags, { policy: "swapmoe", ...defaults });
  if (options.policy !== "full" && options.budget === undefined) options.budget = budget;
  return options;
}

/** The sampling options of `generate` and `chat`. */
export const SAMPLING_OPTIONS = {
  "max-tokens": { type: "string" },
  "min-tokens": { type: "string" },
  temperature: { type: "string" },
  "top-p": { type: "string" },
  "top-k": { type: "string" },
  seed: { type: "string" },
  stop: { type: "string", multiple: true },
} as const;

/** Help text of {@link SAMPLING_OPTIONS}. */
export function samplingUsage(maxTokens: number): string {
  return `Sampling options:
  --max-tokens <n>        Most new tokens; default ${maxTokens}
  --min-tokens <n>        End of text cannot come before this many new tokens; default the
                          model's generation_config.json min_new_tokens, else 0
  --temperature <t>       0 is greedy (default); higher samples more freely, at most 100
  --top-p <p>             Nucleus sampling, in (0, 1]; default 1 (off)
  --top-k <k>             Sample among the k most likely tokens; default 0 (off)
  --seed <n>              Seed of the sampler, an integer >= 0; default random
  --stop <text>           End generation at this text (not printed); repeatable`;
}

/** Values of {@link SAMPLING_OPTIONS} as parsed. */
export interface SamplingFlags {
  "max-tokens"?: string;
  "min-tokens"?: string;
  temperature?: string;
  "top-p"?: string;
  "top-k"?: string;
  seed?: string;
  stop?: string[];
}

/** The request fields of the sampling flags, validated. */
export function samplingRequest(flags: SamplingFlags, maxTokens: number): GenerateRequest {
  const request: GenerateRequest = {
    maxTokens: intFlag("max-tokens", flags["max-tokens"], 1) ?? maxTokens,
    minTokens: intFlag("min-tokens", flags["min-tokens"], 0),
    temperature: numberFlag(
      "temperature",
      flags.temperature,
      (t) => t >= 0 && t <= 100,
      "a number in [0, 100]",
    ),
    topP: numberFlag("top-p", flags["top-p"], (p) => p > 0 && p <= 1, "a number in (0, 1]"),
    topK: intFlag("top-k", flags["top-k"], 0),
    seed: intFlag("seed", flags.seed, 0),
  };
  if (flags.stop !== undefined) {
    if (flags.stop.some((s) => s === "")) throw new UsageError("Invalid --stop: expected non-empty text");
    request.stop = flags.stop;
  }
  for (const k of Object.keys(request) as (keyof GenerateRequest)[]) {
    if (request[k] === undefined) delete request[k];
  }
  return request;
}

/**
 * Positions the engine's KV cache holds: `contextLength` when given, else the model's
 * `max_position_embeddings` capped as the engine caps it.
 */
export function contextLengthOf(engine: Engine, options: EngineOptions): number {
  return options.contextLength ?? Math.min(engine.spec.maxPositionEmbeddings, 4096);
}

/** Whether to draw terminal niceties (bold prompts, REPL prompts): stdout and stderr are both terminals. */
export function isInteractive(): boolean {
  return Deno.stdout.isTerminal() && Deno.stderr.isTerminal();
}

/**
 * `options` with a model named `org/name[@revision]` replaced by its folder in the hub cache, downloaded
 * first when missing (a byte progress bar on stderr when `progress` and interactive); a folder stays as is.
 * For commands that read the model folder themselves before {@link openEngine}.
 */
export async function resolveModelOption(options: EngineOptions, progress: boolean): Promise<EngineOptions> {
  if (options.model === undefined) return options;
  const { dir } = await resolveWithProgress(options.model, { interactive: progress && isInteractive() });
  return { ...options, model: dir };
}

/**
 * Creates an engine, drawing a progress bar on stderr while it loads when `progress` is set and
 * stderr is a terminal. A model named `org/name[@revision]` is first fetched from the Hugging Face
 * hub, or found in its cache.
 */
export async function openEngine(options: EngineOptions, progress: boolean): Promise<Engine> {
  // a model named org/name[@revision]: fetched (or found in the hub cache) with its own byte bar
  options = await resolveModelOption(options, progress);
  if (!progress) return await createEngine(options);
  const bar = loadProgress();
  try {
    return await createEngine({ ...options, onProgress: bar.onProgress });
  } finally {
    bar.done();
  }
}

/** A model folder as people read it: relative to the working directory when inside it. */
export function displayPath(dir: string): string {
  const rel = relative(Deno.cwd(), dir);
  return rel !== "" && !rel.startsWith("..") ? rel : dir;
}

/** One line about the model and the adapter. */
export function describeModel(engine: Engine): string {
  return `${displayPath(engine.modelDir)} (${
    describeSpec(engine.spec)
  }) on ${engine.stats().gpu.description}`;
}

const rate = (n: number): string => (n >= 100 ? n.toFixed(0) : n.toFixed(1));
const percent = (x: number): string => `${(100 * x).toFixed(1)}%`;

/** The run summary: speed, bytes held against the budget, resident experts, hit rate and swaps. */
export function summaryLines(engine: Engine, stats: EngineStats = engine.stats()): string[] {
  const E = engine.spec.numExperts;
  const resident = stats.residentExperts.map((r) => `${r.length}/${E}`).join(" ");
  // lru routes exactly (hit rate 1) and loads on a miss: its cache hit rate is the telling figure
  const cache = stats.policy === "lru" ? ` · cache hits ${percent(stats.cacheHitRate)}` : "";
  return [
    `prefill ${rate(stats.prefillTokensPerSecond)} tok/s (${stats.prefillTokens} tokens) · decode ${
      rate(stats.decodeTokensPerSecond)
    } tok/s (${stats.decodeTokens} tokens)`,
    `GPU ${formatBytes(stats.gpuBytes)} held of ${formatBytes(stats.budgetBytes)} budget (all-resident ${
      formatBytes(stats.fullBytes)
    }, minimum ${formatBytes(stats.minimumBudgetBytes)}) · policy ${stats.policy}`,
    `resident experts per layer ${resident} · hit rate ${
      percent(stats.hitRate)
    }${cache} · swaps ${stats.swaps} · uploaded ${formatBytes(stats.bytesUploaded)}`,
  ];
}

const encoder = new TextEncoder();

/** Writes `text` to stdout in full (no newline added). */
export async function writeOut(text: string): Promise<void> {
  let bytes = encoder.encode(text);
  while (bytes.length > 0) bytes = bytes.subarray(await Deno.stdout.write(bytes));
}
