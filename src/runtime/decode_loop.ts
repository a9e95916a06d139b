/**
 * The decode loop every engine shares: the CPU encodes a batch of steps (each samples a token on
 * the GPU and feeds it to the next), starts reading the batch back — tokens and routing statistics
 * in one map — encodes the next batch while the GPU works, then turns tokens into text: stop
 * strings, end of sequence, length, abort. Batches grow 1, 2, 4, 8, 16 so the first token is not
 * held back; one `mapAsync` (~10 ms in Deno) per batch keeps readbacks off the per-token path.
 *
 * @module
 */
import { NonFiniteError } from "../errors.ts";
import { NON_FINITE_TOKEN } from "../kernels/sample.ts";
import type { Tokenizer } from "../text/tokenizer.ts";
import type { FinishReason, GenerateChunk, GenerateUsage } from "./types.ts";

/** Tokens per readback batch, in order (the last repeats). */
export const READ_SIZES = [1, 2, 4, 8, 16];
/** A submit slower than this ran the GPU work on the CPU (lavapipe): yield to the event loop after it. */
const SLOW_SUBMIT_MS = 5;

/** A batch of steps whose tokens and statistics are being read back. */
interface Batch {
  staging: GPUBuffer;
  /** Its first token's index, and its token count. */
  start: number;
  n: number;
  map: Promise<void>;
  /** Its tokens, once read. */
  tokens?: Promise<number[]>;
}

/** What the loop needs from its engine. */
export interface DecodeLoopOptions {
  device: GPUDevice;
  tokenizer: Tokenizer;
  /** Ids that end generation (once `minTokens` tokens were generated). */
  eos: ReadonlySet<number>;
  minTokens: number;
  stop: readonly string[];
  signal: AbortSignal | undefined;
  /** Most tokens to generate. */
  maxTokens: number;
  /** [maxGenerated] u32: where the sampler writes token g. */
  generated: GPUBuffer;
  /** Two MAP_READ buffers: tokens at 0, statistics at `statsAt`. */
  staging: readonly GPUBuffer[];
  statsAt: number;
  /**
   * Encodes and submits the step that samples token g. `tokens` are those read back so far, in order
   * (all of 0 … g − 1 after a `park`): what rebuilds the sequence when other calls ran in between.
   */
  step(g: number, tokens: readonly number[]): Promise<void>;
  /**
   * Before each chunk is handed out: `park` settles the readbacks in flight (their tokens join
   * `tokens`), after which the engine may run other calls until the next `step`.
   */
  pause?(park: () => Promise<void>): void;
  /** After the consumer came back (or left): waits for a park under way. */
  resume?(): Promise<void>;
  /** Inside `enc`: copy the routing statistics since the last copy to `staging` at `offset`, and clear them. */
  copyStats(enc: GPUCommandEncoder, staging: GPUBuffer, offset: number): void;
  /** A batch of tokens [start, start + n) was read; its statistics are mapped in `staging` at `offset`. */
  onBatch(staging: GPUBuffer, offset: number, start: number, n: number): void;
  /** Tokens read back after the first batch, and the seconds since it (decode throughput). */
  onDecoded(tokens: number, seconds: number): void;
  /**
   * For the usage on the last chunk: the prompt's length in tokens, and when (`performance.now()`)
   * the request asked for the engine and when it got it.
   */
  request: { promptTokens: number; askedAt: number; startedAt: number };
}

/**
 * Streams the generated tokens as chunks; the last chunk carries `finishReason` and the request's
 * `usage`, also when `signal` was aborted before anything was generated (one empty chunk with `"abort"`).
 */
export async function* decodeLoop(o: DecodeLoopOptions): AsyncGenerator<GenerateChunk> {
  const { device } = o;
  const decoder = o.tokenizer.createStreamDecoder();
  const holdBack = o.stop.reduce((a, s) => Math.max(a, s.length - 1), 0);
  let text = "";
  let emitted = 0; // characters of `text` already yielded
  let generated = 0; // tokens sampled on the GPU (index of the next)
  let consumed = 0; // tokens read back and handled (the one that stopped generation included)
  let handedOut = 0; // tokens yielded in chunks' ids
  let firstConsumed = 0; // tokens handled in the first batch
  let td = 0; // when the first batch was read back
  let lastRead = 0; // when the last batch handled was read back
  let batchNo = 0;
  let finish: FinishReason | undefined;
  const inflight: Batch[] = [];
  const sampled: number[] = []; // every token read back, in order (those computed ahead included)

  /** Reads batch `b` once (the loop, or a park): its tokens join `sampled`; its statistics are handed on. */
  const read = (b: Batch): Promise<number[]> =>
    b.tokens ??= (async () => {
      await b.map;
      const toks = Array.from(new Uint32Array(b.staging.getMappedRange(0, b.n * 4).slice(0)));
      if (!finish) o.onBatch(b.staging, o.statsAt, b.start, b.n);
      b.staging.unmap();
      sampled.push(...toks);
      return toks;
    })();
  /** Settles the readbacks in flight, so that the engine can serve another call while a chunk is out. */
  const park = async () => {
    for (const b of inflight) await read(b);
  };
  /** Hands `chunk` to the consumer with the engine paused. */
  async function* handOut(chunk: GenerateChunk): AsyncGenerator<GenerateChunk> {
    o.pause?.(park);
    try {
      yield chunk;
    } finally {
      await o.resume?.();
    }
  }

  const submitBatch = async () => {
    const n = Math.min(READ_SIZES[Math.min(batchNo, READ_SIZES.length - 1)]!, o.maxTokens - generated);
    if (n <= 0) return;
    const start = generated;
    let steps = n;
    for (let i = 0; i < n; i++, generated++) {
      if (o.signal?.aborted) {
        steps = i; // a cancelled request stops encoding at once
        break;
      }
      const t = performance.now();
      await o.step(generated, sampled);
      // A software adapter runs the work inside submit: let timers and I/O (a server's other
      // requests, disconnects) run between such steps. A real GPU's submit returns at once.
      if (performance.now() - t > SLOW_SUBMIT_MS) await new Promise((r) => setTimeout(r, 0));
    }
    if (steps === 0) return;
    const staging = o.staging[batchNo % o.staging.length]!;
    const enc = device.createCommandEncoder({ label: "readback.tokens" });
    enc.copyBufferToBuffer(o.generated, start * 4, staging, 0, steps * 4);
    o.copyStats(enc, staging, o.statsAt);
    device.queue.submit([enc.finish()]);
    const map = staging.mapAsync(GPUMapMode.READ);
    map.catch(() => {}); // awaited below: a lost device must not reject it unobserved meanwhile
    inflight.push({ staging, start, n: steps, map });
    batchNo++;
  };

  try {
    await submitBatch();
    while (inflight.length > 0) {
      if (!finish) await submitBatch();
      const b = inflight.shift()!;
      const toks = await read(b);
      if (finish) continue; // tokens computed ahead, past the end
      lastRead = performance.now();
      if (b.start === 0) td = lastRead;
      const newIds: number[] = [];
      for (const tok of toks) {
        if (tok === NON_FINITE_TOKEN) throw new NonFiniteError(`for generated token ${consumed}`);
        consumed++;
        if (o.eos.has(tok) && consumed > o.minTokens) {
          finish = "stop";
          break;
        }
        newIds.push(tok);
        text += decoder.push([tok]);
        const hit = o.stop.map((s) => text.indexOf(s, Math.max(0, emitted - s.length))).filter((i) => i >= 0);
        if (hit.length > 0) {
          text = text.slice(0, Math.min(...hit));
          finish = "stop";
          break;
        }
      }
      if (b.start === 0) firstConsumed = consumed;
      handedOut += newIds.length;
      if (!finish && consumed >= o.maxTokens) {
        text += decoder.flush();
        finish = "length";
      }
      if (!finish && o.signal?.aborted) finish = "abort";
      const upto = finish ? text.length : Math.max(emitted, text.length - holdBack);
      const chunk: GenerateChunk = { ids: newIds, text: text.slice(emitted, upto) };
      emitted = upto;
      if (finish) {
        chunk.finishReason = finish;
        chunk.usage = usage();
      }
      yield* handOut(chunk);
    }
    // nothing was left to read because the signal stopped the encoding (before the first batch, too)
    if (!finish) {
      yield* handOut({ ids: [], text: text.slice(emitted), finishReason: "abort", usage: usage() });
    }
  } finally {
    // a consumer that stops early leaves readbacks in flight: settle them before the next request
    for (const b of inflight) {
      await b.map.catch(() => {});
      if (b.staging.mapState === "mapped") b.staging.unmap();
    }
    await device.queue.onSubmittedWorkDone();
    if (td > 0) o.onDecoded(consumed - firstConsumed, (performance.now() - td) / 1000);
  }

  /** The request's counts and timing as of now, for its last chunk. */
  function usage(): GenerateUsage {
    const { promptTokens, askedAt, startedAt } = o.request;
    const after = consumed - firstConsumed;
    return {
      promptTokens,
      completionTokens: handedOut,
      totalTokens: promptTokens + handedOut,
      queueSeconds: (startedAt - askedAt) / 1000,
      timeToFirstTokenSeconds: td > 0 ? (td - askedAt) / 1000 : 0,
      prefillTokensPerSecond: td > startedAt ? promptTokens / ((td - startedAt) / 1000) : 0,
      decodeTokensPerSecond: after > 0 && lastRead > td ? after / ((lastRead - td) / 1000) : 0,
      totalSeconds: (performance.now() - askedAt) / 1000,
    };
  }
}
