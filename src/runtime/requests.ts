/**
 * Validation shared by every engine: options before any work, requests before any GPU call, and the
 * prompt and sampler settings a request resolves to.
 *
 * @module
 */
import type { GenerationDefaults } from "../checkpoint/generation_config.ts";
import { OptionError } from "../errors.ts";
import type { SamplingParams } from "../kernels/sample.ts";
import { FAMILY_OPTION_KEYS } from "../models/registry.ts";
import { parseBudget } from "../moe/budget.ts";
import { POLICIES } from "../moe/policies.ts";
import { parsePrecision } from "../quant/formats.ts";
import { chatMessageFault, type Tokenizer } from "../text/tokenizer.ts";
import type { EngineOptions, GenerateRequest } from "./types.ts";

/** An integer in [1, max], or an OptionError naming the option. */
export function positiveInt(name: string, v: unknown, max = Number.MAX_SAFE_INTEGER): number {
  if (typeof v !== "number" || !Number.isSafeInteger(v) || v < 1 || v > max) {
    throw new OptionError(`Invalid ${name}: ${JSON.stringify(v)}, expected an integer in [1, ${max}]`);
  }
  return v;
}

/** The most sequences an engine decodes together (`maxBatchSequences`). */
export const MAX_SEQUENCES = 1024;

/** The options every model takes; a family may add its own ({@link FAMILY_OPTION_KEYS}). */
export const OPTION_KEYS = [
  "model",
  "policy",
  "residentExperts",
  "budget",
  "contextLength",
  "maxBatchTokens",
  "maxBatchSequences",
  "planner",
  "profile",
  "updateInterval",
  "maxUploadBytesPerStep",
  "importanceDecay",
  "expertPrecision",
  "onProgress",
] as const;

/** Validates engine options before any work (a family checks its own once the model is known). */
export function validateOptions(o: EngineOptions): void {
  if (typeof o !== "object" || o === null || Array.isArray(o)) {
    throw new OptionError(`Invalid options: expected an object, got ${JSON.stringify(o)}`);
  }
  const known = new Set<string>([...OPTION_KEYS, ...FAMILY_OPTION_KEYS]);
  for (const k of Object.keys(o)) {
    if (!known.has(k)) throw new OptionError(`Unknown option: "${k}", known are ${[...known].join(", ")}`);
  }
  if (o.model !== undefined && (typeof o.model !== "string" || o.model === "")) {
    throw new OptionError(`Invalid model: ${JSON.stringify(o.model)}, expected a folder path`);
  }
  if (o.policy !== undefined && !POLICIES.includes(o.policy)) {
    throw new OptionError(
      `Invalid policy: ${JSON.stringify(o.policy)}, expected one of ${POLICIES.join(", ")}`,
    );
  }
  if (o.residentExperts !== undefined && o.policy !== "static") {
    throw new OptionError(`Invalid residentExperts: only policy "static" takes a fixed resident set`);
  }
  if (o.planner !== undefined && o.planner !== "uniform" && o.planner !== "profile") {
    throw new OptionError(`Invalid planner: ${JSON.stringify(o.planner)}, expected "uniform" or "profile"`);
  }
  if (o.planner === "profile" && !o.profile) {
    throw new OptionError(`Invalid planner: "profile" needs a profile`);
  }
  if (o.contextLength !== undefined) positiveInt("contextLength", o.contextLength, 1 << 20);
  if (o.maxBatchTokens !== undefined) positiveInt("maxBatchTokens", o.maxBatchTokens, 4096);
  if (o.maxBatchSequences !== undefined) positiveInt("maxBatchSequences", o.maxBatchSequences, MAX_SEQUENCES);
  if (o.updateInterval !== undefined) positiveInt("updateInterval", o.updateInterval);
  if (o.maxUploadBytesPerStep !== undefined) positiveInt("maxUploadBytesPerStep", o.maxUploadBytesPerStep);
  if (
    o.importanceDecay !== undefined &&
    (typeof o.importanceDecay !== "number" || !(o.importanceDecay > 0 && o.importanceDecay <= 1))
  ) {
    throw new OptionError(`Invalid importanceDecay: ${o.importanceDecay}, expected a number in (0, 1]`);
  }
  // the syntax now; a percentage resolves once the footprint is known
  if (o.budget !== undefined) parseBudget(o.budget, 0);
  if (o.profile !== undefined && (!Array.isArray(o.profile) || !o.profile.every((r) => Array.isArray(r)))) {
    throw new OptionError("Invalid profile: expected one list of importance numbers per MoE layer");
  }
  // one precision or a pair; which this model's experts take is checked once its config is read
  if (o.expertPrecision !== undefined) parsePrecision(o.expertPrecision);
  if (o.onProgress !== undefined && typeof o.onProgress !== "function") {
    throw new OptionError("Invalid onProgress: expected a function");
  }
}

/** Every field of a {@link GenerateRequest}; the type keeps this list complete. */
export const REQUEST_FIELDS: Record<keyof GenerateRequest, true> = {
  ids: true,
  prompt: true,
  messages: true,
  maxTokens: true,
  temperature: true,
  topK: true,
  topP: true,
  seed: true,
  minTokens: true,
  stop: true,
  signal: true,
};

/** Validates a request object's fields (their values are checked where they are used). */
export function validateRequest(r: GenerateRequest): void {
  if (typeof r !== "object" || r === null || Array.isArray(r)) {
    throw new OptionError(`Invalid request: expected an object, got ${JSON.stringify(r)}`);
  }
  for (const k of Object.keys(r)) {
    if (!Object.hasOwn(REQUEST_FIELDS, k)) {
      throw new OptionError(
        `Unknown request field: "${k}", known are ${Object.keys(REQUEST_FIELDS).join(", ")}`,
      );
    }
  }
  if (r.ids !== undefined && !Array.isArray(r.ids)) {
    throw new OptionError("Invalid ids: expected a non-empty array of token ids");
  }
  if (r.messages !== undefined && !Array.isArray(r.messages)) {
    throw new OptionError("Invalid messages: expected a list of {role, content} messages");
  }
  r.messages?.forEach((m, i) => {
    const fault = chatMessageFault(m, i);
    if (fault) throw new OptionError(fault.message);
  });
  if (r.signal !== undefined && !(r.signal instanceof AbortSignal)) {
    throw new OptionError("Invalid signal: expected an AbortSignal");
  }
}

/**
 * Checks `residentExperts` (each MoE layer's set, at least `topK` experts) and `profile` (`layers`
 * rows of `experts` non-negative numbers) against the model; returns the resident sets, deduplicated
 * and sorted.
 */
export function checkExpertOptions(
  options: Pick<EngineOptions, "residentExperts" | "profile">,
  layers: number,
  experts: number,
  topK: number,
  routers = "one per MoE layer",
): number[][] | undefined {
  const sets = options.residentExperts
    ? validateExpertSets("residentExperts", options.residentExperts, layers, experts, topK, routers)
    : undefined;
  const profile = options.profile;
  if (profile) {
    validateExpertSets("profile", profile.map((r) => r.map((_, i) => i)), layers, experts, 0, routers);
    if (!profile.every((r) => r.length === experts && r.every((v) => Number.isFinite(v) && v >= 0))) {
      throw new OptionError(`Invalid profile: expected ${layers} rows of ${experts} non-negative numbers`);
    }
  }
  return sets;
}

/**
 * Validates per-router expert lists (`residentExperts`, a profile's shape): one list per router, ids
 * in range, at least `minEach` distinct; returns them deduplicated and sorted.
 */
export function validateExpertSets(
  name: string,
  sets: unknown,
  layers: number,
  experts: number,
  minEach: number,
  routers = "one per MoE layer",
): number[][] {
  if (!Array.isArray(sets) || sets.length !== layers) {
    throw new OptionError(
      `Invalid ${name}: expected ${layers} lists (${routers}), got ${
        Array.isArray(sets) ? sets.length : typeof sets
      }`,
    );
  }
  return sets.map((s, l) => {
    if (!Array.isArray(s) || !s.every((e) => Number.isSafeInteger(e) && e >= 0 && e < experts)) {
      throw new OptionError(`Invalid ${name}[${l}]: expected expert ids in [0, ${experts})`);
    }
    const u = [...new Set(s as number[])].sort((a, b) => a - b);
    if (u.length < minEach) {
      throw new OptionError(
        `Invalid ${name}[${l}]: ${u.length} experts, at least top-k = ${minEach} are needed`,
      );
    }
    return u;
  });
}

/** The prompt's token ids: given, encoded, or the chat template rendered and encoded. */
export function promptIds(tokenizer: Tokenizer, r: GenerateRequest): number[] {
  const p = promptOf(r);
  if (p.ids) return [...p.ids];
  if (p.prompt !== undefined) return tokenizer.encode(p.prompt);
  // the template writes its own special tokens; those typed into messages are text
  return tokenizer.encodeChat(p.messages!, { addGenerationPrompt: true });
}

/**
 * {@link promptIds} that keeps the event loop free: a long prompt is tokenized on the tokenizer's
 * thread ({@link Tokenizer.encodeOffThread}), to the same ids.
 * @throws {OptionError} (as a rejection) for what {@link promptIds} refuses
 */
export async function promptIdsOffThread(tokenizer: Tokenizer, r: GenerateRequest): Promise<number[]> {
  const p = promptOf(r);
  if (p.ids) return [...p.ids];
  if (p.prompt !== undefined) return await tokenizer.encodeOffThread(p.prompt);
  return await tokenizer.encodeChatOffThread(p.messages!, { addGenerationPrompt: true });
}

/** The one prompt of `r`, validated. */
function promptOf(r: GenerateRequest): Pick<GenerateRequest, "ids" | "prompt" | "messages"> {
  validateRequest(r);
  const given = [r.ids, r.prompt, r.messages].filter((x) => x !== undefined).length;
  if (given !== 1) throw new OptionError("Invalid request: give exactly one of ids, prompt, messages");
  if (r.prompt !== undefined && typeof r.prompt !== "string") {
    throw new OptionError("Invalid prompt: expected a string");
  }
  return r;
}

/**
 * A request's sampler settings, token limit and stop strings, validated; `eos` end generation, and
 * `defaults` (the checkpoint's generation_config.json) fill in what the request leaves out.
 */
export function parseGeneration(
  r: GenerateRequest,
  vocab: number,
  eos: ReadonlySet<number>,
  defaults: GenerationDefaults = {},
): { sampling: SamplingParams; maxTokens: number; stop: string[] } {
  const maxTokens = r.maxTokens ?? 128;
  if (!Number.isSafeInteger(maxTokens) || maxTokens < 1) {
    throw new OptionError(`Invalid maxTokens: ${maxTokens}, expected an integer >= 1`);
  }
  const stop = r.stop ?? [];
  if (!Array.isArray(stop) || !stop.every((s) => typeof s === "string" && s.length > 0)) {
    throw new OptionError("Invalid stop: expected a list of non-empty strings");
  }
  return { sampling: parseSampling(r, vocab, eos, defaults), maxTokens, stop };
}

/**
 * The sampler's settings from a request, validated; `eos` are the ids that end generation. Without
 * `minTokens`, the checkpoint's `min_new_tokens` applies (`defaults`), else 0.
 */
export function parseSampling(
  r: GenerateRequest,
  vocab: number,
  eos: ReadonlySet<number>,
  defaults: GenerationDefaults = {},
): SamplingParams {
  const temperature = r.temperature ?? 0;
  const topK = r.topK ?? 0;
  const topP = r.topP ?? 1;
  if (typeof temperature !== "number" || !(temperature >= 0 && temperature <= 100)) {
    throw new OptionError(`Invalid temperature: ${temperature}, expected a number in [0, 100]`);
  }
  if (!Number.isSafeInteger(topK) || topK < 0) {
    throw new OptionError(`Invalid topK: ${topK}, expected an integer >= 0`);
  }
  if (typeof topP !== "number" || !(topP > 0 && topP <= 1)) {
    throw new OptionError(`Invalid topP: ${topP}, expected a number in (0, 1]`);
  }
  const seed = r.seed ?? Math.floor(Math.random() * 2 ** 32);
  if (!Number.isSafeInteger(seed) || seed < 0) {
    throw new OptionError(`Invalid seed: ${seed}, expected an integer >= 0`);
  }
  const minTokens = r.minTokens ?? defaults.minTokens ?? 0;
  if (!Number.isSafeInteger(minTokens) || minTokens < 0) {
    throw new OptionError(`Invalid minTokens: ${minTokens}, expected an integer >= 0`);
  }
  return { temperature, topK: Math.min(topK, vocab), topP, seed, minTokens, eos: [...eos].slice(0, 4) };
}
