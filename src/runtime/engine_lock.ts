/**
 * The engine's lock: calls take the GPU state (the activations, the sampler's buffers, the expert
 * slots' bind groups) one at a time, in the order they asked. `forward` and `setBudget` hold it for
 * their whole call. Generations do not hold it themselves: the batch driver (`batch.ts`) takes it
 * while it steps them, and between steps gives it to any call that asks, settling its readbacks first,
 * then queues behind that call. Generations keep their KV caches in slots of their own across such
 * calls (`forward` borrows a free slot, or one whose generation rebuilds its cache later).
 *
 * So no call waits on a generation's consumer: which call runs when depends only on who asks, and in
 * what order; never on how long anything took, and never on the garbage collector.
 *
 * @module
 */

/** A FIFO lock. */
export class EngineLock {
  #holder: Lease | undefined;
  readonly #line: { lease: Lease; grant: () => void }[] = [];

  /** Waits for the engine: resolves once every call that asked before released it. */
  async acquire(): Promise<Lease> {
    const lease = new Lease(this);
    if (!this.#holder && this.#line.length === 0) {
      this.#holder = lease;
      return lease;
    }
    await new Promise<void>((grant) => this.#line.push({ lease, grant }));
    return lease;
  }

  /** Calls waiting for the engine. */
  get waiting(): number {
    return this.#line.length;
  }

  /** `lease` gives the engine up: the next in line takes it (internal to this module). */
  leave(lease: Lease): void {
    if (this.#holder !== lease) return;
    const next = this.#line.shift();
    this.#holder = next?.lease;
    next?.grant();
  }
}

/** One call's hold on the engine, from {@link EngineLock.acquire}. */
export class Lease {
  readonly #lock: EngineLock;
  #released = false;

  /** A lease on `lock` (internal to this module). */
  constructor(lock: EngineLock) {
    this.#lock = lock;
  }

  /** Gives the engine up; idempotent. */
  release(): void {
    if (this.#released) return;
    this.#released = true;
    this.#lock.leave(this);
  }
}
