/**
 * Continuous batching: the generations of one engine decode together, each in a slot of its own (its
 * region of the KV caches, its sampler settings, its generated tokens: `RunShape.sequences` of them).
 *
 * One driver runs while there is work. It takes the engine (`engine_lock.ts`), and submits batches of
 * steps. A step advances every slot: one decode row for each generation that is decoding, and a
 * prefill chunk for generations that joined: `maxRows` rows of a prompt when nothing decodes, else at
 * most {@link SHARED_CHUNK_ROWS} prompt rows a step, so a long prompt does not hold the others up. A
 * batch of 1, 2, 4, 8, then 16 steps (fewer while a generation is new, so its first token is not held
 * back) reads the tokens of every slot back in one map, which the next batch reads once it has queued
 * some GPU work ({@link IN_FLIGHT}); a batch holding a first token is read before the next. Generations
 * join and leave between steps: one that ends frees its slot, and the next in line takes it.
 *
 * A step's rows go to the GPU in calls of at most {@link CALL_ROWS} rows, decode rows and short
 * prompt chunks packed together, and a chunk longer than that in a call of its own. Every kernel
 * computes a row of such a call from that row alone (the GEMV kernels; attention at the row's own
 * position and split, src/kernels/step.ts), so a generation gives the tokens it gives alone, bit for
 * bit, whatever else runs beside it. (Longer calls take the grouped expert kernels, whose sums depend
 * on the other rows: a prompt chunk that long runs alone in its call, as it would alone.)
 *
 * Nothing waits on a consumer. A generation runs ahead of its consumer by at most {@link AHEAD} tokens
 * and then stops being stepped; while its consumer is away (not waiting in `next()`) and a generation
 * in line needs a slot, it gives its slot up, and when its consumer asks again it queues for one and
 * rebuilds its KV cache by a prefill over its prompt and its tokens (so an iterator dropped without
 * `return()` blocks nothing). `forward` borrows a slot the same way. Other calls that want the engine
 * (`forward`, `setBudget`, `close`) get it between steps.
 *
 * @module
 */
import { EngineClosedError } from "../errors.ts";
import type { BatchTiming } from "../moe/upload_pacer.ts";
import { GEMV_MAX_ROWS } from "../kernels/experts.ts";
import type { ProgramIo } from "../models/family.ts";
import { packSampling, type SamplingParams } from "../kernels/sample.ts";
import { chunkRows, decodeRow, NO_GEN, type RowMeta } from "../kernels/step.ts";
import type { EngineLock, Lease } from "./engine_lock.ts";
import { MAX_READ, READ_SIZES, type TokenStream } from "./token_stream.ts";
import type { GenerateChunk } from "./types.ts";

/**
 * The most rows in a call of a step: up to this many, the expert kernels compute each row from that
 * row alone (their GEMV path; longer calls group the rows by expert, and a row's sums then depend on
 * the others), so rows of different sequences can share a call without changing each other's results.
 */
export const CALL_ROWS = GEMV_MAX_ROWS;
/**
 * Batches in flight at most: the one being submitted and two not read yet. Deno's `mapAsync` waits,
 * when called, until every command submitted has run, and its promise settles some milliseconds after
 * (a 10 ms poll; on the H200 a batch's map settled 2–4 ms after the driver next waited on it). Read
 * between two batches, with the GPU drained, that left the GPU idle 4–6 ms a batch of 16 steps (0.36–0.52
 * ms a token at the OLMoE shape, 2026-12-03). So a batch reads the oldest one in flight once it has
 * submitted {@link READ_AFTER_SECONDS} of GPU work, while it runs.
 */
export const IN_FLIGHT = 3;
/**
 * GPU time a batch submits before it reads the oldest batch in flight, so that the read's wait runs
 * beside work: on the H200 at the OLMoE shape, after 2 steps (~5 ms) the read outlasted them (steps
 * stretched to 3.09–3.59 ms, decode 300–312 tok/s), after 4 (~11 ms) not (2.68–3.08 ms, 316–359 tok/s;
 * A/B in one call, docs/benchmarks.md). The map read settles 10–11 ms after the drain that its call waited
 * for, and the next step reaches the GPU ~1.5 ms after that (bench/host_trace.ts: every submit and map
 * timed, 2026-12-03): with steps of 2.49 ms, 4 steps (10 ms) ran out ~1.4 ms before it, every
 * batch. So 14 ms. Counted in steps of the last batch's GPU time per step.
 */
export const READ_AFTER_SECONDS = 0.014;
/** Steps before that read while no step has been timed yet (a device without timestamps). */
export const READ_AFTER_STEPS = 4;
/** Most prompt rows a step runs while other generations decode in it (without them, `maxRows`). */
export const SHARED_CHUNK_ROWS = 64;
/** Tokens a generation may run ahead of its consumer before it stops being stepped. */
export const AHEAD = 4 * MAX_READ;
/** A submit slower than this ran the GPU work on the CPU (lavapipe): yield to the event loop after it. */
const SLOW_SUBMIT_MS = 5;
/** A turn of the event loop: timers and I/O run before it resolves. */
const turn = () => new Promise<void>((r) => setTimeout(r, 0));

/** One call of the decoder pass: its rows, their ids, and how many of its last rows sample. */
export interface Call {
  readonly rows: readonly RowMeta[];
  /** [rows] the token ids of the rows that read theirs from the host (0 for decode rows). */
  readonly ids: Uint32Array<ArrayBuffer>;
  /** The last `heads` rows are sampled (their `gen`). */
  readonly heads: number;
  /** Whether the routing statistics count its rows (not when they rebuild a KV cache). */
  readonly countStats: boolean;
  /** Whether it starts a pass of its rows' sequence (a family's per-pass state restarts). */
  readonly newPass: boolean;
  /**
   * The timestamps its pass writes into the host's query set ({@link BatchHost.stamps}): at its
   * beginning (a step's first call) and at its end (a step's last call).
   */
  readonly stamp?: { readonly begin?: number; readonly end?: number };
}

/** What the scheduler needs from its engine. */
export interface BatchHost {
  readonly device: GPUDevice;
  readonly io: ProgramIo;
  readonly lock: EngineLock;
  readonly vocabSize: number;
  /** Slots: the sequences decoded together. */
  readonly slots: number;
  /** Rows a call holds at most (the activation buffers'): the prefill chunk. */
  readonly maxRows: number;
  /** Tokens per slot of `io.generated`. */
  readonly maxGenerated: number;
  readonly encoderDecoder: boolean;
  /** Two MAP_READ buffers: tokens [slots, MAX_READ] u32 from 0, the routing statistics at `statsAt`. */
  readonly staging: readonly GPUBuffer[];
  readonly statsAt: number;
  /** Whether the engine is closing: nothing more runs. */
  closing(): boolean;
  /** Throws when the engine was closed or its device lost. */
  assertOpen(): void;
  /** A batch of `steps` steps begins, with `sequences` decoding: whether it is a probe (SwapMoE's upload pacing). */
  beginBatch(steps: number, sequences: number): boolean;
  /**
   * After a step's submit, unless it was its batch's last: SwapMoE's uploads, for the steps after it
   * (a step earns their credit here). Returns the seconds they took.
   */
  afterStep(): number;
  /** A batch was read back: its steps' wall time and the uploads in it (SwapMoE's upload pacing). */
  timed(t: BatchTiming): void;
  /** Encoder-decoders: the encoder pass over `prompt`, counted in the statistics or not. */
  encode(prompt: readonly number[], countStats: boolean): Promise<void>;
  /** Encodes and submits one call of the decoder pass. */
  call(call: Call): Promise<void>;
  /** Inside `enc`: copy the routing statistics since the last copy to `staging` at `offset`, and clear them. */
  copyStats(enc: GPUCommandEncoder, staging: GPUBuffer, offset: number): void;
  /**
   * Where the device has timestamp queries: the offset of a batch's step timestamps in `staging`, and
   * what copies the first `count` of them there (inside `enc`). A call's {@link Call.stamp} indexes them.
   */
  readonly stamps?: {
    readonly at: number;
    copy(enc: GPUCommandEncoder, staging: GPUBuffer, count: number): void;
    /** A batch's steps on the GPU's clock, and the idle time before it (stats().gpuTimeline). */
    timed(t: { steps: number; stepSeconds: number; gaps: number; gapSeconds: number }): void;
  };
  /**
   * A batch was read back: its statistics, over `rows` routed rows, are mapped in `staging` at
   * `statsAt`; `prompts`: generations whose first token came back with it (their prompts are in).
   */
  onBatch(staging: GPUBuffer, rows: number, prompts: number): void;
  /** The driver has nothing more to run: what waited for a step's submit (`afterStep`) runs now. */
  idle(): void;
  /** Throughput counters: prompt tokens through their first token, tokens decoded after it, seconds of each. */
  count(
    c: { prefillTokens?: number; prefillSeconds?: number; decodeTokens?: number; decodeSeconds?: number },
  ): void;
  /** A GPU failure explained (device lost, out of memory), for the generations it ends. */
  explain(e: unknown): Promise<unknown>;
}

/** Where a generation stands. */
type State = "new" | "waiting" | "running" | "parked" | "done";

/** One generation: its request, its place in the batch, and its output waiting for its consumer. */
export class Sequence {
  /** The prompt: the decoder's first rows, or an encoder-decoder's encoder input. */
  readonly prompt: readonly number[];
  /** What the decoder's first prefill reads: the prompt, or after an encoder the decoder start token. */
  readonly rows: readonly number[];
  readonly sampling: SamplingParams;
  /** Most tokens to generate (what the context leaves, at most the request's). */
  readonly maxTokens: number;
  readonly signal: AbortSignal | undefined;
  readonly out: TokenStream;
  state: State = "new";
  /** Its slot while it has one, else −1. */
  slot = -1;
  /** The rows its slot's KV cache must hold before it decodes: `rows`, or when rebuilt also its tokens but the last. */
  input: readonly number[] = [];
  /** Rows of `input` in the cache so far. */
  prefilled = 0;
  /** Encoder-decoders: the encoder pass over its prompt ran for this slot. */
  encoded = false;
  /** Whether the prefill's last row samples token 0 (not when it rebuilds a cache). */
  sampleAtEnd = true;
  /** Positions the routing statistics counted already (a rebuild does not count them again). */
  counted = 0;
  /** Tokens sampled on the GPU: the index of the next. */
  g = 0;
  /** Tokens read back, in order. */
  readonly tokens: number[] = [];
  /** Readback batches it sampled in (the size of its next: {@link READ_SIZES}). */
  batches = 0;
  /** Batches in flight holding tokens of it. */
  inflight = 0;
  /** Its consumer left (`return()`): it ends at the next step. */
  cancelled = false;
  /** Read tokens whose chunks its consumer took. */
  delivered = 0;
  /** Its consumer waits in `next()`. */
  consumerWaiting = false;
  readonly #chunks: { chunk: GenerateChunk; tokens: number }[] = [];
  #wake: (() => void) | undefined;
  #error: unknown;

  /** A generation of `request` (see the fields), not yet queued. */
  constructor(o: {
    prompt: readonly number[];
    rows: readonly number[];
    sampling: SamplingParams;
    maxTokens: number;
    signal: AbortSignal | undefined;
    out: TokenStream;
  }) {
    this.prompt = o.prompt;
    this.rows = o.rows;
    this.sampling = o.sampling;
    this.maxTokens = o.maxTokens;
    this.signal = o.signal;
    this.out = o.out;
  }

  /** Whether its signal aborted it. */
  get aborted(): boolean {
    return this.signal?.aborted ?? false;
  }

  /** Whether its cache holds its whole input (and its encoder ran): it decodes. */
  get decoding(): boolean {
    return this.state === "running" && this.encoded && this.prefilled === this.input.length;
  }

  /** Tokens sampled that its consumer has not taken: its lead. */
  get ahead(): number {
    return this.g - this.delivered;
  }

  /** Whether chunks wait for its consumer. */
  get buffered(): boolean {
    return this.#chunks.length > 0;
  }

  /** Hands `chunk` (covering `tokens` tokens read back) to the consumer. */
  deliver(chunk: GenerateChunk, tokens: number): void {
    this.#chunks.push({ chunk, tokens });
    this.#wake?.();
  }

  /** Ends it with `error`, which its consumer's next `next()` throws. */
  fail(error: unknown): void {
    if (this.state === "done") return;
    this.state = "done";
    this.#error = error;
    this.#wake?.();
  }

  /** The next chunk, when there is one; throws what ended the generation. */
  takeNow(): GenerateChunk | undefined {
    const next = this.#chunks.shift();
    if (next) {
      this.delivered += next.tokens;
      return next.chunk;
    }
    if (this.#error !== undefined) throw this.#error;
    return undefined;
  }

  /** Resolves when a chunk or an error arrives. */
  arrival(): Promise<void> {
    return new Promise((resolve) => {
      this.#wake = () => {
        this.#wake = undefined;
        resolve();
      };
    });
  }
}

/** A batch of steps whose tokens and statistics are being read back. */
interface Batch {
  readonly staging: GPUBuffer;
  readonly map: Promise<void>;
  /** Per generation that sampled in it: its slot, and the tokens [start, start + n) it sampled. */
  readonly entries: { seq: Sequence; slot: number; start: number; n: number }[];
  /** Rows the statistics count. */
  readonly rows: number;
  /** When its first step was submitted. */
  readonly submittedAt: number;
  /**
   * Steps in it, the sequences decoding when it began, whether a step prefilled, whether it is a probe
   * (upload_pacer.ts), its uploads' seconds.
   */
  readonly steps: number;
  readonly sequences: number;
  readonly prefill: boolean;
  readonly probe: boolean;
  readonly uploadSeconds: number;
  /** It samples a generation's first token: the driver reads it before submitting another batch. */
  readonly firstToken: boolean;
}

/** A prefill chunk of one generation, in a step. */
export interface Chunk {
  seq: Sequence;
  /** Its rows (src/kernels/step.ts `chunkRows`). */
  rows: RowMeta[];
  /** Its token ids. */
  ids: readonly number[];
  /** Whether the routing statistics count it (not when it rebuilds a cache). */
  count: boolean;
  /** Whether it starts its sequence's pass. */
  newPass: boolean;
}

/** The scheduler: slots, the line for them, and the driver that steps them. */
export class Batcher {
  readonly #host: BatchHost;
  /** Each slot's generation, or BORROWED while `forward` uses it. */
  readonly #slots: (Sequence | typeof BORROWED | undefined)[];
  /** Generations waiting for a slot, in order. */
  readonly #line: Sequence[] = [];
  readonly #inflight: Batch[] = [];
  #driving = false;
  /** Batches submitted (which staging buffer is next). */
  #batchNo = 0;
  /** When the last batch was read (decode seconds count from it, or from a later batch's start). */
  #lastRead = 0;
  /**
   * The GPU timestamp of the last batch read's last step's end, while the scheduler has run since
   * (undefined when it idled or settled: the next gap would hold time it had nothing to run).
   */
  #lastStampEnd: bigint | undefined;
  /** A decode step's GPU time in the last batch timed (seconds), if any. */
  #stepSeconds: number | undefined;

  /** A scheduler over `host`'s slots. */
  constructor(host: BatchHost) {
    this.#host = host;
    this.#slots = Array(host.slots).fill(undefined);
  }

  /** Generations holding a slot now. */
  get active(): number {
    return this.#held().length;
  }

  /** Queues `seq` for a slot (its first chunk was asked for) and starts the driver. */
  join(seq: Sequence): void {
    seq.out.askedAt = performance.now();
    seq.state = "waiting";
    this.#line.push(seq);
    // an abort must reach a driver that sleeps because every slot waits for its consumer
    seq.signal?.addEventListener("abort", this.#onAbort, { once: true });
    this.#kick();
  }

  readonly #onAbort = () => this.#kick();

  /**
   * The next chunk of `seq` for its consumer, waiting for it: a generation that gave its slot up queues
   * for one again, one that stopped running ahead goes on.
   */
  async take(seq: Sequence): Promise<GenerateChunk> {
    for (;;) {
      const chunk = seq.takeNow();
      if (chunk) {
        // a generation held back by its lead may go on
        if (seq.state === "running" && seq.ahead < AHEAD) this.#kick();
        return chunk;
      }
      if (seq.state === "done") throw new EngineClosedError("The generation ended without a last chunk");
      if (seq.state === "parked") {
        seq.state = "waiting";
        this.#line.push(seq);
      }
      this.#kick();
      const arrived = seq.arrival();
      seq.consumerWaiting = true;
      try {
        await arrived;
      } finally {
        seq.consumerWaiting = false;
      }
    }
  }

  /** Its consumer left (or it ended): it gives its slot and place in line up. */
  leave(seq: Sequence): void {
    seq.signal?.removeEventListener("abort", this.#onAbort);
    if (seq.state === "done" || seq.state === "new") {
      seq.state = "done";
      return;
    }
    seq.cancelled = true;
    const i = this.#line.indexOf(seq);
    if (i >= 0) this.#line.splice(i, 1);
    if (seq.state !== "running") seq.state = "done";
    this.#kick();
  }

  /** Ends every generation with `error` (the engine closes). */
  failAll(error: unknown): void {
    for (const seq of [...this.#line, ...this.#held()]) seq.fail(error);
    this.#line.length = 0;
    this.#slots.fill(undefined);
  }

  /**
   * A slot for `forward`, which holds the engine (the driver settled its batches before giving it up):
   * a free one, else one taken from a generation (prefer one whose consumer is away, then the smallest
   * cache), which rebuilds its cache when it runs again. Give it back with {@link returnSlot}.
   */
  borrowSlot(): number {
    const free = this.#slots.indexOf(undefined);
    if (free >= 0) {
      this.#slots[free] = BORROWED;
      return free;
    }
    const held = this.#held();
    held.sort((a, b) =>
      Number(a.consumerWaiting) - Number(b.consumerWaiting) || a.prefilled + a.g - (b.prefilled + b.g)
    );
    const victim = held[0];
    if (!victim) throw new Error("Internal: no slot to borrow");
    const slot = victim.slot;
    this.#park(victim);
    this.#slots[slot] = BORROWED;
    return slot;
  }

  /** Gives back a slot {@link borrowSlot} lent; the driver goes on. */
  returnSlot(slot: number): void {
    if (this.#slots[slot] === BORROWED) this.#slots[slot] = undefined;
    this.#kick();
  }

  /** Starts the driver unless it runs. */
  #kick(): void {
    if (this.#driving) return;
    this.#driving = true;
    this.#drive().catch(() => {}).finally(() => {
      this.#driving = false;
      if (this.#hasWork()) this.#kick();
    });
  }

  /** Whether anything could run now: a generation in line with a slot free, one to step, one to end. */
  #hasWork(): boolean {
    if (this.#host.closing()) return false;
    if (this.#line.length > 0 && this.#slots.includes(undefined)) return true;
    if (this.#line.some((s) => s.aborted || s.cancelled)) return true;
    return this.#held().some((s) => s.cancelled || s.aborted || this.#steppable(s));
  }

  /** The generations holding slots. */
  #held(): Sequence[] {
    return this.#slots.filter((s): s is Sequence => s instanceof Sequence);
  }

  /** Whether `seq` takes part in the next step: it prefills, or decodes within its limit and lead. */
  #steppable(seq: Sequence): boolean {
    if (seq.state !== "running" || seq.cancelled || seq.aborted) return false;
    if (seq.prefilled < seq.input.length || (this.#host.encoderDecoder && !seq.encoded)) return true;
    return seq.g < seq.maxTokens && seq.ahead < AHEAD;
  }

  /** The driver: takes the engine, ends, admits and steps generations, reads batches back, until idle. */
  async #drive(): Promise<void> {
    const host = this.#host;
    let lease: Lease | undefined;
    this.#lastStampEnd = undefined; // it starts from idle
    try {
      for (;;) {
        if (host.closing()) {
          await this.#settle(); // the device stays until close() has the engine, after this
          break;
        }
        lease ??= await host.lock.acquire();
        if (host.closing()) continue;
        if (host.lock.waiting > 0) {
          // another call wants the engine: settle what is in flight, and queue behind it
          await this.#settle();
          lease.release();
          lease = undefined;
          continue;
        }
        host.assertOpen();
        this.#reap();
        await this.#admit();
        if (this.#inflight.some((b) => b.firstToken)) {
          await this.#readOldest(); // a first token comes back before more steps are queued
          continue;
        }
        if (this.#inflight.length < IN_FLIGHT && this.#held().some((s) => this.#steppable(s))) {
          await this.#submitBatch();
          continue;
        }
        if (this.#inflight.length > 0) {
          await this.#readOldest();
          continue;
        }
        host.idle();
        break;
      }
    } catch (e) {
      const error = await host.explain(e);
      for (const seq of this.#held()) seq.fail(error);
      for (const seq of this.#line) seq.fail(error);
      this.#line.length = 0;
      this.#slots.fill(undefined);
      await this.#settle().catch(() => {});
    } finally {
      lease?.release();
    }
  }

  /** Ends the generations whose consumer left, and those aborted with nothing in flight (their last chunk). */
  #reap(): void {
    for (const seq of this.#held()) {
      if (seq.cancelled) {
        this.#release(seq);
        seq.state = "done";
      } else if (seq.aborted && seq.inflight === 0) {
        this.#release(seq);
        this.#finish(seq, seq.out.abort(), 0);
      }
    }
  }

  /** Gives generations in line a slot: a free one, or one a generation whose consumer is away gives up. */
  async #admit(): Promise<void> {
    // those whose consumer left, or whose signal aborted them while they waited, leave the line (an
    // aborted one's last chunk needs no slot)
    for (const seq of this.#line.filter((q) => q.cancelled || q.state === "done" || q.aborted)) {
      this.#line.splice(this.#line.indexOf(seq), 1);
      if (seq.aborted && !seq.cancelled && seq.state !== "done") this.#finish(seq, seq.out.abort(), 0);
    }
    while (this.#line.length > 0) {
      const seq = this.#line[0]!;
      const slot = this.#slots.indexOf(undefined);
      if (slot >= 0) {
        this.#line.shift();
        this.#start(seq, slot);
        continue;
      }
      const victim = this.#held()
        .filter((s) => !s.consumerWaiting && (s.buffered || s.ahead >= AHEAD))
        .sort((a, b) => b.ahead - a.ahead)[0];
      if (!victim) return;
      if (this.#inflight.length > 0) {
        await this.#settle(); // its tokens in flight are read first; a slot may free meanwhile
        continue;
      }
      this.#park(victim);
    }
  }

  /** `seq` takes `slot`: its sampler settings, and what its cache must hold before it decodes. */
  #start(seq: Sequence, slot: number): void {
    const host = this.#host;
    seq.state = "running";
    seq.slot = slot;
    this.#slots[slot] = seq;
    seq.out.startedAt ||= performance.now();
    const queue = host.device.queue;
    queue.writeBuffer(
      host.io.samplingParams,
      slot * SAMPLING_BYTES,
      packSampling(host.vocabSize, seq.sampling),
    );
    seq.prefilled = 0;
    seq.encoded = !host.encoderDecoder;
    if (seq.g === 0) {
      seq.input = seq.rows;
      seq.sampleAtEnd = true;
    } else {
      // rebuilt: the prompt and its tokens but the last, which its next step reads as the sampler left it
      seq.input = [...seq.rows, ...seq.tokens.slice(0, seq.g - 1)];
      seq.sampleAtEnd = false;
      const at = (slot * host.maxGenerated + seq.g - 1) * 4;
      queue.writeBuffer(host.io.generated, at, Uint32Array.of(seq.tokens[seq.g - 1]!));
    }
  }

  /** `seq` gives its slot up (nothing of it in flight); its consumer's next `next()` queues it again. */
  #park(seq: Sequence): void {
    this.#release(seq);
    seq.state = "parked";
    if (seq.consumerWaiting && !seq.buffered) {
      seq.state = "waiting";
      this.#line.unshift(seq);
    }
  }

  /** Frees `seq`'s slot. */
  #release(seq: Sequence): void {
    if (seq.slot >= 0 && this.#slots[seq.slot] === seq) this.#slots[seq.slot] = undefined;
    seq.slot = -1;
  }

  /** Ends `seq` with `chunk` (its last), covering `tokens` tokens read back. */
  #finish(seq: Sequence, chunk: GenerateChunk, tokens: number): void {
    this.#release(seq);
    seq.deliver(chunk, tokens);
    seq.state = "done";
  }

  /**
   * Submits a batch of steps and starts reading it back: 1, 2, 4, 8 or 16 steps (the smallest any
   * decoding generation's progress asks for), ending early after the step that samples a joining
   * generation's first token, or when nothing is left to step.
   */
  async #submitBatch(): Promise<void> {
    const host = this.#host;
    const startAt = new Map<Sequence, number>(); // the first token each generation samples in this batch
    let steps = MAX_READ as number;
    for (const seq of this.#held()) {
      if (seq.decoding && this.#steppable(seq)) {
        steps = Math.min(steps, READ_SIZES[Math.min(seq.batches, READ_SIZES.length - 1)]!);
      }
    }
    const sequences = this.#held().filter((s) => s.decoding && this.#steppable(s)).length;
    const probe = host.beginBatch(steps, sequences);
    const submittedAt = performance.now();
    let prefill = false;
    let rows = 0; // the rows the statistics count
    let ran = false;
    let stepsRun = 0;
    let uploadSeconds = 0;
    let firstToken = false;
    for (let i = 0; i < steps; i++) {
      // between steps: generations that joined take free slots (never another's: its tokens are in flight)
      if (i > 0) {
        while (this.#line.length > 0 && this.#slots.includes(undefined)) {
          const seq = this.#line.shift()!;
          if (!seq.cancelled && seq.state !== "done") this.#start(seq, this.#slots.indexOf(undefined));
        }
      }
      const step = await this.#step(startAt, stepsRun);
      prefill ||= step.prefill;
      if (step.rows === 0) break;
      ran = true;
      stepsRun++;
      rows += step.counted;
      // SwapMoE's uploads after the step's submit, not before it: their host copies then run while the
      // GPU works through the steps queued, never in the GPU's idle time after a read (which waits for
      // everything submitted: READ_AFTER_SECONDS); their GPU copies land before the next step, inside
      // the batch's timed steps. None after its last step: they would land outside them (the credit
      // waits for the next batch's first step).
      if (i + 1 < steps && !step.firstToken) uploadSeconds += host.afterStep();
      // the oldest batch is read while this one's first steps run (see READ_AFTER_SECONDS)
      if (stepsRun === this.#stepsBeforeRead() && this.#inflight.length > 0) await this.#readOldest();
      // a generation's first token ends the batch: it comes back at once (the driver reads it next)
      if (step.firstToken) {
        firstToken = true;
        break;
      }
    }
    if (rows === 0 && startAt.size === 0 && !ran) return;
    const staging = host.staging[this.#batchNo++ % host.staging.length]!;
    // (a generation that close() ended meanwhile holds no slot: nothing of it to read)
    const entries = [...startAt].filter(([seq]) => seq.slot >= 0)
      .map(([seq, start]) => ({ seq, slot: seq.slot, start, n: seq.g - start }));
    const enc = host.device.createCommandEncoder({ label: "readback.tokens" });
    for (const e of entries) {
      e.seq.inflight++;
      e.seq.batches++;
      enc.copyBufferToBuffer(
        host.io.generated,
        (e.slot * host.maxGenerated + e.start) * 4,
        staging,
        e.slot * MAX_READ * 4,
        e.n * 4,
      );
    }
    host.copyStats(enc, staging, host.statsAt);
    if (stepsRun > 0) host.stamps?.copy(enc, staging, 2 * stepsRun);
    host.device.queue.submit([enc.finish()]);
    const map = staging.mapAsync(GPUMapMode.READ);
    map.catch(() => {}); // awaited when read: a lost device must not reject it unobserved meanwhile
    this.#inflight.push({
      staging,
      map,
      entries,
      rows,
      submittedAt,
      steps: stepsRun,
      sequences,
      prefill,
      probe,
      uploadSeconds,
      firstToken,
    });
  }

  /**
   * One step: decode rows of the generations that decode, prefill chunks of those that joined (at
   * least one, at most `maxRows` rows), packed into calls; the `index`th step of its batch that runs
   * rows. Returns the rows run and whether a first token was sampled. `startAt` gets each
   * generation's first token index of the batch.
   */
  async #step(
    startAt: Map<Sequence, number>,
    index: number,
  ): Promise<{ rows: number; counted: number; firstToken: boolean; prefill: boolean }> {
    const host = this.#host;
    const decode: RowMeta[] = [];
    const chunks: Chunk[] = [];
    let prefillRows = 0;
    let counted = 0;
    let firstToken = false;
    const held = this.#held().filter((s) => this.#steppable(s));
    if (held.length === 0) return { rows: 0, counted, firstToken, prefill: false };
    for (const seq of held) {
      if (!seq.decoding) continue;
      if (!startAt.has(seq)) startAt.set(seq, seq.g);
      // token g's input is token g − 1, at position rows + g − 1
      decode.push(decodeRow(seq.slot, seq.rows.length + seq.g - 1, seq.g));
    }
    // beside decoding generations a prompt advances in short chunks, so that their next tokens wait
    // one short step, not a whole pass of maxRows rows
    const chunkCap = decode.length > 0 ? Math.min(host.maxRows, SHARED_CHUNK_ROWS) : host.maxRows;
    for (const seq of held) {
      if (seq.decoding || prefillRows >= chunkCap) continue;
      if (!seq.encoded) {
        const count = seq.counted === 0;
        await host.encode(seq.prompt, count);
        seq.encoded = true;
        prefillRows += seq.prompt.length;
        if (count) counted += seq.prompt.length;
      }
      const start = seq.prefilled;
      const t = Math.min(chunkCap, seq.input.length - start);
      const last = start + t === seq.input.length;
      const sample = last && seq.sampleAtEnd;
      if (sample) {
        startAt.set(seq, 0);
        firstToken = true;
      }
      chunks.push({
        seq,
        rows: chunkRows(seq.slot, start, t, sample ? 0 : undefined),
        ids: seq.input.slice(start, start + t),
        count: start >= seq.counted,
        newPass: start === 0,
      });
      prefillRows += t;
    }
    const rows = decode.length + chunks.reduce((a, c) => a + c.rows.length, 0);
    counted += decode.length + chunks.reduce((a, c) => a + (c.count ? c.rows.length : 0), 0);
    const t0 = performance.now();
    const calls = packCalls(decode, chunks, Math.min(CALL_ROWS, host.maxRows));
    for (const [c, call] of calls.entries()) {
      // step `index` of the batch: its first call's pass stamps 2·index at its beginning, its last 2·index + 1 at its end
      const stamp = host.stamps
        ? { begin: c === 0 ? 2 * index : undefined, end: c === calls.length - 1 ? 2 * index + 1 : undefined }
        : undefined;
      await host.call(stamp ? { ...call, stamp } : call);
    }
    // what the step did, in each generation's state
    for (const seq of held) {
      if (seq.decoding) {
        seq.counted = Math.max(seq.counted, seq.rows.length + seq.g);
        seq.g++;
      }
    }
    for (const c of chunks) {
      c.seq.prefilled += c.rows.length;
      if (c.count) c.seq.counted = Math.max(c.seq.counted, c.seq.prefilled);
      if (c.rows.at(-1)!.gen === 0) c.seq.g = 1;
    }
    // A software adapter runs the work inside submit: let timers and I/O (a server's other requests,
    // disconnects, new generations) run between such steps. A real GPU's submit returns at once.
    if (performance.now() - t0 > SLOW_SUBMIT_MS) await turn();
    return { rows, counted, firstToken, prefill: chunks.length > 0 };
  }

  /**
   * Seconds batch `b`'s steps took on the GPU, from the timestamps it read back: the time from the end
   * of its first step to the end of its last, per step (each such interval holds a step and the wait
   * before it, when the GPU idled for the CPU's encoding or uploads), times its steps. Undefined
   * without timestamps, for fewer than two steps, or when they do not increase (a device whose
   * timestamps mean nothing). `busy`: of that, the time its steps' passes ran (the rest the GPU waited
   * between them). Also reports to the host the steps' time and the GPU's idle time between the
   * previous batch's last step and this one's first (while the scheduler ran throughout).
   */
  #gpuTimes(b: Batch): { wall: number; busy: number } | undefined {
    const stamps = this.#host.stamps;
    if (!stamps) return undefined;
    const t = new BigInt64Array(b.staging.getMappedRange(stamps.at, 2 * b.steps * 8).slice(0));
    const begin = t[0]!;
    const first = t[1]!;
    const last = t[2 * b.steps - 1]!;
    if (!(begin > 0n && first >= begin && last >= first)) {
      this.#lastStampEnd = undefined;
      return undefined;
    }
    const prev = this.#lastStampEnd;
    const gap = prev !== undefined && begin >= prev ? Number(begin - prev) / 1e9 : undefined;
    this.#lastStampEnd = last;
    const stepSeconds = Number(last - first) / 1e9;
    if (b.steps >= 2 && last > first) this.#stepSeconds = stepSeconds / (b.steps - 1);
    stamps.timed({ steps: b.steps - 1, stepSeconds, gaps: gap === undefined ? 0 : 1, gapSeconds: gap ?? 0 });
    if (b.steps < 2 || !(last > first)) return undefined;
    let busy = 0n;
    for (let i = 1; i < b.steps; i++) {
      const ran = t[2 * i + 1]! - t[2 * i]!;
      if (ran > 0n) busy += ran;
    }
    const scale = b.steps / (b.steps - 1);
    return { wall: stepSeconds * scale, busy: Math.min(Number(busy) / 1e9, stepSeconds) * scale };
  }

  /** Steps a batch submits before it reads the oldest one in flight: {@link READ_AFTER_SECONDS} of GPU work. */
  #stepsBeforeRead(): number {
    const s = this.#stepSeconds;
    return s === undefined || !(s > 0) ? READ_AFTER_STEPS : Math.max(1, Math.ceil(READ_AFTER_SECONDS / s));
  }

  /** Reads every batch in flight. */
  async #settle(): Promise<void> {
    while (this.#inflight.length > 0) await this.#readOldest();
    this.#lastStampEnd = undefined; // another call may run next
  }

  /** Reads the oldest batch in flight: each generation's tokens become a chunk for its consumer. */
  async #readOldest(): Promise<void> {
    const b = this.#inflight[0]!;
    try {
      await b.map;
      const now = performance.now();
      const words = new Uint32Array(b.staging.getMappedRange(0, this.#host.slots * MAX_READ * 4).slice(0));
      let prompts = 0;
      let decoded = 0;
      for (const e of b.entries) {
        e.seq.inflight--;
        const seq = e.seq;
        if (seq.state === "done" || seq.cancelled) continue;
        const tokens = Array.from(words.subarray(e.slot * MAX_READ, e.slot * MAX_READ + e.n));
        seq.tokens.push(...tokens);
        const first = !seq.out.started;
        const before = seq.out.decodedTokens;
        let chunk: GenerateChunk;
        try {
          chunk = seq.out.push(tokens, now, seq.aborted);
        } catch (err) {
          this.#release(seq);
          seq.fail(err); // NaN logits: this generation ends, the others go on
          continue;
        }
        if (first) {
          prompts++;
          this.#host.count({
            prefillTokens: seq.prompt.length,
            prefillSeconds: (now - seq.out.startedAt) / 1000,
          });
        }
        decoded += seq.out.decodedTokens - before;
        if (chunk.finishReason !== undefined) this.#finish(seq, chunk, tokens.length);
        else seq.deliver(chunk, tokens.length);
      }
      this.#host.onBatch(b.staging, b.rows, prompts);
      if (decoded > 0) {
        // decode time: from the later of the last read and this batch's start, so that generations
        // decoding at once count the wall time once (one alone: from its previous batch's read)
        const from = Math.max(this.#lastRead, b.submittedAt);
        this.#host.count({ decodeTokens: decoded, decodeSeconds: (now - from) / 1000 });
      }
      if (b.steps > 0) {
        const { steps, sequences, prefill, probe } = b;
        const gpu = this.#gpuTimes(b);
        if (gpu !== undefined) {
          // the GPU's own clock: only this batch's uploads can have stretched its steps
          this.#host.timed({
            steps,
            sequences,
            prefill,
            probe,
            wallSeconds: gpu.wall,
            busySeconds: gpu.busy,
            uploadSeconds: b.uploadSeconds,
          });
        } else {
          const wallSeconds = (now - Math.max(this.#lastRead, b.submittedAt)) / 1000;
          // the read is seen once the next batch is submitted: its uploads can be in this one's wall
          const uploadSeconds = b.uploadSeconds + (this.#inflight[1]?.uploadSeconds ?? 0);
          this.#host.timed({ steps, sequences, prefill, probe, wallSeconds, uploadSeconds });
        }
      }
      this.#lastRead = now;
    } finally {
      if (b.staging.mapState === "mapped") b.staging.unmap();
      this.#inflight.shift();
    }
  }
}

/** Bytes of one slot's sampler settings. */
const SAMPLING_BYTES = 48;

/** What a slot `forward` borrowed holds. */
const BORROWED = Symbol("borrowed");

/**
 * A step's rows as calls of at most `callRows` rows: the decode rows, then the prompt chunks packed
 * into calls with room, a chunk longer than `callRows` (or one rebuilding a cache, which the statistics
 * do not count) in a call of its own. In each call the rows that sample come last (the head rows).
 */
export function packCalls(
  decode: readonly RowMeta[],
  chunks: readonly Omit<Chunk, "seq">[],
  callRows: number,
): Call[] {
  interface Building {
    body: { row: RowMeta; id: number }[];
    heads: { row: RowMeta; id: number }[];
    count: boolean;
    newPass: boolean;
  }
  const calls: Building[] = [];
  for (let i = 0; i < decode.length; i += callRows) {
    calls.push({
      body: [],
      heads: decode.slice(i, i + callRows).map((row) => ({ row, id: 0 })),
      count: true,
      newPass: true,
    });
  }
  const size = (c: Building) => c.body.length + c.heads.length;
  for (const chunk of chunks) {
    const t = chunk.rows.length;
    let into = chunk.count && t <= callRows
      ? calls.find((c) => c.count && size(c) + t <= callRows)
      : undefined;
    if (!into) {
      into = { body: [], heads: [], count: chunk.count, newPass: chunk.newPass };
      calls.push(into);
    }
    chunk.rows.forEach((row, r) => {
      (row.gen === NO_GEN ? into.body : into.heads).push({ row, id: chunk.ids[r]! });
    });
  }
  return calls.map((c) => {
    const all = [...c.body, ...c.heads];
    return {
      rows: all.map((x) => x.row),
      ids: Uint32Array.from(all, (x) => x.id),
      heads: c.heads.length,
      countStats: c.count,
      newPass: c.newPass,
    };
  });
}
