/**
 * The Hugging Face hub cache, in huggingface_hub's layout (`file_download.py`), so that models that
 * Python tools downloaded are found here and the other way round:
 *
 * ```
 * <cache>/models--org--name/
 *   blobs/<sha256 of LFS files, git blob id of others>     verified content
 *   blobs/<id>.incomplete                                   a download under way, resumed from its size
 *   snapshots/<commit>/<path> -> ../../blobs/<id>           relative symlinks, one folder per commit
 *   refs/<revision>                                         the commit a branch or tag last resolved to
 * <cache>/.locks/models--org--name/<id>.lock                one writer per blob
 * ```
 *
 * A blob appears only once verified (renamed from its `.incomplete`), and a snapshot only links blobs,
 * so nothing unverified is ever reachable from `snapshots/`.
 *
 * @module
 */
import { dirname, join, relative } from "node:path";
import { missingCheckpointFiles } from "./files.ts";
import { isCommitHash } from "./names.ts";

// huggingface_hub's repo_folder_name: "models" + REPO_ID_SEPARATOR ("--") + org + "--" + name
const PREFIX = "models--";

/** One commit of a cached model. */
export interface CachedSnapshot {
  /** The commit hash (the folder's name). */
  commit: string;
  /** The snapshot folder, usable as a model folder when `complete`. */
  dir: string;
  /** Files in it, relative, sorted. */
  files: string[];
  /** Whether it holds a whole checkpoint (config.json and all weights). */
  complete: boolean;
}

/** A model in the cache, as `list` shows it. */
export interface CachedModel {
  /** `org/name`. */
  repo: string;
  /** `<cache>/models--org--name`. */
  dir: string;
  /** Bytes of verified blobs. */
  bytes: number;
  /** Bytes of partial downloads (`blobs/*.incomplete`), resumed by the next pull. */
  incompleteBytes: number;
  /** Revision (branch or tag) → the commit it resolved to. */
  refs: Record<string, string>;
  /** One entry per commit in `snapshots/`. */
  snapshots: CachedSnapshot[];
}

function statOrUndefined(path: string): Deno.FileInfo | undefined {
  try {
    return Deno.statSync(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound || e instanceof Deno.errors.NotADirectory) return undefined;
    throw e;
  }
}

function readDirOrEmpty(path: string): Deno.DirEntry[] {
  try {
    return [...Deno.readDirSync(path)];
  } catch (e) {
    if (e instanceof Deno.errors.NotFound || e instanceof Deno.errors.NotADirectory) return [];
    throw e;
  }
}

/** Files under `dir` (symlinks included, followed by `stat` elsewhere), as `/`-separated relative paths. */
function walkFiles(dir: string, prefix = ""): string[] {
  const out: string[] = [];
  for (const e of readDirOrEmpty(dir)) {
    const rel = prefix === "" ? e.name : `${prefix}/${e.name}`;
    if (e.isDirectory) out.push(...walkFiles(join(dir, e.name), rel));
    else out.push(rel);
  }
  return out.sort();
}

/** The hub cache rooted at `root` (see the module's documentation for the layout). */
export class HubCache {
  /** Creates a view of the cache at `root`; nothing is created until something is stored. */
  constructor(readonly root: string) {}

  /** `<root>/models--org--name`. */
  repoDir(repo: string): string {
    return join(this.root, PREFIX + repo.split("/").join("--"));
  }

  /** `blobs/<id>`: verified content. */
  blobPath(repo: string, id: string): string {
    return join(this.repoDir(repo), "blobs", id);
  }

  /** `blobs/<id>.incomplete`: a download under way. */
  incompletePath(repo: string, id: string): string {
    return `${this.blobPath(repo, id)}.incomplete`;
  }

  /** `<root>/.locks/models--org--name/<id>.lock`, as huggingface_hub names its locks. */
  lockPath(repo: string, id: string): string {
    return join(this.root, ".locks", PREFIX + repo.split("/").join("--"), `${id}.lock`);
  }

  /** `snapshots/<commit>`. */
  snapshotDir(repo: string, commit: string): string {
    return join(this.repoDir(repo), "snapshots", commit);
  }

  /** The commit `revision` last resolved to (`refs/<revision>`), if recorded. */
  readRef(repo: string, revision: string): string | undefined {
    try {
      const commit = Deno.readTextFileSync(join(this.repoDir(repo), "refs", revision)).trim();
      return isCommitHash(commit) ? commit : undefined;
    } catch {
      return undefined;
    }
  }

  /** Records that `revision` resolved to `commit` (nothing for a commit hash), atomically. */
  writeRef(repo: string, revision: string, commit: string): void {
    if (revision === commit) return;
    const path = join(this.repoDir(repo), "refs", revision);
    if (this.readRef(repo, revision) === commit) return;
    Deno.mkdirSync(dirname(path), { recursive: true });
    const tmp = `${path}.${crypto.randomUUID().slice(0, 8)}.tmp`;
    Deno.writeTextFileSync(tmp, commit);
    Deno.renameSync(tmp, path);
  }

  /** The commit of `revision` in the cache: a commit hash as is, a branch or tag through its ref. */
  commitOf(repo: string, revision: string): string | undefined {
    return isCommitHash(revision) ? revision : this.readRef(repo, revision);
  }

  /** Whether `snapshots/<commit>/<path>` exists and leads to a file. */
  hasFile(repo: string, commit: string, path: string): boolean {
    return statOrUndefined(join(this.snapshotDir(repo, commit), path))?.isFile ?? false;
  }

  /** The size of `blobs/<id>`, or `undefined` when there is no such blob. */
  blobSize(repo: string, id: string): number | undefined {
    const info = statOrUndefined(this.blobPath(repo, id));
    return info?.isFile ? info.size : undefined;
  }

  /** Points `snapshots/<commit>/<path>` at `blobs/<id>` with a relative symlink, as huggingface_hub does. */
  link(repo: string, commit: string, path: string, id: string): void {
    const link = join(this.snapshotDir(repo, commit), path);
    Deno.mkdirSync(dirname(link), { recursive: true });
    const target = relative(dirname(link), this.blobPath(repo, id));
    try {
      Deno.removeSync(link);
    } catch (e) {
      if (!(e instanceof Deno.errors.NotFound)) throw e;
    }
    Deno.symlinkSync(target, link);
  }

  /** The cached model `repo`, or `undefined` when the cache holds nothing of it. */
  inspect(repo: string): CachedModel | undefined {
    const dir = this.repoDir(repo);
    if (!statOrUndefined(dir)?.isDirectory) return undefined;
    let bytes = 0;
    let incompleteBytes = 0;
    for (const e of readDirOrEmpty(join(dir, "blobs"))) {
      const info = statOrUndefined(join(dir, "blobs", e.name));
      if (!info?.isFile) continue;
      if (e.name.endsWith(".incomplete")) incompleteBytes += info.size;
      else bytes += info.size;
    }
    const refs: Record<string, string> = {};
    for (const revision of walkFiles(join(dir, "refs"))) {
      const commit = this.readRef(repo, revision);
      if (commit !== undefined) refs[revision] = commit;
    }
    const snapshots = readDirOrEmpty(join(dir, "snapshots"))
      .filter((e) => e.isDirectory)
      .map((e) => {
        const snapshot = join(dir, "snapshots", e.name);
        return {
          commit: e.name,
          dir: snapshot,
          files: walkFiles(snapshot),
          complete: missingCheckpointFiles(snapshot).length === 0,
        };
      })
      .sort((a, b) => a.commit.localeCompare(b.commit));
    return { repo, dir, bytes, incompleteBytes, refs, snapshots };
  }

  /** Every cached model (`models--*` folders), sorted by name. */
  list(): CachedModel[] {
    return readDirOrEmpty(this.root)
      .filter((e) => e.isDirectory && e.name.startsWith(PREFIX) && e.name.length > PREFIX.length)
      .map((e) => this.inspect(e.name.slice(PREFIX.length).split("--").join("/")))
      .filter((m): m is CachedModel => m !== undefined)
      .sort((a, b) => a.repo.localeCompare(b.repo));
  }

  /** Deletes `repo` from the cache (its folder and its locks); returns what was there, if anything. */
  remove(repo: string): CachedModel | undefined {
    const model = this.inspect(repo);
    if (model === undefined) return undefined;
    Deno.removeSync(model.dir, { recursive: true });
    try {
      Deno.removeSync(dirname(this.lockPath(repo, "x")), { recursive: true });
    } catch {
      // no locks left behind
    }
    return model;
  }
}
