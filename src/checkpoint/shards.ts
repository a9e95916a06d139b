/**
 * A checkpoint folder: one `model.safetensors`, or shards listed by `model.safetensors.index.json`.
 *
 * @module
 */

import { isAbsolute, relative, resolve, sep } from "node:path";
import { CheckpointError } from "../errors.ts";
import type { MappedFileOptions, MappingAdvice } from "../../ffi/mmap.ts";
import { SafetensorsFile, type TensorInfo } from "./safetensors.ts";
import { readTextFileLimitedSync, TEXT_FILE_LIMITS } from "./text_file.ts";

/** The index file of a sharded checkpoint. */
export const INDEX_FILE = "model.safetensors.index.json";
/** The weights file of an unsharded checkpoint. */
export const SINGLE_FILE = "model.safetensors";

function quote(text: string): string {
  return JSON.stringify(text);
}

function errorMessage(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

/** Stats `path`, following links; `undefined` when nothing is there. */
function statOrUndefined(path: string): Deno.FileInfo | undefined {
  try {
    return Deno.statSync(path);
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) return undefined;
    throw new CheckpointError(`Cannot stat file: ${errorMessage(error)}`, path, { cause: error });
  }
}

/** Reads the index's `weight_map` as tensor name → resolved shard path, validating it. */
function readWeightMap(dir: string, indexPath: string): Map<string, string> {
  const text = readTextFileLimitedSync(
    indexPath,
    TEXT_FILE_LIMITS.index,
    (detail, cause) => new CheckpointError(`Cannot read index: ${detail}`, indexPath, { cause }),
  );
  if (text === undefined) throw new CheckpointError("Cannot read index: it disappeared", indexPath);
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (error) {
    throw new CheckpointError(`Index is not valid JSON: ${errorMessage(error)}`, indexPath, { cause: error });
  }
  if (typeof json !== "object" || json === null || Array.isArray(json)) {
    throw new CheckpointError("Invalid index: expected a JSON object", indexPath);
  }
  const weightMap = (json as Record<string, unknown>).weight_map;
  if (typeof weightMap !== "object" || weightMap === null || Array.isArray(weightMap)) {
    throw new CheckpointError(
      `Invalid index: "weight_map" must be an object mapping tensor names to file names`,
      indexPath,
    );
  }
  const entries = Object.entries(weightMap);
  if (entries.length === 0) throw new CheckpointError(`Invalid index: "weight_map" is empty`, indexPath);

  const result = new Map<string, string>();
  for (const [name, fileName] of entries) {
    if (typeof fileName !== "string") {
      throw new CheckpointError(
        `Invalid index: weight_map entry ${quote(name)} must be a file name, got ${
          fileName === null ? "null" : Array.isArray(fileName) ? "array" : typeof fileName
        }`,
        indexPath,
      );
    }
    if (fileName === "" || fileName.includes("\0")) {
      throw new CheckpointError(
        `Invalid shard name: ${quote(fileName)} for tensor ${quote(name)}`,
        indexPath,
      );
    }
    // Lexical resolution on purpose: shards may be links to elsewhere (the Hugging Face cache links
    // into its blob store), but their names must not point outside the folder.
    const path = resolve(dir, fileName);
    const rel = relative(dir, path);
    if (isAbsolute(fileName) || rel === "" || rel === ".." || rel.startsWith(`..${sep}`) || isAbsolute(rel)) {
      throw new CheckpointError(
        `Shard outside the checkpoint folder: ${quote(fileName)} for tensor ${quote(name)}`,
        indexPath,
      );
    }
    result.set(name, path);
  }
  return result;
}

/**
 * The weights of a checkpoint folder, memory-mapped and validated.
 *
 * With `model.safetensors.index.json`, every shard its `weight_map` names is opened once, and the
 * index and the shards must agree exactly: each listed tensor is in the shard named for it, no shard
 * holds a tensor the index does not list, and no tensor is in two shards. Without an index,
 * `model.safetensors` is opened.
 *
 * Views from {@link Checkpoint.bytes} are zero-copy and read-only: they must not be used after
 * {@link Checkpoint.close}, nor written to (see `MappedFile`).
 *
 * @example
 * ```ts
 * using checkpoint = Checkpoint.open("tests/fixtures/tiny-mixtral");
 * const embed = checkpoint.bytes("model.embed_tokens.weight");
 * ```
 */
export class Checkpoint implements Disposable {
  /** The folder, as an absolute path. */
  readonly dir: string;
  /** Every tensor by name, shard by shard (in {@link Checkpoint.files} order), in offset order. */
  readonly tensors: ReadonlyMap<string, TensorInfo>;
  /** Sum of the tensors' byte lengths (what `metadata.total_size` of an index means). */
  readonly totalBytes: number;
  #shards: SafetensorsFile[];
  #owner: Map<string, SafetensorsFile>;
  #closed = false;

  private constructor(dir: string, shards: SafetensorsFile[]) {
    this.dir = dir;
    this.#shards = shards;
    this.#owner = new Map();
    const tensors = new Map<string, TensorInfo>();
    let total = 0;
    for (const shard of shards) {
      for (const [name, info] of shard.tensors) {
        tensors.set(name, info);
        this.#owner.set(name, shard);
        total += info.byteLength;
      }
    }
    this.tensors = tensors;
    this.totalBytes = total;
  }

  /**
   * Opens the checkpoint in folder `dir`.
   *
   * @throws {CheckpointError} when the folder has no weights, the index is malformed or names a shard
   * outside the folder or a missing one, a shard is invalid, or the index and the shards disagree.
   * Nothing stays mapped when it throws.
   */
  static open(dir: string, options: MappedFileOptions = {}): Checkpoint {
    const root = resolve(dir);
    const info = statOrUndefined(root);
    if (!info) throw new CheckpointError("Checkpoint folder not found", root);
    if (!info.isDirectory) throw new CheckpointError("Not a folder", root);

    const indexPath = resolve(root, INDEX_FILE);
    if (statOrUndefined(indexPath)) return Checkpoint.#openSharded(root, indexPath, options);
    const singlePath = resolve(root, SINGLE_FILE);
    if (statOrUndefined(singlePath)) {
      return new Checkpoint(root, [SafetensorsFile.open(singlePath, options)]);
    }
    throw new CheckpointError(`No weights found: looked for ${INDEX_FILE} and ${SINGLE_FILE}`, root);
  }

  static #openSharded(root: string, indexPath: string, options: MappedFileOptions): Checkpoint {
    const weightMap = readWeightMap(root, indexPath);
    const paths = [...new Set(weightMap.values())].sort();
    for (const path of paths) {
      if (!statOrUndefined(path)) {
        const name = [...weightMap].find(([, p]) => p === path)?.[0] ?? "";
        throw new CheckpointError(
          `Missing shard: ${quote(relative(root, path))}, listed for tensor ${quote(name)}, does not exist`,
          indexPath,
        );
      }
    }

    const shards: SafetensorsFile[] = [];
    try {
      for (const path of paths) shards.push(SafetensorsFile.open(path, options));
      const shardName = (shard: SafetensorsFile) => quote(relative(root, shard.path));

      const holder = new Map<string, SafetensorsFile>();
      for (const shard of shards) {
        for (const name of shard.tensors.keys()) {
          const other = holder.get(name);
          if (other) {
            throw new CheckpointError(
              `Duplicate tensor: ${quote(name)} is stored in both ${shardName(other)} and ${
                shardName(shard)
              }`,
              indexPath,
            );
          }
          holder.set(name, shard);
          if (!weightMap.has(name)) {
            throw new CheckpointError(
              `Tensor not in index: ${quote(name)} is stored in ${
                shardName(shard)
              } but weight_map does not list it`,
              indexPath,
            );
          }
        }
      }
      for (const [name, path] of weightMap) {
        const shard = holder.get(name);
        const mapped = quote(relative(root, path));
        if (!shard) {
          throw new CheckpointError(
            `Tensor missing from shard: ${quote(name)} is mapped to ${mapped}, which does not hold it`,
            indexPath,
          );
        }
        if (shard.path !== path) {
          throw new CheckpointError(
            `Tensor in wrong shard: ${quote(name)} is mapped to ${mapped} but stored in ${shardName(shard)}`,
            indexPath,
          );
        }
      }
      return new Checkpoint(root, shards);
    } catch (error) {
      for (const shard of shards) shard.close();
      throw error;
    }
  }

  /** The shard files, as absolute paths, sorted. */
  get files(): string[] {
    return this.#shards.map((shard) => shard.path);
  }

  /** Whether {@link Checkpoint.close} has been called. */
  get closed(): boolean {
    return this.#closed;
  }

  /** Whether the checkpoint has tensor `name`. */
  has(name: string): boolean {
    return this.tensors.has(name);
  }

  /**
   * Returns where tensor `name` lives.
   *
   * @throws {CheckpointError} `Missing tensor: "name"` naming the folder, when there is no such tensor.
   */
  info(name: string): TensorInfo {
    const info = this.tensors.get(name);
    if (!info) throw new CheckpointError(`Missing tensor: ${quote(name)}`, this.dir);
    return info;
  }

  #shard(name: string): SafetensorsFile {
    if (this.#closed) throw new CheckpointError("Checkpoint is closed", this.dir);
    const shard = this.#owner.get(name);
    if (!shard) throw new CheckpointError(`Missing tensor: ${quote(name)}`, this.dir);
    return shard;
  }

  /**
   * Returns a zero-copy view of tensor `name`'s bytes, valid until {@link Checkpoint.close}.
   *
   * @throws {CheckpointError} when there is no such tensor or the checkpoint is closed.
   */
  bytes(name: string): Uint8Array<ArrayBuffer> {
    return this.#shard(name).bytes(name);
  }

  /** Tells the kernel how tensor `name`'s bytes will be used (`madvise`; see `MappedFile.advise`). */
  advise(name: string, advice: MappingAdvice): void {
    this.#shard(name).advise(name, advice);
  }

  /** Unmaps every shard; further calls do nothing. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    let failure: unknown;
    for (const shard of this.#shards) {
      try {
        shard.close();
      } catch (error) {
        failure ??= error;
      }
    }
    if (failure !== undefined) throw failure;
  }

  /** Same as {@link Checkpoint.close}. */
  [Symbol.dispose](): void {
    this.close();
  }
}
