/**
 * Perplexity of a model on token ids, as transformers' training script measured it: the ids are cut
 * into non-overlapping windows of `window` tokens (a partial last window is dropped), each window is
 * one request from position 0, and the loss is the cross-entropy of positions 1..window−1 given the
 * logits of positions 0..window−2 (`cross_entropy(logits[:, :-1], x[:, 1:])`), summed over windows.
 *
 * Windows run in order through `engine.forward`, one request each, so a policy that adapts between
 * requests (`swapmoe`) evaluates window i with what it learnt from windows before i.
 *
 * @module
 */
import { NonFiniteError, OptionError } from "../errors.ts";
import type { Engine } from "../runtime/engine.ts";

/** Options of {@link perplexity}. */
export interface PerplexityOptions {
  /** Tokens per window; default 256. */
  window?: number;
  /** Evaluate at most this many windows (the first ones); default all. */
  maxWindows?: number;
  /** After each window: its index, the window count, and the running perplexity. */
  onWindow?: (index: number, windows: number, perplexity: number) => void;
}

/** What {@link perplexity} measures. */
export interface PerplexityResult {
  /** exp(mean negative log-likelihood) over the scored tokens. */
  perplexity: number;
  /** Mean negative log-likelihood in nats. */
  meanNll: number;
  /** Tokens scored: windows × (window − 1). */
  tokens: number;
  /** Windows evaluated. */
  windows: number;
  /** Tokens per window. */
  window: number;
  /** Wall-clock seconds of the forward calls and the loss. */
  seconds: number;
}

/** The first `maxWindows` non-overlapping windows of `window` tokens of `ids` (partial last one dropped). */
export function windowsOf(ids: readonly number[], window: number, maxWindows = Infinity): number[][] {
  if (!Number.isSafeInteger(window) || window < 2) {
    throw new RangeError(`Invalid window: ${window}, expected an integer >= 2`);
  }
  const n = Math.min(Math.floor(ids.length / window), maxWindows);
  return Array.from({ length: n }, (_, i) => ids.slice(i * window, (i + 1) * window));
}

/**
 * Sum over rows r < T−1 of −log softmax(logits[r])[ids[r+1]], from row-major logits [T × V], in
 * float64 with the max subtracted. `offset` is row 0's position in the text (for the error).
 * @throws {NonFiniteError} when a row's loss is not finite (a NaN or infinite logit in it)
 */
export function nextTokenNll(
  logits: Float32Array,
  ids: readonly number[],
  vocab: number,
  offset = 0,
): number {
  const T = ids.length;
  if (logits.length !== T * vocab) {
    throw new RangeError(`logits hold ${logits.length} values, expected ${T} × ${vocab}`);
  }
  let total = 0;
  for (let r = 0; r < T - 1; r++) {
    const row = logits.subarray(r * vocab, (r + 1) * vocab);
    let max = -Infinity;
    for (let v = 0; v < vocab; v++) if (row[v]! > max) max = row[v]!;
    let sum = 0;
    for (let v = 0; v < vocab; v++) sum += Math.exp(row[v]! - max);
    const target = ids[r + 1]!;
    const nll = max + Math.log(sum) - row[target]!;
    if (!Number.isFinite(nll)) throw new NonFiniteError(`at position ${offset + r} of the ids (loss ${nll})`);
    total += nll;
  }
  return total;
}

/**
 * Perplexity of `engine` on `ids` over non-overlapping windows, each one `engine.forward` request,
 * in order. The engine's context must hold a window.
 */
export async function perplexity(
  engine: Engine,
  ids: readonly number[],
  options: PerplexityOptions = {},
): Promise<PerplexityResult> {
  if (engine.encoderDecoder) {
    throw new OptionError(
      `perplexity needs a causal model; ${engine.spec.modelType} is an encoder-decoder, whose decoder logits depend on an encoder input`,
    );
  }
  const window = options.window ?? 256;
  const windows = windowsOf(ids, window, options.maxWindows ?? Infinity);
  if (windows.length === 0) {
    throw new RangeError(`Too few tokens: ${ids.length}, a window needs ${window}`);
  }
  const V = engine.spec.vocabSize;
  const t0 = performance.now();
  let nll = 0;
  let tokens = 0;
  for (const [i, w] of windows.entries()) {
    const logits = await engine.forward(w);
    nll += nextTokenNll(logits, w, V, i * window);
    tokens += w.length - 1;
    options.onWindow?.(i, windows.length, Math.exp(nll / tokens));
  }
  const meanNll = nll / tokens;
  return {
    perplexity: Math.exp(meanNll),
    meanNll,
    tokens,
    windows: windows.length,
    window,
    seconds: (performance.now() - t0) / 1000,
  };
}
