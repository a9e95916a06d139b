/**
 * `generation_config.json`: the generation defaults a checkpoint ships with, as transformers'
 * `GenerationConfig` holds them. The engine honours `min_new_tokens` (no end of sequence before that
 * many new tokens) as the default of a request's `minTokens`; the file's other fields are not read.
 * The file is optional; one that is there must be a JSON object with a valid `min_new_tokens`, if any.
 *
 * @module
 */
import { ConfigError } from "../errors.ts";
import { readTextFileLimited, TEXT_FILE_LIMITS } from "./text_file.ts";

/** What a request takes from `generation_config.json` when it does not say. */
export interface GenerationDefaults {
  /** `min_new_tokens`: end-of-sequence ids cannot be sampled before this many new tokens. */
  minTokens?: number;
}

/**
 * Reads `dir/generation_config.json` (bounded as config.json is); `{}` when there is none.
 * @throws {ConfigError} naming the file when it cannot be read, is not a JSON object, or holds a
 * `min_new_tokens` that is not an integer >= 0 (or null)
 */
export async function readGenerationConfig(dir: string): Promise<GenerationDefaults> {
  const file = `${dir}/generation_config.json`;
  const text = await readTextFileLimited(
    file,
    TEXT_FILE_LIMITS.config,
    (message, cause) => new ConfigError(`Cannot read generation_config.json: ${message}`, file, { cause }),
  );
  if (text === undefined) return {};
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    throw new ConfigError(`generation_config.json is not valid JSON: ${(e as Error).message}`, file, {
      cause: e,
    });
  }
  if (typeof json !== "object" || json === null || Array.isArray(json)) {
    throw new ConfigError("generation_config.json is not a JSON object", file);
  }
  const min = (json as Record<string, unknown>).min_new_tokens;
  if (min === undefined || min === null) return {};
  if (typeof min !== "number" || !Number.isSafeInteger(min) || min < 0) {
    throw new ConfigError(
      `Invalid min_new_tokens in generation_config.json: ${JSON.stringify(min)}, expected an integer >= 0`,
      file,
    );
  }
  return { minTokens: min };
}
