/**
 * Model names on the hub: `org/name` with an optional `@revision` (a branch, tag or commit), checked as
 * huggingface_hub's `validate_repo_id` checks repo ids, and the file paths a repository may hold.
 *
 * @module
 */
import { OptionError } from "../errors.ts";

/** A model on the hub and the revision wanted. */
export interface ModelRef {
  /** `org/name`. */
  repo: string;
  /** A branch, tag or commit hash; `main` when the name gave none. */
  revision: string;
}

/** The revision when a name gives none, as on the hub. */
export const DEFAULT_REVISION = "main";

// huggingface_hub's REPO_ID_REGEX, with the namespace required: org/name
const REPO_ID = /^\b[\w\-.]+\b\/\b[\w\-.]+\b$/;
const COMMIT_HASH = /^[0-9a-f]{40}$/;

/** Whether `revision` is a full commit hash (40 lowercase hex digits) rather than a branch or tag. */
export function isCommitHash(revision: string): boolean {
  return COMMIT_HASH.test(revision);
}

/** Why `repo` is not a valid repo id, or `undefined` when it is. */
function repoIdProblem(repo: string): string | undefined {
  if (!REPO_ID.test(repo)) return "expected org/name of letters, digits, '-', '_' and '.'";
  if (repo.includes("--") || repo.includes("..")) return "'--' and '..' are not allowed";
  if (repo.endsWith(".git")) return "it cannot end with .git";
  if (repo.length > 96) return "it is longer than 96 characters";
  return undefined;
}

/** Why `revision` is unusable, or `undefined` when it is fine (`refs/pr/1` is fine, `../x` is not). */
function revisionProblem(revision: string): string | undefined {
  if (revision === "") return "it is empty";
  if (/\s|\\/.test(revision)) return "it has a space or a backslash";
  if (revision.split("/").some((s) => s === "" || s === "." || s === "..")) {
    return "it has an empty, '.' or '..' path segment";
  }
  return undefined;
}

/** Throws an `OptionError` when `revision` cannot name a branch, tag or commit (for `--revision`). */
export function checkRevision(revision: string): void {
  const problem = revisionProblem(revision);
  if (problem !== undefined) throw new OptionError(`Invalid revision: "${revision}": ${problem}`);
}

/**
 * Parses `org/name[@revision]`; `undefined` when `name` does not have that form (a path such as
 * `./models/x` or `a/b/c`). A name of that form with a bad revision throws an `OptionError`.
 */
export function parseModelName(name: string): ModelRef | undefined {
  const at = name.indexOf("@");
  const repo = at < 0 ? name : name.slice(0, at);
  if (repoIdProblem(repo) !== undefined) return undefined;
  const revision = at < 0 ? DEFAULT_REVISION : name.slice(at + 1);
  const problem = revisionProblem(revision);
  if (problem !== undefined) throw new OptionError(`Invalid revision in "${name}": ${problem}`);
  return { repo, revision };
}

/**
 * Whether `path` (a repository file path from the hub or from an index's weight map) is safe to place
 * under a snapshot folder: relative, `/`-separated, no empty, `.` or `..` segment.
 */
export function isSafeRepoPath(path: string): boolean {
  return path !== "" && !path.includes("\\") && !path.includes("\0") &&
    path.split("/").every((s) => s !== "" && s !== "." && s !== "..");
}
