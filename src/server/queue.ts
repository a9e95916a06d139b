/**
 * The admission queue in front of the engine: up to `maxRunning` generations run at once (the
 * engine's `maxBatchSequences`: they decode together, each in a slot of its own), at most `maxWaiting`
 * wait behind them in arrival order, and a request past that is refused at once (503) rather than
 * left to time out. A waiter whose client leaves drops out without ever touching the engine.
 *
 * @module
 */

/** Gives the engine back to the next waiter; calling it twice is harmless. */
export type Release = () => void;

interface Waiter {
  resolve(release: Release): void;
  reject(reason: unknown): void;
}

/** A FIFO semaphore with a bounded line. */
export class RequestQueue {
  readonly maxWaiting: number;
  readonly maxRunning: number;
  #running = 0;
  #waiters: Waiter[] = [];

  /** Creates a queue that runs `maxRunning` requests at once and lets `maxWaiting` wait behind them. */
  constructor(maxWaiting: number, maxRunning = 1) {
    this.maxWaiting = maxWaiting;
    this.maxRunning = maxRunning;
  }

  /** Requests waiting for their turn. */
  get waiting(): number {
    return this.#waiters.length;
  }

  /** Generations running: 0 … maxRunning. */
  get running(): number {
    return this.#running;
  }

  /**
   * Takes a place in line. Returns undefined when the line is full; otherwise a promise of the
   * turn, which rejects with `signal.reason` if `signal` aborts first.
   */
  tryEnter(signal?: AbortSignal): Promise<Release> | undefined {
    if (this.#running < this.maxRunning && this.#waiters.length === 0) {
      this.#running++;
      return Promise.resolve(this.#release());
    }
    if (this.#waiters.length >= this.maxWaiting) return undefined;
    return new Promise<Release>((resolve, reject) => {
      const waiter: Waiter = {
        resolve: (release) => {
          signal?.removeEventListener("abort", onAbort);
          resolve(release);
        },
        reject: (reason) => {
          signal?.removeEventListener("abort", onAbort);
          reject(reason);
        },
      };
      const onAbort = () => {
        const i = this.#waiters.indexOf(waiter);
        if (i >= 0) this.#waiters.splice(i, 1);
        waiter.reject(signal!.reason);
      };
      if (signal?.aborted) return reject(signal.reason);
      signal?.addEventListener("abort", onAbort, { once: true });
      this.#waiters.push(waiter);
    });
  }

  /** A running request's release: its turn goes to the next waiter, else its place frees. */
  #release(): Release {
    let done = false;
    return () => {
      if (done) return;
      done = true;
      const next = this.#waiters.shift();
      if (next) next.resolve(this.#release());
      else this.#running--;
    };
  }
}
