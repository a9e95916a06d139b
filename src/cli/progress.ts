/**
 * Progress on stderr: a bar while a model loads (bytes with rate and time left when the engine
 * reports them, else steps), and a counter with time left for long loops such as `eval`'s windows.
 * On a terminal a line redraws itself; otherwise plain lines come every {@link PLAIN_EVERY_MS} so
 * that a log or a pipe shows the run is alive.
 *
 * @module
 */
import { formatBytes, type Progress } from "../../mod.ts";

/** Between plain progress lines when stderr is not a terminal, in milliseconds. */
export const PLAIN_EVERY_MS = 10_000;
/** Between redraws of a terminal line, in milliseconds. */
const REDRAW_EVERY_MS = 100;
const BAR_WIDTH = 24;

/** {@link Progress}, which carries byte counts for the stages that move bytes. */
export type ByteProgress = Progress;

/** A duration for people: `8.2 s`, `42 s`, `3 min 05 s`, `1 h 02 min`. */
export function formatDuration(seconds: number): string {
  if (!Number.isFinite(seconds) || seconds < 0) return "?";
  if (seconds < 10) return `${seconds.toFixed(1)} s`;
  if (seconds < 60) return `${Math.round(seconds)} s`;
  const s = Math.round(seconds);
  if (s < 3600) return `${Math.floor(s / 60)} min ${String(s % 60).padStart(2, "0")} s`;
  const m = Math.round(s / 60);
  return `${Math.floor(m / 60)} h ${String(m % 60).padStart(2, "0")} min`;
}

/** Time left at the average rate so far: `elapsed × (total − done) ÷ done`; undefined before any. */
export function timeLeft(done: number, total: number, elapsedSeconds: number): number | undefined {
  if (!(done > 0) || !(total >= done) || !(elapsedSeconds > 0)) return undefined;
  return (elapsedSeconds * (total - done)) / done;
}

/** `[████░░░░]` for a share in [0, 1]. */
export function bar(share: number, width = BAR_WIDTH): string {
  const filled = Math.round(Math.min(1, Math.max(0, share)) * width);
  return `[${"█".repeat(filled)}${"░".repeat(width - filled)}]`;
}

const STAGE_LABELS: Record<Progress["stage"], string> = {
  download: "Downloading",
  config: "Reading config",
  checkpoint: "Mapping weights",
  quantize: "Quantizing experts",
  tokenizer: "Loading tokenizer",
  gpu: "Opening GPU",
  weights: "Uploading weights",
  experts: "Uploading experts",
  ready: "Ready",
};

/**
 * One line of load progress: the stage, a bar, and bytes with rate and time left when `p` carries
 * `bytes` and `totalBytes` (measured from `since`, the first report of the stage), else `done/total`.
 */
export function loadLine(p: ByteProgress, since: { ms: number; bytes: number }, nowMs: number): string {
  const label = (STAGE_LABELS[p.stage] ?? p.stage).padEnd(18);
  if (p.bytes !== undefined && p.totalBytes !== undefined && p.totalBytes > 0) {
    const seconds = (nowMs - since.ms) / 1000;
    const moved = p.bytes - since.bytes;
    const rate = seconds > 0.05 && moved > 0 ? moved / seconds : undefined;
    const left = rate === undefined ? undefined : (p.totalBytes - p.bytes) / rate;
    return `${label} ${bar(p.bytes / p.totalBytes)} ${formatBytes(p.bytes)} / ${formatBytes(p.totalBytes)}` +
      (rate === undefined ? "" : ` · ${formatBytes(rate)}/s · ${formatDuration(left!)} left`);
  }
  const share = p.total > 0 ? p.done / p.total : 0;
  return `${label} ${bar(share)} ${p.done}/${p.total}`;
}

/** Where progress goes: stderr, and whether it is a terminal. */
export interface ProgressOutput {
  write(text: string): void;
  readonly isTerminal: boolean;
}

const encoder = new TextEncoder();

/** stderr, written synchronously (progress lines are short). */
export const STDERR: ProgressOutput = {
  write: (text) => {
    try {
      Deno.stderr.writeSync(encoder.encode(text));
    } catch {
      // a closed stderr: progress is not worth failing for
    }
  },
  get isTerminal() {
    return Deno.stderr.isTerminal();
  },
};

/**
 * Load progress for `createEngine`'s `onProgress`: on a terminal, a bar that redraws itself and is
 * cleared by `done()`; elsewhere nothing (loading takes seconds, and logs want the result).
 */
export function loadProgress(
  out: ProgressOutput = STDERR,
  now: () => number = performance.now.bind(performance),
): { onProgress: (p: Progress) => void; done: () => void } {
  if (!out.isTerminal) return { onProgress: () => {}, done: () => {} };
  let stage: string | undefined;
  let since = { ms: 0, bytes: 0 };
  let drawn = -Infinity;
  let shown = false;
  return {
    onProgress(progress) {
      const p = progress as ByteProgress;
      const t = now();
      if (p.stage !== stage || (p.bytes ?? 0) < since.bytes) {
        stage = p.stage;
        since = { ms: t, bytes: p.bytes ?? 0 };
      } else if (t - drawn < REDRAW_EVERY_MS && p.done < p.total) return;
      drawn = t;
      shown = true;
      out.write(`\r\x1b[K${loadLine(p, since, t)}`);
    },
    done() {
      if (shown) out.write("\r\x1b[K");
      shown = false;
    },
  };
}

/**
 * Progress of `total` steps of work (`eval`'s windows): `step(i, detail)` after step i (0-based)
 * shows `label i+1/total · detail · elapsed, time left`, redrawn on a terminal, as a plain line at
 * most every {@link PLAIN_EVERY_MS} elsewhere (and for the last step, when earlier lines were
 * printed). `done()` clears a terminal line.
 */
export function stepProgress(
  label: string,
  total: number,
  out: ProgressOutput = STDERR,
  now: () => number = performance.now.bind(performance),
): { step: (index: number, detail?: string) => void; done: () => void } {
  const start = now();
  let printed = start;
  let lines = 0;
  let shown = false;
  const text = (done: number, detail: string | undefined, t: number): string => {
    const elapsed = (t - start) / 1000;
    const left = timeLeft(done, total, elapsed);
    return `${label} ${done}/${total}${detail ? ` · ${detail}` : ""} · ${formatDuration(elapsed)}` +
      (done < total && left !== undefined ? `, ${formatDuration(left)} left` : "");
  };
  return {
    step(index, detail) {
      const t = now();
      const done = index + 1;
      if (out.isTerminal) {
        out.write(`\r\x1b[K${text(done, detail, t)}`);
        shown = true;
      } else if (t - printed >= PLAIN_EVERY_MS || (done === total && lines > 0)) {
        out.write(`${text(done, detail, t)}\n`);
        printed = t;
        lines++;
      }
    },
    done() {
      if (shown) out.write("\r\x1b[K");
      shown = false;
    },
  };
}
