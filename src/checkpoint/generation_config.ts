/**
 * `generation_config.json`: the generation defaults a checkpoint ships with, as transformers'
 * `GenerationConfig` holds them. The engine honours `min_new_tokens` (no end of sequence before that
 * many new tokens) as the default of a request's `minTokens`, and adds its `eos_token_id` ids to
 * config.json's; the file's other fields are not read.
 * The file is optional; one that is there must be a JSON object with a valid `min_new_tokens`, if any.
 *
 * @module
 */
import { ConfigError } from "../errors.ts";
import { configFields, type Json } from "./config.ts";
import { readTextFileLimited, TEXT_FILE_LIMITS } from "./text_file.ts";

/** What a request takes from `generation_config.json` when it does not say. */
export interface GenerationDefaults {
  /** `min_new_tokens`: end-of-sequence ids cannot be sampled before this many new tokens. */
  minTokens?: number;
}

/**
 * `dir/generation_config.json` as a JSON object (read bounded, as config.json is), or undefined when
 * there is none.
 * @throws {ConfigError} naming the file when it cannot be read or is not a JSON object
 */
async function readGenerationJson(dir: string): Promise<{ json: Json; file: string } | undefined> {
  const file = `${dir}/generation_config.json`;
  const text = await readTextFileLimited(
    file,
    TEXT_FILE_LIMITS.config,
    (message, cause) => new ConfigError(`Cannot read generation_config.json: ${message}`, file, { cause }),
  );
  if (text === undefined) return undefined;
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    throw new ConfigError(`generation_config.json is not valid JSON: ${(e as Error).message}`, file, {
      cause: e,
    });
  }
  if (typeof json !== "object" || json === null || Array.isArray(json)) {
    throw new ConfigError("generation_config.json must hold a JSON object", file);
  }
  return { json: json as Json, file };
}

/**
 * Reads `dir/generation_config.json`'s defaults; `{}` when there is none.
 * @throws {ConfigError} naming the file when it cannot be read, is not a JSON object, or holds a
 * `min_new_tokens` that is not an integer >= 0 (or null)
 */
export async function readGenerationConfig(dir: string): Promise<GenerationDefaults> {
  const read = await readGenerationJson(dir);
  if (!read) return {};
  const min = read.json.min_new_tokens;
  if (min === undefined || min === null) return {};
  if (typeof min !== "number" || !Number.isSafeInteger(min) || min < 0) {
    throw new ConfigError(
      `Invalid min_new_tokens in generation_config.json: ${JSON.stringify(min)}, expected an integer >= 0`,
      read.file,
    );
  }
  return { minTokens: min };
}

/**
 * The end-of-sequence ids of `dir/generation_config.json` (`eos_token_id`: one id or a list), at which
 * transformers' `generate()` stops: gpt-oss's config.json names one (`<|return|>`), its
 * generation_config.json three (`<|return|>`, `<|endoftext|>`, `<|call|>`). None when the file is absent
 * or names none.
 * @throws {ConfigError} naming the file, for one that cannot be read, is not a JSON object, or holds an
 * invalid `eos_token_id`
 */
export async function readGenerationEos(dir: string): Promise<number[]> {
  const read = await readGenerationJson(dir);
  return read ? configFields(read.json, read.file).tokenIds("eos_token_id") : [];
}
