/**
 * Reading `config.json`: the file itself, and typed readers of its fields that every family's parser
 * uses (each family parses its own config under `src/models/<family>/config.ts`).
 *
 * @module
 */
import { ConfigError } from "../errors.ts";
import { readTextFileLimited, TEXT_FILE_LIMITS } from "./text_file.ts";

/**
 * The most decoder layers, and experts summed over layers, a config may declare. Far above any published
 * model (DeepSeek-V3: 61 layers, 58 × 256 experts), low enough that the name tables built from a hostile
 * config stay small: a `num_hidden_layers` of millions would exhaust the JS heap before any tensor is read.
 */
export const MAX_LAYERS = 1024;
/** See {@link MAX_LAYERS}. */
export const MAX_TOTAL_EXPERTS = 1 << 17;

/** A parsed `config.json` object. */
export type Json = Record<string, unknown>;

/**
 * Typed readers of `config.json` fields, shared by both families' parsers: `int` (a safe integer >= `min`),
 * `num` (a finite number, positive unless told otherwise), `bool`, `optionalId` (a token id >= 0, or
 * absent/null) and `tokenIds` (one id or a list, each below `below`; none when absent); a missing key takes
 * `fallback`. Each throws a ConfigError naming the key and what was expected.
 */
export function configFields(c: Json, file: string): {
  int: (key: string, min?: number, fallback?: number) => number;
  num: (key: string, fallback?: number, positive?: boolean) => number;
  bool: (key: string, fallback: boolean) => boolean;
  optionalId: (key: string) => number | undefined;
  tokenIds: (key: string, below?: number) => number[];
} {
  return {
    int: (key, min = 1, fallback) => {
      const v = c[key] ?? fallback;
      if (typeof v !== "number" || !Number.isSafeInteger(v) || v < min) {
        throw new ConfigError(
          `Invalid ${key}: expected an integer >= ${min}, got ${JSON.stringify(c[key])}`,
          file,
        );
      }
      return v;
    },
    num: (key, fallback, positive = true) => {
      const v = c[key] ?? fallback;
      if (typeof v !== "number" || !Number.isFinite(v) || (positive && v <= 0)) {
        throw new ConfigError(
          `Invalid ${key}: expected a positive number, got ${JSON.stringify(c[key])}`,
          file,
        );
      }
      return v;
    },
    bool: (key, fallback) => {
      const v = c[key] ?? fallback;
      if (typeof v !== "boolean") {
        throw new ConfigError(`Invalid ${key}: expected true or false, got ${JSON.stringify(c[key])}`, file);
      }
      return v;
    },
    optionalId: (key) => {
      const v = c[key];
      if (v === undefined || v === null) return undefined;
      if (!(typeof v === "number" && Number.isSafeInteger(v) && v >= 0)) {
        throw new ConfigError(`Invalid ${key}: ${JSON.stringify(v)}`, file);
      }
      return v;
    },
    tokenIds: (key, below = Infinity) => {
      const v = c[key];
      const ids = v === undefined || v === null ? [] : Array.isArray(v) ? v : [v];
      if (!ids.every((x) => Number.isSafeInteger(x) && x >= 0 && x < below)) {
        throw new ConfigError(`Invalid ${key}: ${JSON.stringify(v)}`, file);
      }
      return ids as number[];
    },
  };
}

/** Reads `dir/config.json` as JSON (any shape), or a {@link ConfigError} naming the file. */
export async function readConfigJson(dir: string): Promise<{ json: unknown; file: string }> {
  const file = `${dir}/config.json`;
  const text = await readTextFileLimited(
    file,
    TEXT_FILE_LIMITS.config,
    (message, cause) => new ConfigError(`Cannot read config.json: ${message}`, file, { cause }),
  );
  if (text === undefined) {
    throw new ConfigError("Missing config.json: a model folder as published on Hugging Face has one", file);
  }
  try {
    return { json: JSON.parse(text), file };
  } catch (e) {
    throw new ConfigError(`config.json is not valid JSON: ${(e as Error).message}`, file, { cause: e });
  }
}
