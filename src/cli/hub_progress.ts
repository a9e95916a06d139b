/**
 * Resolving `--model org/name` (and `pull`) with a byte progress bar on stderr: a bar with rate and ETA
 * when interactive, a plain line every few seconds otherwise; then the offline notice, if any.
 *
 * @module
 */
import { formatBytes } from "../../mod.ts";
import { type DownloadProgress, pullModel, type ResolvedModel, resolveModel } from "../hub/mod.ts";
import { bar, formatDuration, STDERR } from "./progress.ts";

/** The environment variables of the hub, for the help texts. */
export const HUB_ENVIRONMENT = `Environment:
  HF_ENDPOINT             The hub's address, for a mirror; default https://huggingface.co
  HF_TOKEN                A token, for gated and private models
  HF_HUB_CACHE            The cache folder; default $HF_HOME/hub, else ~/.cache/huggingface/hub
  HF_HUB_OFFLINE=1        Use the cache only`;

/** A rate over the last `windowMs` milliseconds of samples. */
export class RateMeter {
  readonly #samples: { t: number; bytes: number }[] = [];
  /** Creates a meter averaging over `windowMs`. */
  constructor(readonly windowMs = 5000) {}

  /** Records that `bytes` in all had been received at time `t` (milliseconds). */
  add(t: number, bytes: number): void {
    this.#samples.push({ t, bytes });
    while (this.#samples.length > 2 && t - this.#samples[0]!.t > this.windowMs) this.#samples.shift();
  }

  /** Bytes per second over the window; 0 until two samples lie apart in time. */
  rate(): number {
    const first = this.#samples[0];
    const last = this.#samples.at(-1);
    if (first === undefined || last === undefined || last.t <= first.t) return 0;
    return ((last.bytes - first.bytes) * 1000) / (last.t - first.t);
  }
}

/** `1.2 MiB of 3.4 MiB (35%) · 2.1 MiB/s · ETA 1s`. */
export function progressText(p: DownloadProgress, rate: number): string {
  const percent = p.totalBytes > 0 ? Math.floor((100 * p.bytes) / p.totalBytes) : 100;
  const eta = rate > 0 ? formatDuration((p.totalBytes - p.bytes) / rate) : "?";
  return `${formatBytes(p.bytes)} of ${formatBytes(p.totalBytes)} (${percent}%) · ${
    formatBytes(Math.round(rate))
  }/s · ETA ${eta}`;
}

/** Seconds between plain progress lines when stderr is not a terminal. */
const PLAIN_INTERVAL_MS = 5000;

/**
 * Resolves `name` (a folder, or `org/name[@revision]` on the hub) to a local folder, drawing progress on
 * stderr: a bar when `interactive`, else a line every few seconds. `pull` makes a local folder of the
 * same name no obstacle. Prints the offline notice and, after a download, one summary line.
 */
export async function resolveWithProgress(
  name: string,
  options: { interactive: boolean; pull?: boolean; revision?: string; offline?: boolean },
): Promise<ResolvedModel> {
  const meter = new RateMeter();
  const started = Date.now();
  let drawn = false;
  let lastLine = 0;
  const onProgress = (p: DownloadProgress) => {
    const now = Date.now();
    meter.add(now, p.receivedBytes);
    if (options.interactive) {
      const share = p.totalBytes > 0 ? p.bytes / p.totalBytes : 1;
      STDERR.write(
        `\r\x1b[Kfile ${p.fileIndex} of ${p.fileCount} ${bar(share)} ${progressText(p, meter.rate())}`,
      );
      drawn = true;
    } else if (lastLine === 0) {
      lastLine = now;
      console.error(
        `Downloading ${p.repo} (commit ${p.commit.slice(0, 7)}): ${p.fileCount} files, ${
          formatBytes(p.totalBytes)
        }`,
      );
    } else if (now - lastLine >= PLAIN_INTERVAL_MS) {
      lastLine = now;
      // files come side by side: the count says how far, the file is one of those in flight
      console.error(`  file ${p.fileIndex} of ${p.fileCount} (${p.file}): ${progressText(p, meter.rate())}`);
    }
  };
  let resolved: ResolvedModel;
  try {
    const o = { onProgress, revision: options.revision, offline: options.offline };
    resolved = options.pull ? await pullModel(name, o) : await resolveModel(name, o);
  } finally {
    if (drawn) STDERR.write("\r\x1b[K");
  }
  const label = `${resolved.repo}@${resolved.revision} (commit ${resolved.commit?.slice(0, 7)})`;
  if (resolved.message !== undefined) console.error(resolved.message);
  else if (options.pull && resolved.fromCache) console.error(`Already in the cache: ${label}`);
  if (resolved.downloadedBytes > 0) {
    const seconds = Math.max((Date.now() - started) / 1000, 1e-3);
    const took = seconds < 60 ? `${seconds.toFixed(1)}s` : formatDuration(seconds);
    const rate = formatBytes(Math.round(resolved.downloadedBytes / seconds));
    console.error(`Downloaded ${label}: ${formatBytes(resolved.downloadedBytes)} in ${took}, ${rate}/s`);
  }
  return resolved;
}
