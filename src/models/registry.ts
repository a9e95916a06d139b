/**
 * The model families the engine runs, by `model_type`. Adding a family is a folder under
 * `src/models/` exporting a {@link Family}, and one line in {@link FAMILIES}.
 *
 * @module
 */
import { readConfigJson } from "../checkpoint/config.ts";
import { readGenerationEos } from "../checkpoint/generation_config.ts";
import { ConfigError } from "../errors.ts";
import type { Architecture, Family } from "./family.ts";
import { causalFamily } from "./causal/family.ts";
import { switchFamily } from "./switch/family.ts";
import { gptOssFamily } from "./gpt_oss/family.ts";
import type { CausalSpec } from "./causal/config.ts";
import type { SwitchSpec } from "./switch/config.ts";
import type { GptOssSpec } from "./gpt_oss/config.ts";

/** Every family, one line each. */
export const FAMILIES = [
  causalFamily,
  switchFamily,
  gptOssFamily,
] as const;

/** The constants of a model of any family: a union over {@link FAMILIES}, told apart by `modelType`. */
export type ModelSpec = CausalSpec | SwitchSpec | GptOssSpec;

// Written out for the documentation (a type derived from FAMILIES is private to it); a family added
// to FAMILIES without its spec above stops the build here.
type FamilySpec = ReturnType<(typeof FAMILIES)[number]["architecture"]>["spec"];
const _specsMatch: [FamilySpec, ModelSpec] extends [ModelSpec, FamilySpec] ? true : never = true;

/** Every `model_type` the engine accepts. */
export const SUPPORTED_MODEL_TYPES: readonly string[] = FAMILIES.flatMap((f) => f.modelTypes);

/** Engine options some family takes (the union of their {@link Family.optionKeys}). */
export const FAMILY_OPTION_KEYS: readonly string[] = FAMILIES.flatMap((f) => f.optionKeys);

/** A model's family and architecture, read from its parsed `config.json`. */
export interface LoadedModel {
  readonly family: Family<ModelSpec>;
  readonly architecture: Architecture<ModelSpec>;
}

/**
 * Reads a parsed `config.json` with the family its `model_type` names.
 * @throws {ConfigError} for an unsupported `model_type` (naming the supported ones) or a bad field
 */
export function parseModelConfig(json: unknown, file = "config.json"): LoadedModel {
  if (typeof json !== "object" || json === null || Array.isArray(json)) {
    throw new ConfigError("config.json must hold a JSON object", file);
  }
  const c = json as Record<string, unknown>;
  const family = typeof c.model_type === "string" ? familyOf(c.model_type) : undefined;
  if (!family) {
    throw new ConfigError(
      `Unsupported model_type: ${JSON.stringify(c.model_type)}, supported are ${
        SUPPORTED_MODEL_TYPES.join(", ")
      }`,
      file,
    );
  }
  return { family, architecture: family.architecture(c, file) };
}

/** The family of `modelType`, or undefined. */
export function familyOf(modelType: string): Family<ModelSpec> | undefined {
  return FAMILIES.find((f) => f.modelTypes.includes(modelType));
}

/** One line for people: `mixtral: 4 layers, 4 with 16 experts, top-2`. */
export function describeSpec(spec: ModelSpec): string {
  return familyOf(spec.modelType)?.describe(spec) ?? spec.modelType;
}

/**
 * Reads and parses `dir/config.json` (see {@link parseModelConfig}); the end-of-sequence ids of
 * `generation_config.json`, when it has one, join config.json's in the spec's `eosTokenIds`.
 */
export async function loadModelConfig(dir: string): Promise<LoadedModel> {
  const { json, file } = await readConfigJson(dir);
  const eos = await readGenerationEos(dir);
  return parseModelConfig(withEos(json, eos), file);
}

/** `json` with `eos` added to its `eos_token_id` (one id or a list); as it is when there is nothing to add or it is malformed. */
function withEos(json: unknown, eos: readonly number[]): unknown {
  if (eos.length === 0 || typeof json !== "object" || json === null || Array.isArray(json)) return json;
  const c = json as Record<string, unknown>;
  const own = c.eos_token_id ?? [];
  const ids = typeof own === "number" ? [own] : own;
  if (!Array.isArray(ids)) return json; // the family's parser names the bad field
  return { ...c, eos_token_id: [...new Set([...ids, ...eos])] };
}
