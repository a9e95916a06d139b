/**
 * The engine's lock: calls take the GPU state (KV cache, activations, the sampler's buffers) one at a
 * time, in the order they asked. `forward` and `setBudget` hold it for their whole call. A generation
 * holds it while it computes and *pauses* it whenever it hands a chunk to its consumer; a paused
 * generation that another call is waiting for is *parked* once the event loop has turned without its
 * consumer asking for the next chunk: its GPU work in flight is settled and the engine goes to the
 * next in line. When the parked generation needs the GPU again it queues like any call and rebuilds
 * its state first (the engine keeps each generation's tokens: see `engine.ts`).
 *
 * So a consumer that stops reading, or drops its iterator without `return()`, never blocks another
 * call, and generations read in turn both make progress; a consumer that reads on at once keeps the
 * engine for its whole generation, as before. Which call runs when depends only on who asks, in what
 * order, and whether a consumer came back within one turn of the event loop; never on how long
 * anything took, and never on the garbage collector.
 *
 * @module
 */

/** What a {@link Lease} is doing. */
type State = "waiting" | "held" | "paused" | "parking" | "parked" | "released";

/** A FIFO lock whose holder may pause, and is parked when it pauses while others wait. */
export class EngineLock {
  #holder: Lease | undefined;
  readonly #line: { lease: Lease; grant: () => void }[] = [];

  /** Waits for the engine: resolves once every call that asked before released it or was parked. */
  async acquire(): Promise<Lease> {
    const lease = new Lease(this);
    await lease.take();
    return lease;
  }

  /** Calls waiting for the engine. */
  get waiting(): number {
    return this.#line.length;
  }

  /** Gives `lease` the engine now, or when the calls ahead of it are done (internal to this module). */
  enter(lease: Lease): Promise<void> {
    if (!this.#holder && this.#line.length === 0) {
      this.#holder = lease;
      return Promise.resolve();
    }
    return new Promise<void>((grant) => {
      this.#line.push({ lease, grant });
      this.#holder?.wanted();
    });
  }

  /** `lease` gives the engine up: the next in line takes it (internal to this module). */
  leave(lease: Lease): void {
    const i = this.#line.findIndex((w) => w.lease === lease);
    if (i >= 0) this.#line.splice(i, 1);
    if (this.#holder !== lease) return;
    const next = this.#line.shift();
    this.#holder = next?.lease;
    next?.grant();
  }
}

/** One call's hold on the engine, from {@link EngineLock.acquire}. */
export class Lease {
  readonly #lock: EngineLock;
  #state: State = "waiting";
  #park: (() => Promise<void>) | undefined;
  #parking: Promise<void> | undefined;
  #parkError: unknown;
  #timer: ReturnType<typeof setTimeout> | undefined;

  /** A lease on `lock`, not yet in line. */
  constructor(lock: EngineLock) {
    this.#lock = lock;
  }

  /** Whether the holder was parked since it last held the engine (its GPU state may be gone). */
  get parked(): boolean {
    return this.#state === "parked";
  }

  /**
   * The holder hands a chunk to its consumer. If another call waits for the engine, or comes to,
   * and the consumer has not called {@link resume} within a turn of the event loop, `park` runs (it
   * settles the holder's GPU work in flight) and the engine goes to the next in line.
   */
  pause(park: () => Promise<void>): void {
    if (this.#state !== "held") return;
    this.#state = "paused";
    this.#park = park;
    if (this.#lock.waiting > 0) this.wanted();
  }

  /**
   * The consumer is back: waits for a park under way to finish; the holder keeps the engine if it was
   * not parked. Rethrows what `park` threw. Idempotent.
   */
  async resume(): Promise<void> {
    if (this.#state === "paused") {
      clearTimeout(this.#timer);
      this.#timer = undefined;
      this.#state = "held";
    }
    await this.#parking;
    if (this.#parkError !== undefined) {
      const e = this.#parkError;
      this.#parkError = undefined;
      throw e;
    }
  }

  /**
   * Before GPU work: takes the engine again if the holder was parked, queueing behind the calls that
   * asked before. Returns true when it had been parked (other calls may have run in between).
   */
  async hold(): Promise<boolean> {
    await this.resume();
    if (this.#state !== "parked") return false;
    await this.take();
    return true;
  }

  /** Queues for the engine and holds it once granted (internal to this module). */
  async take(): Promise<void> {
    this.#state = "waiting";
    await this.#lock.enter(this);
    this.#state = "held";
  }

  /** Gives the engine up for good; idempotent. */
  release(): void {
    clearTimeout(this.#timer);
    this.#timer = undefined;
    if (this.#state === "released") return;
    this.#state = "released";
    this.#lock.leave(this);
  }

  /** Another call waits: a paused holder is parked after a turn of the event loop (internal to this module). */
  wanted(): void {
    if (this.#state !== "paused" || this.#timer !== undefined) return;
    this.#timer = setTimeout(() => {
      this.#timer = undefined;
      if (this.#state !== "paused") return;
      this.#state = "parking";
      this.#parking = this.#park!().catch((e) => {
        this.#parkError = e;
      }).finally(() => {
        this.#parking = undefined;
        if (this.#state !== "parking") return; // released meanwhile
        this.#state = "parked";
        this.#lock.leave(this);
      });
    }, 0);
  }
}
