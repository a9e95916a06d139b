/**
 * A fake Hugging Face hub for the tests: two local HTTP servers on ephemeral ports, the hub and a "CDN"
 * on another origin, serving folders as model repositories through the hub's routes with its headers:
 *
 * - `GET /api/models/{org}/{name}/revision/{rev}[?blobs=true]`: `{id, sha, siblings}`, with `size`,
 *   `blobId` and, for LFS files (`*.safetensors`), `lfs: {sha256, size, pointerSize}` when `blobs=true`;
 * - `GET|HEAD /{org}/{name}/resolve/{rev}/{path}`: LFS files answer 302 to the CDN with
 *   `X-Repo-Commit`, `X-Linked-Etag`, `X-Linked-Size`; other files answer 200 (or 206 for a `Range`)
 *   with `X-Repo-Commit` and `ETag`;
 * - errors with `X-Error-Code` and `X-Error-Message` as the hub sends them: 401 `RepoNotFound` for an
 *   unknown repository without a token, 401 `GatedRepo` for a gated one without a token, 403 with a
 *   token that has no access, 404 `RevisionNotFound` and `EntryNotFound`.
 *
 * Faults on demand: a file served corrupted (same size, one byte flipped), a listed file that answers
 * 404, a connection dropped or stalled after N bytes (once), `Range` ignored, every connection's body
 * paced to a rate (as a CDN gives one connection). Every request is logged.
 */
import { createHash } from "node:crypto";
import { join, relative } from "node:path";

/** A repository the fake hub serves. */
export interface FakeRepo {
  /** The folder whose files (recursively) the repository holds. */
  dir: string;
  /** The commit `main` resolves to (40 hex digits). */
  commit: string;
  /** When set, the repository is gated: requests need `Authorization: Bearer <token>`. */
  token?: string;
  /** Paths served with one byte flipped; the listing keeps the true hashes. */
  corrupt?: string[];
  /** Paths listed but answering 404 `EntryNotFound`. */
  missing?: string[];
  /** Path → bytes after which the first download of it is cut off. */
  dropAfter?: Record<string, number>;
  /** Path → bytes after which the first download of it stalls: the connection stays open, silent. */
  stallAfter?: Record<string, number>;
  /** Answer `Range` requests with the whole file (200), as some CDNs do. */
  ignoreRange?: boolean;
  /** Send each body at this many bytes a second, in 16 KiB chunks (per connection). */
  bytesPerSecond?: number;
  /** Extra files, path → content. */
  extra?: Record<string, string>;
}

/** One request as the fake hub saw it. */
export interface LogEntry {
  server: "hub" | "cdn";
  method: string;
  /** The URL's path and query. */
  path: string;
  status: number;
  /** The `Range` header, if any. */
  range?: string;
  /** The `Authorization` header, if any. */
  authorization?: string;
}

/** A running fake hub. */
export interface FakeHub extends AsyncDisposable {
  /** `http://127.0.0.1:<port>`: what `HF_ENDPOINT` is set to. */
  endpoint: string;
  /** The CDN's origin, another port. */
  cdn: string;
  log: LogEntry[];
  /** The repositories' files as served: repo → path → file. */
  files: Map<string, Map<string, FakeFile>>;
  /** The most paced bodies (`bytesPerSecond`) that were being sent at once. */
  readonly peakPacedBodies: number;
}

/** One served file. */
export interface FakeFile {
  path: string;
  bytes: Uint8Array<ArrayBuffer>;
  lfs: boolean;
  sha256: string;
  /** The git blob id: of the content, or of the LFS pointer for an LFS file (as the hub lists it). */
  blobId: string;
  /** The CDN's ETag, an md5 as S3 gives. */
  md5: string;
}

const hex = (algo: string, ...parts: (string | Uint8Array)[]): string => {
  const h = createHash(algo);
  for (const p of parts) h.update(p);
  return h.digest("hex");
};
const gitBlobId = (bytes: Uint8Array): string => hex("sha1", `blob ${bytes.length}\0`, bytes);

function walk(dir: string): string[] {
  const out: string[] = [];
  for (const e of Deno.readDirSync(dir)) {
    const p = join(dir, e.name);
    if (e.isDirectory) out.push(...walk(p));
    else out.push(p);
  }
  return out;
}

function loadFiles(repo: FakeRepo): Map<string, FakeFile> {
  const files = new Map<string, FakeFile>();
  const add = (path: string, bytes: Uint8Array<ArrayBuffer>) => {
    const lfs = path.endsWith(".safetensors");
    const sha256 = hex("sha256", bytes);
    const pointer =
      `version https://git-lfs.github.com/spec/v1\noid sha256:${sha256}\nsize ${bytes.length}\n`;
    const blobId = gitBlobId(lfs ? new TextEncoder().encode(pointer) : bytes);
    files.set(path, { path, bytes, lfs, sha256, blobId, md5: hex("md5", bytes) });
  };
  for (const p of walk(repo.dir)) add(relative(repo.dir, p), Deno.readFileSync(p));
  for (const [p, text] of Object.entries(repo.extra ?? {})) add(p, new TextEncoder().encode(text));
  return files;
}

/** `bytes=a-` or `bytes=a-b` → [start, end] within `size`; `null` when unsatisfiable; `undefined` when absent. */
function parseRange(header: string | null, size: number): [number, number] | null | undefined {
  if (header === null) return undefined;
  const m = /^bytes=(\d+)-(\d*)$/.exec(header);
  if (m === null) return undefined;
  const start = Number(m[1]);
  const end = m[2] === "" ? size - 1 : Math.min(Number(m[2]), size - 1);
  return start >= size || end < start ? null : [start, end];
}

/** Starts the fake hub serving `repos` (repo id → repository). */
export function startFakeHub(repos: Record<string, FakeRepo>): FakeHub {
  const log: LogEntry[] = [];
  const files = new Map(Object.entries(repos).map(([id, r]) => [id, loadFiles(r)]));
  const dropped = new Set<string>();

  const record = (server: LogEntry["server"], req: Request, res: Response): Response => {
    const u = new URL(req.url);
    const entry: LogEntry = { server, method: req.method, path: u.pathname + u.search, status: res.status };
    const range = req.headers.get("range");
    const authorization = req.headers.get("authorization");
    if (range !== null) entry.range = range;
    if (authorization !== null) entry.authorization = authorization;
    log.push(entry);
    return res;
  };

  const error = (status: number, code: string | undefined, message: string): Response =>
    new Response(JSON.stringify({ error: message }), {
      status,
      headers: {
        "content-type": "application/json",
        "x-error-message": message,
        ...(code ? { "x-error-code": code } : {}),
      },
    });

  let pacedBodies = 0;
  let peakPacedBodies = 0;
  /** `bytes` sent in 16 KiB chunks at `rate` bytes a second. */
  const paced = (bytes: Uint8Array, rate: number): ReadableStream<Uint8Array> => {
    const CHUNK = 16 << 10;
    let at = 0;
    let timer: ReturnType<typeof setTimeout> | undefined;
    return new ReadableStream<Uint8Array>({
      start() {
        peakPacedBodies = Math.max(peakPacedBodies, ++pacedBodies);
      },
      pull(c) {
        return new Promise<void>((resolve) => {
          timer = setTimeout(() => {
            const chunk = bytes.slice(at, at + CHUNK);
            at += chunk.length;
            c.enqueue(chunk);
            if (at >= bytes.length) {
              pacedBodies--;
              c.close();
            }
            resolve();
          }, (1000 * Math.min(CHUNK, bytes.length - at)) / rate);
        });
      },
      cancel() {
        clearTimeout(timer);
        pacedBodies--;
      },
    });
  };

  /** The served bytes of `f` (corrupted when asked), from `start` to `end`, cut off once when asked. */
  const body = (repoId: string, f: FakeFile, start: number, end: number): BodyInit => {
    const repo = repos[repoId]!;
    let bytes = f.bytes;
    if (repo.corrupt?.includes(f.path)) {
      bytes = bytes.slice();
      bytes[bytes.length >> 1]! ^= 0xff;
    }
    const slice = bytes.subarray(start, end + 1);
    if (repo.bytesPerSecond !== undefined) return paced(slice, repo.bytesPerSecond);
    const stall = repo.stallAfter?.[f.path];
    const cut = repo.dropAfter?.[f.path] ?? stall;
    const key = `${repoId}/${f.path}`;
    if (cut === undefined || dropped.has(key) || cut - start >= slice.length) return slice;
    dropped.add(key);
    let timer: ReturnType<typeof setTimeout> | undefined;
    return new ReadableStream<Uint8Array>({
      start(c) {
        c.enqueue(slice.slice(0, cut - start));
        // the client has the first bytes; then the body ends short of its Content-Length, and the
        // server drops the connection (or, stalling, sends nothing more until the client gives up)
        if (stall === undefined) timer = setTimeout(() => c.close(), 50);
      },
      cancel() {
        clearTimeout(timer);
      },
    });
  };

  /** 200 or 206 with the file's content, honouring `Range`. */
  const content = (req: Request, repoId: string, f: FakeFile, headers: Record<string, string>): Response => {
    const size = f.bytes.length;
    const range = repos[repoId]!.ignoreRange ? undefined : parseRange(req.headers.get("range"), size);
    const common = { ...headers, "accept-ranges": "bytes", "content-type": "application/octet-stream" };
    if (range === null) {
      return new Response(null, { status: 416, headers: { ...common, "content-range": `bytes */${size}` } });
    }
    const [start, end] = range ?? [0, size - 1];
    const h = { ...common, "content-length": String(end - start + 1) };
    const b = req.method === "HEAD" ? null : body(repoId, f, start, end);
    if (range === undefined) return new Response(b, { status: 200, headers: h });
    return new Response(b, {
      status: 206,
      headers: { ...h, "content-range": `bytes ${start}-${end}/${size}` },
    });
  };

  /** Why `req` may not see `repoId` (gated), or `undefined`. */
  const denied = (req: Request, repoId: string): Response | undefined => {
    const token = repos[repoId]!.token;
    if (token === undefined) return undefined;
    const auth = req.headers.get("authorization");
    if (auth === `Bearer ${token}`) return undefined;
    if (auth === "Bearer hf_invalid") {
      return error(401, undefined, "Invalid credentials in Authorization header");
    }
    const message =
      `Access to model ${repoId} is restricted. You must have access to it and be authenticated to access it. Please log in.`;
    return error(auth === null ? 401 : 403, "GatedRepo", message);
  };

  const notFound = (req: Request): Response =>
    req.headers.has("authorization")
      ? error(404, "RepoNotFound", "Repository not found")
      : error(401, "RepoNotFound", "Invalid username or password.");

  let cdnOrigin = "";
  const hubHandler = (req: Request): Response => {
    const u = new URL(req.url);
    const api = /^\/api\/models\/([^/]+\/[^/]+)\/revision\/([^/]+)$/.exec(u.pathname);
    const resolve = /^\/([^/]+\/[^/]+)\/resolve\/([^/]+)\/(.+)$/.exec(u.pathname);
    const m = api ?? resolve;
    if (m === null) return error(404, undefined, "Not found");
    const repoId = m[1]!;
    const repo = repos[repoId];
    if (repo === undefined) return notFound(req);
    const no = denied(req, repoId);
    if (no !== undefined) return no;
    const revision = decodeURIComponent(m[2]!);
    if (revision !== "main" && revision !== repo.commit) {
      return error(404, "RevisionNotFound", `Invalid rev id: ${revision}`);
    }
    const repoFiles = files.get(repoId)!;
    if (api !== null) {
      const blobs = u.searchParams.get("blobs") === "true";
      const siblings = [...repoFiles.values()].map((f) =>
        blobs
          ? {
            rfilename: f.path,
            size: f.bytes.length,
            blobId: f.blobId,
            ...(f.lfs ? { lfs: { sha256: f.sha256, size: f.bytes.length, pointerSize: 134 } } : {}),
          }
          : { rfilename: f.path }
      );
      return Response.json({ _id: "x", id: repoId, sha: repo.commit, private: false, siblings });
    }
    const path = m[3]!.split("/").map(decodeURIComponent).join("/");
    const f = repoFiles.get(path);
    if (f === undefined || repo.missing?.includes(path)) {
      return error(404, "EntryNotFound", "Entry not found");
    }
    const meta = { "x-repo-commit": repo.commit };
    if (f.lfs) {
      const location = `${cdnOrigin}/lfs/${f.sha256}?file=${encodeURIComponent(path)}&X-Amz-Signature=fake`;
      return new Response(`Found. Redirecting to ${location}`, {
        status: 302,
        headers: {
          ...meta,
          location,
          etag: `W/"${f.blobId}"`,
          "x-linked-etag": `"${f.sha256}"`,
          "x-linked-size": String(f.bytes.length),
        },
      });
    }
    return content(req, repoId, f, { ...meta, etag: `"${f.blobId}"` });
  };

  const cdnHandler = (req: Request): Response => {
    const u = new URL(req.url);
    const m = /^\/lfs\/([0-9a-f]{64})$/.exec(u.pathname);
    for (const [repoId, repoFiles] of files) {
      for (const f of repoFiles.values()) {
        if (m !== null && f.lfs && f.sha256 === m[1]) {
          return content(req, repoId, f, { etag: `"${f.md5}"` });
        }
      }
    }
    return new Response("NoSuchKey", { status: 404 });
  };

  const quiet = { hostname: "127.0.0.1", port: 0, onListen() {} };
  const hub = Deno.serve(quiet, (req) => record("hub", req, hubHandler(req)));
  const cdn = Deno.serve(quiet, (req) => record("cdn", req, cdnHandler(req)));
  cdnOrigin = `http://127.0.0.1:${cdn.addr.port}`;
  return {
    endpoint: `http://127.0.0.1:${hub.addr.port}`,
    cdn: cdnOrigin,
    log,
    files,
    get peakPacedBodies() {
      return peakPacedBodies;
    },
    async [Symbol.asyncDispose]() {
      await Promise.all([hub.shutdown(), cdn.shutdown()]);
    },
  };
}
