/**
 * Which files of a repository the engine reads, and whether a folder holds a whole checkpoint.
 *
 * @module
 */
import { join } from "node:path";
import { isSafeRepoPath } from "./names.ts";

/** The shard index of a sharded checkpoint. */
export const INDEX_FILE = "model.safetensors.index.json";

/** The weights of an unsharded checkpoint. */
export const SINGLE_FILE = "model.safetensors";

/**
 * Every file the engine may read besides the shards an index names, in download order: config first,
 * then the index (its weight map names the shards), the weights, the tokenizer and the chat template.
 * Only those the repository has are fetched.
 */
export const WANTED_FILES: readonly string[] = [
  "config.json",
  "generation_config.json",
  INDEX_FILE,
  SINGLE_FILE,
  "tokenizer.json",
  "tokenizer_config.json",
  "special_tokens_map.json",
  "chat_template.jinja",
  "chat_template.json",
];

/**
 * The shard files an index's `weight_map` names, in first-seen order. Throws `Error` when the text is
 * not such an index or names a path outside the repository.
 */
export function shardsOfIndex(text: string): string[] {
  const json = JSON.parse(text) as { weight_map?: unknown } | null;
  const map = json?.weight_map;
  if (typeof map !== "object" || map === null || Array.isArray(map)) {
    throw new Error(`no "weight_map" object`);
  }
  const shards = new Set<string>();
  for (const [tensor, file] of Object.entries(map)) {
    if (typeof file !== "string" || !isSafeRepoPath(file)) {
      throw new Error(`"${tensor}" maps to ${JSON.stringify(file)}, not a file name inside the repository`);
    }
    shards.add(file);
  }
  if (shards.size === 0) throw new Error(`"weight_map" is empty`);
  return [...shards];
}

function isFile(path: string): boolean {
  try {
    return Deno.statSync(path).isFile;
  } catch {
    return false;
  }
}

/**
 * The checkpoint files `dir` lacks: `config.json`, and `model.safetensors` or the index and every shard
 * it names. Empty when the folder holds a whole checkpoint; an unreadable index counts as missing.
 */
export function missingCheckpointFiles(dir: string): string[] {
  const missing = isFile(join(dir, "config.json")) ? [] : ["config.json"];
  if (isFile(join(dir, INDEX_FILE))) {
    let shards: string[];
    try {
      shards = shardsOfIndex(Deno.readTextFileSync(join(dir, INDEX_FILE)));
    } catch {
      return [...missing, INDEX_FILE];
    }
    missing.push(...shards.filter((s) => !isFile(join(dir, s))));
  } else if (!isFile(join(dir, SINGLE_FILE))) {
    missing.push(SINGLE_FILE);
  }
  return missing;
}
