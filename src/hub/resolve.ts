/**
 * A model by name: `org/name[@revision]` → a local folder, downloaded from the hub into its cache once,
 * found in the cache afterwards (and when the hub cannot be reached), as huggingface_hub's
 * `snapshot_download` does for the files the engine reads.
 *
 * @module
 */
import { CheckpointError, HubError, OptionError } from "../errors.ts";
import { type CachedModel, HubCache } from "./cache.ts";
import { HubClient, type HubFile, type RepoListing } from "./client.ts";
import { blobIdOf, fetchFile } from "./download.ts";
import { INDEX_FILE, missingCheckpointFiles, shardsOfIndex, SINGLE_FILE, WANTED_FILES } from "./files.ts";
import { checkRevision, isCommitHash, type ModelRef, parseModelName } from "./names.ts";
import { type HubSettings, hubSettings } from "./settings.ts";

/** Progress of a download, in bytes. */
export interface DownloadProgress {
  /** `org/name`. */
  repo: string;
  /** The commit being fetched. */
  commit: string;
  /** The file this report is about (several may be fetched at once). */
  file: string;
  /** Files this call has finished, plus one while any is still being fetched (1-based, as "file i of n"). */
  fileIndex: number;
  /** Files this call fetches (those the cache lacks). */
  fileCount: number;
  /** Bytes on disk of the files this call fetches, resumed bytes included. */
  bytes: number;
  /** Bytes of every file this call fetches. */
  totalBytes: number;
  /** Bytes received from the network in this call (resumed ones excluded): what a rate is made of. */
  receivedBytes: number;
}

/** Options of {@link resolveModel} and {@link pullModel}. */
export interface ResolveOptions {
  /** The revision (branch, tag or commit); overrides an `@revision` in the name. Default `main`. */
  revision?: string;
  /** Use the cache only, send no request. Default `$HF_HUB_OFFLINE`. */
  offline?: boolean;
  /** Called as bytes arrive. */
  onProgress?: (progress: DownloadProgress) => void;
  /** Stops the download; what was fetched stays in the cache and the next call resumes it. */
  signal?: AbortSignal;
  /** Overrides of the settings read from the environment (`$HF_ENDPOINT`, `$HF_TOKEN`, `$HF_HUB_CACHE`, …). */
  settings?: Partial<HubSettings>;
  /** Milliseconds before retrying a dropped download; doubled each time. Default 500. */
  retryDelayMs?: number;
  /**
   * Files downloaded at once (a sharded checkpoint's shards side by side, each over its own
   * connection, as huggingface_hub's `snapshot_download` does). Default 4.
   */
  parallelDownloads?: number;
}

/** Files {@link ResolveOptions.parallelDownloads} fetches at once by default. */
export const PARALLEL_DOWNLOADS = 4;

/** A model folder, and where it came from. */
export interface ResolvedModel {
  /** The local folder to load: the path given, or `<cache>/models--org--name/snapshots/<commit>`. */
  dir: string;
  /** `org/name`, when the model came from the hub or its cache. */
  repo?: string;
  /** The revision asked for. */
  revision?: string;
  /** The commit of the snapshot. */
  commit?: string;
  /** Nothing was downloaded: every file was in the cache (or the path was a local folder). */
  fromCache: boolean;
  /** The hub was not asked (offline mode) or could not be reached: the cached copy stands in. */
  offline: boolean;
  /** One line for the user when `offline`: why, and which cached copy is used. */
  message?: string;
  /** Bytes received from the network. */
  downloadedBytes: number;
}

function exists(path: string): boolean {
  try {
    Deno.statSync(path);
    return true;
  } catch {
    return false;
  }
}

/**
 * The local folder of a model named by path or by `org/name[@revision]`: an existing path is returned
 * as is; otherwise a hub name is downloaded into the cache, or found there (see {@link pullModel}).
 * Throws `CheckpointError` for a path that does not exist and is no hub name, `HubError` when the hub
 * refuses or cannot be reached without a cached copy.
 *
 * @example
 * ```ts ignore
 * const { dir, message } = await resolveModel("allenai/OLMoE-1B-7B-0924");
 * if (message) console.error(message); // offline: the cached copy is used
 * ```
 */
export async function resolveModel(nameOrPath: string, options: ResolveOptions = {}): Promise<ResolvedModel> {
  if (exists(nameOrPath)) return { dir: nameOrPath, fromCache: false, offline: false, downloadedBytes: 0 };
  if (parseModelName(nameOrPath) === undefined) {
    throw new CheckpointError(
      `Model folder not found: ${nameOrPath}; a model on the Hugging Face hub is named org/name[@revision]`,
    );
  }
  return await pullModel(nameOrPath, options);
}

/**
 * Downloads `org/name[@revision]` into the hub cache, only the files the engine reads (config, weights,
 * tokenizer, chat template), each verified, and returns its snapshot folder. Files already cached are not
 * fetched again; a full commit hash whose snapshot is complete sends no request. When the hub cannot be
 * reached (or `offline`), a complete cached snapshot of the revision is used and `message` says so.
 */
export async function pullModel(name: string, options: ResolveOptions = {}): Promise<ResolvedModel> {
  const parsed = parseModelName(name);
  if (parsed === undefined) {
    throw new OptionError(`Invalid model name: "${name}", expected org/name or org/name@revision`);
  }
  if (options.revision !== undefined) checkRevision(options.revision);
  const parallel = options.parallelDownloads;
  if (parallel !== undefined && !(Number.isSafeInteger(parallel) && parallel >= 1)) {
    throw new OptionError(`Invalid parallelDownloads: ${parallel}, expected a whole number of at least 1`);
  }
  const ref: ModelRef = { repo: parsed.repo, revision: options.revision ?? parsed.revision };
  const settings = { ...hubSettings(), ...options.settings };
  const cache = new HubCache(settings.cacheDir);
  const label = `${ref.repo}@${ref.revision}`;

  if (options.offline ?? settings.offline) {
    const cached = cachedSnapshot(cache, ref);
    if (cached === undefined) {
      throw new HubError(
        `Offline, and ${label} is not in the cache at ${cache.root}: download it once with the hub reachable`,
      );
    }
    return { ...cached, message: `Offline: using the cached ${label} (commit ${cached.commit.slice(0, 7)})` };
  }
  if (isCommitHash(ref.revision)) {
    const cached = cachedSnapshot(cache, ref);
    if (cached !== undefined) return { ...cached, offline: false };
  }

  const client = new HubClient(settings);
  let listing: RepoListing;
  try {
    listing = await client.listFiles(ref, options.signal);
  } catch (e) {
    if (!(e instanceof HubError && e.unreachable)) throw e;
    const cached = cachedSnapshot(cache, ref);
    if (cached === undefined) {
      throw new HubError(`${e.message}; and ${label} is not in the cache at ${cache.root}`, {
        status: e.status,
        unreachable: true,
        cause: e,
      });
    }
    return {
      ...cached,
      message: `${e.message}: using the cached ${label} (commit ${cached.commit.slice(0, 7)})`,
    };
  }
  const downloadedBytes = await fetchSnapshot(client, cache, ref, listing, options);
  cache.writeRef(ref.repo, ref.revision, listing.commit);
  return {
    dir: cache.snapshotDir(ref.repo, listing.commit),
    repo: ref.repo,
    revision: ref.revision,
    commit: listing.commit,
    fromCache: downloadedBytes === 0,
    offline: false,
    downloadedBytes,
  };
}

/** A complete cached snapshot of `ref`, as a result marked offline, or `undefined`. */
function cachedSnapshot(
  cache: HubCache,
  ref: ModelRef,
): Omit<ResolvedModel, "message"> & { commit: string } | undefined {
  const commit = cache.commitOf(ref.repo, ref.revision);
  if (commit === undefined) return undefined;
  const dir = cache.snapshotDir(ref.repo, commit);
  if (!exists(dir) || missingCheckpointFiles(dir).length > 0) return undefined;
  return {
    dir,
    repo: ref.repo,
    revision: ref.revision,
    commit,
    fromCache: true,
    offline: true,
    downloadedBytes: 0,
  };
}

/** Fetches the engine's files of `listing` that the snapshot lacks; resolves to the bytes received. */
async function fetchSnapshot(
  client: HubClient,
  cache: HubCache,
  ref: ModelRef,
  listing: RepoListing,
  options: ResolveOptions,
): Promise<number> {
  const { repo } = ref;
  const { commit, files } = listing;
  const at = `${repo}@${ref.revision} (commit ${commit.slice(0, 7)})`;
  if (!files.has("config.json")) {
    throw new HubError(`Not a checkpoint the engine reads: ${at} has no config.json`);
  }
  const ctx = { client, cache, repo, commit, signal: options.signal, retryDelayMs: options.retryDelayMs };
  let received = 0;
  let wanted = WANTED_FILES.filter((p) => files.has(p));
  const index = files.get(INDEX_FILE);
  // fetched before the others are known: the index, which names the shards (small, no progress of its own)
  const first: HubFile[] = [];
  if (index !== undefined) {
    if (!cache.hasFile(repo, commit, INDEX_FILE)) {
      received += await fetchFile(ctx, index);
      first.push(index);
    }
    let shards: string[];
    try {
      shards = shardsOfIndex(await Deno.readTextFile(`${cache.snapshotDir(repo, commit)}/${INDEX_FILE}`));
    } catch (e) {
      throw new HubError(`Unusable ${INDEX_FILE} in ${at}: ${(e as Error).message}`, { cause: e });
    }
    const absent = shards.filter((s) => !files.has(s));
    if (absent.length > 0) {
      throw new HubError(`Shards named by ${INDEX_FILE} are not in ${at}: ${absent.join(", ")}`);
    }
    // the index wins over a stray model.safetensors beside it, as in transformers
    wanted = [...wanted.filter((p) => p !== INDEX_FILE && p !== SINGLE_FILE), ...shards];
  } else if (!files.has(SINGLE_FILE)) {
    throw new HubError(
      `No safetensors weights in ${at}: neither ${SINGLE_FILE} nor ${INDEX_FILE}; the engine reads only safetensors`,
    );
  }

  const todo: HubFile[] = wanted.map((p) => files.get(p)!).filter((f) =>
    !cache.hasFile(repo, commit, f.path)
  );
  const sum = (list: HubFile[]) => list.reduce((a, f) => a + f.size, 0);
  const totalBytes = sum(first) + sum(todo);
  let done = sum(first);
  let finished = first.length;
  const fileCount = first.length + todo.length;
  // bytes on disk of the files being fetched
  const onDisk = new Map<string, number>();
  const report = (file: HubFile) =>
    options.onProgress?.({
      repo,
      commit,
      file: file.path,
      fileIndex: Math.min(finished + 1, fileCount),
      fileCount,
      bytes: done + [...onDisk.values()].reduce((a, b) => a + b, 0),
      totalBytes,
      receivedBytes: received,
    });
  // the shards side by side; the first failure stops the others (what they fetched stays, to resume)
  const stop = new AbortController();
  const signal = options.signal ? AbortSignal.any([options.signal, stop.signal]) : stop.signal;
  let failure: { error: unknown } | undefined;
  let next = 0;
  const worker = async () => {
    while (next < todo.length && !failure) {
      const file = todo[next++]!;
      const onBytes = (bytes: number, got: number) => {
        received += got;
        onDisk.set(file.path, bytes);
        report(file);
      };
      if (cache.blobSize(repo, blobIdOf(file)) !== file.size) onBytes(0, 0);
      try {
        await fetchFile({ ...ctx, signal, onBytes }, file);
      } catch (error) {
        // the first failure is the one to tell; the others were stopped by it
        failure ??= { error };
        stop.abort(error);
        return;
      }
      onDisk.delete(file.path);
      done += file.size;
      finished++;
    }
  };
  const workers = Math.max(1, Math.min(options.parallelDownloads ?? PARALLEL_DOWNLOADS, todo.length));
  await Promise.all(Array.from({ length: workers }, worker));
  if (failure) throw failure.error;
  return received;
}

/** Every model in the hub cache (default `$HF_HUB_CACHE`, …, see {@link hubSettings}), with sizes. */
export function listCachedModels(options: { cacheDir?: string } = {}): CachedModel[] {
  return new HubCache(options.cacheDir ?? hubSettings().cacheDir).list();
}

/**
 * Deletes `org/name` from the hub cache, every revision of it; returns what was deleted. Throws
 * `HubError` when the cache does not hold it.
 */
export function removeCachedModel(repo: string, options: { cacheDir?: string } = {}): CachedModel {
  const ref = parseModelName(repo);
  if (ref === undefined || repo.includes("@")) {
    throw new OptionError(`Invalid model name: "${repo}", expected org/name`);
  }
  const cache = new HubCache(options.cacheDir ?? hubSettings().cacheDir);
  const removed = cache.remove(ref.repo);
  if (removed === undefined) throw new HubError(`Not in the cache: ${ref.repo} (cache at ${cache.root})`);
  return removed;
}

/** The hub cache's folder, from the environment (see {@link hubSettings}). */
export function hubCacheDir(): string {
  return hubSettings().cacheDir;
}
