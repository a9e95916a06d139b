/**
 * One file from the hub into the cache: streamed to `blobs/<id>.incomplete` (resumed with `Range` from
 * the bytes already there, after an interruption in this run or an earlier one), hashed as it arrives,
 * verified (size; sha256 for LFS files, the git blob id for the others), then renamed to `blobs/<id>`
 * and linked from the snapshot. A file that fails verification is deleted and never linked.
 *
 * @module
 */
import { createHash, type Hash } from "node:crypto";
import { dirname } from "node:path";
import { HubError } from "../errors.ts";
import type { HubCache } from "./cache.ts";
import type { FileContent, HubClient, HubFile } from "./client.ts";

/** What {@link fetchFile} works with. */
export interface FetchContext {
  client: HubClient;
  cache: HubCache;
  repo: string;
  commit: string;
  signal?: AbortSignal;
  /** Called as bytes land: `onDisk` of this file so far, `received` new bytes since the last call. */
  onBytes?: (onDisk: number, received: number) => void;
  /** Milliseconds before the first retry of a dropped download; doubled each time. Default 500. */
  retryDelayMs?: number;
}

/** Dropped or stalled connections in a row, without a byte received between them, before giving up. */
const MAX_ATTEMPTS = 5;

/** The blob name of a file in the cache: its sha256 when stored in LFS, else its git blob id. */
export function blobIdOf(file: HubFile): string {
  return file.sha256 ?? file.blobId;
}

/** The hash that verifies `file`: sha256 of an LFS object; git's sha1 of `blob <size>\0<content>` otherwise. */
function newHash(file: HubFile): Hash {
  if (file.sha256 !== undefined) return createHash("sha256");
  return createHash("sha1").update(`blob ${file.size}\0`);
}

async function writeAll(f: Deno.FsFile, bytes: Uint8Array): Promise<void> {
  while (bytes.length > 0) bytes = bytes.subarray(await f.write(bytes));
}

/** Feeds the first `length` bytes of `f` to `hash`, in chunks (flat memory for large files). */
async function hashPrefix(f: Deno.FsFile, length: number, hash: Hash): Promise<void> {
  await f.seek(0, Deno.SeekMode.Start);
  const buf = new Uint8Array(1 << 20);
  let left = length;
  while (left > 0) {
    const n = await f.read(buf.subarray(0, Math.min(buf.length, left)));
    if (n === null) throw new Error(`Partial download shorter than its size: ${left} bytes missing`);
    hash.update(buf.subarray(0, n));
    left -= n;
  }
}

const isNetworkError = (e: unknown): boolean =>
  (e instanceof HubError && e.unreachable) || e instanceof TypeError ||
  e instanceof Deno.errors.ConnectionReset || e instanceof Deno.errors.UnexpectedEof ||
  e instanceof Deno.errors.Interrupted || e instanceof Deno.errors.BrokenPipe;

/**
 * Makes `snapshots/<commit>/<file.path>` of the cache point at a verified blob of `file`, downloading
 * it when the cache lacks it. Resolves to the bytes received from the hub (0 when the blob was there).
 */
export async function fetchFile(ctx: FetchContext, file: HubFile): Promise<number> {
  const { cache, repo, commit } = ctx;
  const id = blobIdOf(file);
  if (cache.blobSize(repo, id) === file.size) {
    cache.link(repo, commit, file.path, id);
    return 0;
  }
  const lockPath = cache.lockPath(repo, id);
  Deno.mkdirSync(dirname(lockPath), { recursive: true });
  Deno.mkdirSync(dirname(cache.blobPath(repo, id)), { recursive: true });
  using lock = await Deno.open(lockPath, { create: true, write: true });
  // one writer per blob: another process fetching it holds the lock until it is done
  await lock.lock(true);
  try {
    // what the other process fetched while we waited for the lock
    if (cache.blobSize(repo, id) === file.size) {
      cache.link(repo, commit, file.path, id);
      return 0;
    }
    const received = await download(ctx, file, id);
    Deno.renameSync(cache.incompletePath(repo, id), cache.blobPath(repo, id));
    cache.link(repo, commit, file.path, id);
    return received;
  } finally {
    await lock.unlock();
  }
}

/** Fills `blobs/<id>.incomplete` with `file`, verified; resolves to the bytes received. */
async function download(ctx: FetchContext, file: HubFile, id: string): Promise<number> {
  const path = ctx.cache.incompletePath(ctx.repo, id);
  using f = await Deno.open(path, { read: true, write: true, create: true });
  let offset = (await f.stat()).size;
  let hash = newHash(file);
  if (offset > file.size) {
    await f.truncate(0);
    offset = 0;
  }
  if (offset > 0) await hashPrefix(f, offset, hash);
  ctx.onBytes?.(offset, 0);
  let received = 0;
  let failures = 0;
  let delay = ctx.retryDelayMs ?? 500;
  while (offset < file.size) {
    let content: FileContent | undefined;
    const before = received;
    try {
      content = await ctx.client.openFile(ctx.repo, ctx.commit, file, offset, ctx.signal);
      if (content.start !== offset) {
        // the server sent the whole file: what is on disk is dropped and hashed anew
        await f.truncate(0);
        hash = newHash(file);
        offset = 0;
        ctx.onBytes?.(0, 0);
      }
      await f.seek(offset, Deno.SeekMode.Start);
      for (let chunk = await content.read(); chunk !== undefined; chunk = await content.read()) {
        if (offset + chunk.length > file.size) {
          throw new HubError(
            `The download of ${file.path} of ${ctx.repo} is longer than its listed size ${file.size}: refused`,
          );
        }
        await writeAll(f, chunk);
        hash.update(chunk);
        offset += chunk.length;
        received += chunk.length;
        ctx.onBytes?.(offset, chunk.length);
      }
      // a body that ends early is a dropped connection too: resumed below
      if (offset < file.size) throw new TypeError(`the body ended at byte ${offset} of ${file.size}`);
    } catch (e) {
      await content?.cancel();
      if (ctx.signal?.aborted) throw ctx.signal.reason;
      if (!isNetworkError(e)) throw e;
      failures = received > before ? 1 : failures + 1;
      if (failures >= MAX_ATTEMPTS) {
        throw new HubError(
          `Download of ${file.path} of ${ctx.repo} failed at byte ${offset} of ${file.size} after ${MAX_ATTEMPTS} attempts: ${
            (e as Error).message
          }; run again to resume from there`,
          { unreachable: true, cause: e },
        );
      }
      await sleep(delay, ctx.signal);
      delay *= 2;
    }
  }
  const actual = hash.digest("hex");
  const expected = file.sha256 ?? file.blobId;
  if (actual !== expected) {
    // removed while open: it goes when the handle closes, and nothing can link it before
    await Deno.remove(path);
    const kind = file.sha256 !== undefined ? "sha256" : "git blob sha1";
    throw new HubError(
      `Checksum mismatch for ${file.path} of ${ctx.repo}: the hub lists ${kind} ${expected}, the download has ${actual}; it was deleted, run again to download it anew`,
    );
  }
  return received;
}

function sleep(ms: number, signal: AbortSignal | undefined): Promise<void> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(done, ms);
    function done() {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }
    function onAbort() {
      clearTimeout(timer);
      reject(signal!.reason);
    }
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}
