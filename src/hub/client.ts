/**
 * The hub's HTTP API as huggingface_hub speaks it:
 *
 * - `GET {endpoint}/api/models/{repo}/revision/{revision}?blobs=true` lists a commit's files with their
 *   sizes, git blob ids and, for LFS files, their sha256 (`hf_api.py`, `model_info(files_metadata=True)`);
 * - `GET {endpoint}/{repo}/resolve/{commit}/{path}` serves a file, often through a redirect to a CDN;
 *   the hub's own answer carries `X-Repo-Commit`, `X-Linked-Etag` (LFS: the sha256) or `ETag` (others:
 *   the git blob id) and `X-Linked-Size` (`file_download.py`, `get_hf_file_metadata`);
 * - errors carry `X-Error-Code` (`RepoNotFound`, `GatedRepo`, `RevisionNotFound`, `EntryNotFound`) and
 *   `X-Error-Message` (`utils/_http.py`, `hf_raise_for_status`).
 *
 * `Authorization: Bearer <token>` goes to the hub's origin only, never to a CDN it redirects to.
 *
 * @module
 */
import { HubError } from "../errors.ts";
import type { ModelRef } from "./names.ts";

/** One file of a commit, from the listing. */
export interface HubFile {
  /** Path in the repository, `/`-separated. */
  path: string;
  /** Bytes of the content (for LFS files, of the LFS object). */
  size: number;
  /** The git blob id (sha1): what verifies a file kept in git, and the blob's name in the cache. */
  blobId: string;
  /** The LFS object's sha256: what verifies an LFS file, and its blob's name in the cache. */
  sha256: string | undefined;
}

/** A commit's file listing. */
export interface RepoListing {
  /** The commit the revision resolved to. */
  commit: string;
  /** Path → file. */
  files: Map<string, HubFile>;
}

/** How a {@link HubClient} reaches the hub. */
export interface HubClientOptions {
  /** The hub's address, without a trailing slash. */
  endpoint: string;
  /** Sent as `Authorization: Bearer …` to the hub's origin. */
  token?: string;
  /** Seconds to wait for the listing's answer. */
  metadataTimeoutSeconds: number;
  /** Seconds a download may receive nothing before it is abandoned (and retried by the caller). */
  downloadTimeoutSeconds: number;
}

/** A file's content as served, from `start` on. */
export interface FileContent {
  /** The offset in the file of the body's first byte: the offset asked for, or 0 when the whole file came. */
  start: number;
  /** Reads the next chunk; `undefined` at the end. Rejects when the connection drops or stalls. */
  read(): Promise<Uint8Array | undefined>;
  /** Releases the connection. */
  cancel(): Promise<void>;
}

/** `W/"abc"` and `"abc"` → `abc` (huggingface_hub's `_normalize_etag`). */
export function normalizeEtag(etag: string | null): string | undefined {
  if (etag === null) return undefined;
  return etag.replace(/^W\//, "").replace(/^"|"$/g, "");
}

const REDIRECTS = new Set([301, 302, 303, 307, 308]);
const MAX_REDIRECTS = 10;
const SHA256 = /^[0-9a-f]{64}$/;
const SHA1 = /^[0-9a-f]{40}$/;

/** Encodes each segment of a repository path for a URL. */
function encodePath(path: string): string {
  return path.split("/").map(encodeURIComponent).join("/");
}

/** A client of one hub endpoint. */
export class HubClient {
  readonly #o: HubClientOptions;
  readonly #origin: string;

  /** Creates a client; nothing is sent until asked. */
  constructor(options: HubClientOptions) {
    this.#o = options;
    this.#origin = new URL(options.endpoint).origin;
  }

  /** The hub's address. */
  get endpoint(): string {
    return this.#o.endpoint;
  }

  /** Lists the files of `ref`'s commit with sizes and hashes. */
  async listFiles(ref: ModelRef, signal?: AbortSignal): Promise<RepoListing> {
    const url = `${this.#o.endpoint}/api/models/${ref.repo}/revision/${
      encodeURIComponent(ref.revision)
    }?blobs=true`;
    const timeout = AbortSignal.timeout(this.#o.metadataTimeoutSeconds * 1000);
    const both = signal ? AbortSignal.any([signal, timeout]) : timeout;
    const { response } = await this.#get(url, { accept: "application/json" }, both, signal);
    if (!response.ok) throw await this.#error(response, ref, undefined);
    let json: unknown;
    try {
      json = await response.json();
    } catch (e) {
      throw new HubError(`The hub's file listing of ${ref.repo} is not JSON: ${(e as Error).message}`, {
        cause: e,
      });
    }
    return parseListing(json, ref, this.#o.endpoint);
  }

  /**
   * Requests `file` of `repo` at `commit` from byte `offset` on, following redirects, and checks the
   * hub's headers against the listing: the commit, the file's id and its size.
   */
  async openFile(
    repo: string,
    commit: string,
    file: HubFile,
    offset: number,
    signal?: AbortSignal,
  ): Promise<FileContent> {
    const url = `${this.#o.endpoint}/${repo}/resolve/${commit}/${encodePath(file.path)}`;
    const headers: Record<string, string> = { "accept-encoding": "identity" };
    if (offset > 0) headers.range = `bytes=${offset}-`;
    const stall = new AbortController();
    const both = signal ? AbortSignal.any([signal, stall.signal]) : stall.signal;
    const timer = setTimeout(() => stall.abort(), this.#o.downloadTimeoutSeconds * 1000);
    let got: { response: Response; hub: Headers | undefined };
    try {
      got = await this.#get(url, headers, both, signal);
    } finally {
      clearTimeout(timer);
    }
    const { response, hub } = got;
    const ref = { repo, revision: commit };
    if (response.status === 416) {
      // the range starts at or past the end: the bytes on disk are not this file's; start over
      await response.body?.cancel();
      return await this.openFile(repo, commit, file, 0, signal);
    }
    if (!response.ok) throw await this.#error(response, ref, file.path);
    try {
      if (hub !== undefined) checkHubHeaders(hub, repo, commit, file);
      const start = contentStart(response, file, offset);
      return this.#content(response, start, stall);
    } catch (e) {
      await response.body?.cancel();
      throw e;
    }
  }

  #content(response: Response, start: number, stall: AbortController): FileContent {
    const reader = response.body?.getReader();
    const ms = this.#o.downloadTimeoutSeconds * 1000;
    return {
      start,
      read: async () => {
        if (reader === undefined) return undefined;
        const timer = setTimeout(() => stall.abort(), ms);
        try {
          const { value, done } = await reader.read();
          return done ? undefined : value;
        } catch (e) {
          if (stall.signal.aborted) {
            throw new HubError(`Download stalled: nothing received for ${ms / 1000} s`, {
              unreachable: true,
              cause: e,
            });
          }
          throw e;
        } finally {
          clearTimeout(timer);
        }
      },
      cancel: async () => {
        await reader?.cancel().catch(() => {});
      },
    };
  }

  /**
   * GETs `url`, following up to {@link MAX_REDIRECTS} redirects by hand so that the token reaches the
   * hub's origin only. Returns the final response and the headers of the hub's last answer (which
   * carry the file's metadata), if it answered. Network failures become unreachable `HubError`s;
   * an abort of `userSignal` is rethrown as is.
   */
  async #get(
    url: string,
    headers: Record<string, string>,
    signal: AbortSignal,
    userSignal: AbortSignal | undefined,
  ): Promise<{ response: Response; hub: Headers | undefined }> {
    let current = new URL(url);
    let hub: Headers | undefined;
    for (let hop = 0; hop <= MAX_REDIRECTS; hop++) {
      const h = new Headers(headers);
      h.set("user-agent", `swapmoe/0.1.0; deno/${Deno.version.deno}`);
      if (this.#o.token !== undefined && current.origin === this.#origin) {
        h.set("authorization", `Bearer ${this.#o.token}`);
      }
      let response: Response;
      try {
        response = await fetch(current, { headers: h, redirect: "manual", signal });
      } catch (e) {
        if (userSignal?.aborted) throw userSignal.reason;
        // fetch's "error sending request for url (…): client error (Connect): …: Connection refused"
        const reason = signal.aborted ? "no answer in time" : (e as Error).message.split(": ").at(-1);
        throw new HubError(`Cannot reach the hub at ${this.#o.endpoint}: ${reason}`, {
          unreachable: true,
          cause: e,
        });
      }
      if (current.origin === this.#origin && response.headers.has("x-repo-commit")) hub = response.headers;
      const location = response.headers.get("location");
      if (!REDIRECTS.has(response.status) || location === null) return { response, hub };
      await response.body?.cancel();
      current = new URL(location, current);
    }
    throw new HubError(`Too many redirects (more than ${MAX_REDIRECTS}) from ${url}`);
  }

  /** The HubError for an error answer, in words that say what to do. */
  async #error(response: Response, ref: ModelRef, file: string | undefined): Promise<HubError> {
    await response.body?.cancel();
    const status = response.status;
    const code = response.headers.get("x-error-code");
    const detail = response.headers.get("x-error-message");
    const page = `${this.#o.endpoint}/${ref.repo}`;
    const tail = ` (HTTP ${status}${detail ? `: ${detail}` : ""})`;
    const token = this.#o.token !== undefined;
    let message: string;
    if (status >= 500 || status === 429) {
      return new HubError(`The hub at ${this.#o.endpoint} is not answering normally${tail}`, {
        status,
        unreachable: true,
      });
    } else if (status === 401 && detail === "Invalid credentials in Authorization header") {
      message = `The hub refused HF_TOKEN as invalid: set HF_TOKEN to a valid token, or unset it${tail}`;
    } else if (code === "GatedRepo" || status === 403) {
      message = token
        ? `No access to ${ref.repo}: it is gated and HF_TOKEN's account has not been granted access; accept its terms at ${page}${tail}`
        : `No access to ${ref.repo}: it is gated; accept its terms at ${page} and set HF_TOKEN to a token of that account${tail}`;
    } else if (code === "RevisionNotFound") {
      message =
        `Revision not found: "${ref.revision}" of ${ref.repo}; name a branch, tag or commit that exists${tail}`;
    } else if (code === "EntryNotFound" || (status === 404 && file !== undefined)) {
      message = `File not found on the hub: ${file} of ${ref.repo} at ${ref.revision}${tail}`;
    } else if (status === 401 || status === 404) {
      // the hub answers 401 for a missing repository as for a private or gated one when no token is sent
      message = token
        ? `Model not found on the hub: ${ref.repo}; check the name (org/name, as in ${page}), or whether HF_TOKEN's account can see it${tail}`
        : `Model not found on the hub: ${ref.repo}; check the name (org/name, as in ${page}), or set HF_TOKEN if it is private or gated${tail}`;
    } else {
      message = `Unexpected answer from the hub for ${file ?? ref.repo}${tail}`;
    }
    return new HubError(message, { status });
  }
}

/** Reads the listing's JSON: `{sha, siblings: [{rfilename, size, blobId, lfs?: {sha256, size}}]}`. */
function parseListing(json: unknown, ref: ModelRef, endpoint: string): RepoListing {
  const o = json as { sha?: unknown; siblings?: unknown } | null;
  const bad = (why: string) =>
    new HubError(
      `The hub's file listing of ${ref.repo}@${ref.revision} is unusable: ${why} (from ${endpoint})`,
    );
  if (typeof o?.sha !== "string" || !SHA1.test(o.sha)) throw bad(`no commit hash in "sha"`);
  if (!Array.isArray(o.siblings)) throw bad(`no "siblings" list`);
  const files = new Map<string, HubFile>();
  for (const s of o.siblings as unknown[]) {
    const f = s as {
      rfilename?: unknown;
      size?: unknown;
      blobId?: unknown;
      lfs?: { sha256?: unknown; size?: unknown } | null;
    };
    if (typeof f?.rfilename !== "string") throw bad(`a file without "rfilename"`);
    const lfs = f.lfs ?? undefined;
    const size = lfs?.size ?? f.size;
    if (typeof size !== "number" || !Number.isSafeInteger(size) || size < 0) {
      throw bad(`no size for ${f.rfilename}; the endpoint must answer ?blobs=true with sizes and hashes`);
    }
    if (typeof f.blobId !== "string" || !SHA1.test(f.blobId)) throw bad(`no "blobId" for ${f.rfilename}`);
    if (lfs !== undefined && (typeof lfs.sha256 !== "string" || !SHA256.test(lfs.sha256))) {
      throw bad(`no "lfs.sha256" for the LFS file ${f.rfilename}`);
    }
    files.set(f.rfilename, {
      path: f.rfilename,
      size,
      blobId: f.blobId,
      sha256: lfs?.sha256 as string | undefined,
    });
  }
  return { commit: o.sha, files };
}

/** Refuses a hub answer whose commit, id or size disagrees with the listing. */
function checkHubHeaders(headers: Headers, repo: string, commit: string, file: HubFile): void {
  const disagree = (what: string, got: string, want: string) =>
    new HubError(
      `The hub's headers for ${file.path} of ${repo} disagree with its listing: ${what} ${got}, listed ${want}`,
    );
  const gotCommit = headers.get("x-repo-commit");
  if (gotCommit !== null && gotCommit !== commit) throw disagree("commit", gotCommit, commit);
  const id = normalizeEtag(headers.get("x-linked-etag") ?? headers.get("etag"));
  const want = file.sha256 ?? file.blobId;
  if (id !== undefined && id !== want) throw disagree("ETag", id, want);
  const linkedSize = headers.get("x-linked-size");
  if (linkedSize !== null && Number(linkedSize) !== file.size) {
    throw disagree("X-Linked-Size", linkedSize, String(file.size));
  }
}

/**
 * Where the body starts: `offset` for a 206 whose `Content-Range` starts there, 0 for a 200 (the server
 * ignored the range). Refuses a total or length that disagrees with the listed size.
 */
function contentStart(response: Response, file: HubFile, offset: number): number {
  const bad = (why: string) => new HubError(`The download of ${file.path} is not the listed file: ${why}`);
  const length = response.headers.get("content-length");
  if (response.status === 206) {
    const range = response.headers.get("content-range");
    const m = /^bytes (\d+)-(\d+)\/(\d+|\*)$/.exec(range ?? "");
    if (m === null) throw bad(`206 with Content-Range ${JSON.stringify(range)}`);
    if (m[3] !== "*" && Number(m[3]) !== file.size) {
      throw bad(`Content-Range total ${m[3]}, listed size ${file.size}`);
    }
    if (Number(m[1]) !== offset) throw bad(`Content-Range starts at ${m[1]}, asked for ${offset}`);
    return offset;
  }
  if (length !== null && Number(length) !== file.size) {
    throw bad(`Content-Length ${length}, listed size ${file.size}`);
  }
  return 0;
}
