/**
 * Where the hub is and where its files go, from the environment variables that huggingface_hub reads
 * (its `constants.py`), so that swapmoe and Python tools share one cache and one token.
 *
 * @module
 */
import { join } from "node:path";
import { HubError } from "../errors.ts";

/** The hub's address when `$HF_ENDPOINT` is not set. */
export const DEFAULT_ENDPOINT = "https://huggingface.co";

/** What {@link hubSettings} reads from the environment. */
export interface HubSettings {
  /** `$HF_ENDPOINT` without a trailing slash, else {@link DEFAULT_ENDPOINT}. */
  endpoint: string;
  /** `$HF_TOKEN`, else the token file `hf auth login` writes (`$HF_TOKEN_PATH`, else `$HF_HOME/token`). */
  token: string | undefined;
  /** `$HF_HUB_CACHE`, else `$HF_HOME/hub`, else `$XDG_CACHE_HOME/huggingface/hub`, else `~/.cache/huggingface/hub`. */
  cacheDir: string;
  /** `$HF_HUB_OFFLINE` is 1, true, yes or on: the cache only, no requests. */
  offline: boolean;
  /** Seconds to wait for the file listing (`$HF_HUB_ETAG_TIMEOUT`, default 10). */
  metadataTimeoutSeconds: number;
  /** Seconds a download may receive nothing before it is retried (`$HF_HUB_DOWNLOAD_TIMEOUT`, default 10). */
  downloadTimeoutSeconds: number;
}

/** Reads one variable; `undefined` when unset, empty, or not readable under the granted permissions. */
export type EnvReader = (name: string) => string | undefined;

// a variable or file not granted reads as absent: asked first, so that a terminal gets no permission prompt
function denoEnv(name: string): string | undefined {
  try {
    if (Deno.permissions.querySync({ name: "env", variable: name }).state !== "granted") return undefined;
    const v = Deno.env.get(name);
    return v === "" ? undefined : v;
  } catch {
    return undefined;
  }
}

// huggingface_hub's _is_true
const TRUE = new Set(["1", "ON", "YES", "TRUE"]);

/** `~` and `~/…` → the home folder (huggingface_hub expands them, and so do shells). */
function expandHome(path: string, env: EnvReader): string {
  if (path !== "~" && !path.startsWith("~/")) return path;
  const home = env("HOME") ?? env("USERPROFILE");
  return home === undefined ? path : join(home, path.slice(1));
}

function seconds(value: string | undefined, fallback: number): number {
  const n = Number(value);
  return value !== undefined && Number.isFinite(n) && n > 0 ? n : fallback;
}

/**
 * The hub settings from the environment (`env` reads a variable; default `Deno.env`). Throws `HubError`
 * when no cache folder can be named (no `HF_HUB_CACHE`, `HF_HOME` nor `HOME`).
 */
export function hubSettings(env: EnvReader = denoEnv): HubSettings {
  const home = expandHome(
    env("HF_HOME") ?? join(env("XDG_CACHE_HOME") ?? join(env("HOME") ?? "~", ".cache"), "huggingface"),
    env,
  );
  // HUGGINGFACE_HUB_CACHE: the older name of HF_HUB_CACHE, still read by huggingface_hub
  const cacheDir = expandHome(env("HF_HUB_CACHE") ?? env("HUGGINGFACE_HUB_CACHE") ?? join(home, "hub"), env);
  if (cacheDir === "~" || cacheDir.startsWith("~/")) {
    // a folder literally named "~" in the working directory would be a surprise
    throw new HubError(
      "Cannot place the hub cache: HOME is not set or not readable; set HF_HUB_CACHE, or allow reading the environment (--allow-env)",
    );
  }
  return {
    endpoint: (env("HF_ENDPOINT") ?? DEFAULT_ENDPOINT).replace(/\/+$/, ""),
    token: env("HF_TOKEN") ?? readTokenFile(expandHome(env("HF_TOKEN_PATH") ?? join(home, "token"), env)),
    cacheDir,
    offline: TRUE.has((env("HF_HUB_OFFLINE") ?? "").toUpperCase()),
    metadataTimeoutSeconds: seconds(env("HF_HUB_ETAG_TIMEOUT"), 10),
    downloadTimeoutSeconds: seconds(env("HF_HUB_DOWNLOAD_TIMEOUT"), 10),
  };
}

function readTokenFile(path: string): string | undefined {
  try {
    if (Deno.permissions.querySync({ name: "read", path }).state !== "granted") return undefined;
    const token = Deno.readTextFileSync(path).trim();
    return token === "" ? undefined : token;
  } catch {
    // no token saved, or not readable under the granted permissions
    return undefined;
  }
}
