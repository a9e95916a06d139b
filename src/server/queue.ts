/**
 * The admission queue in front of the engine: one generation runs at a time, at most `maxWaiting`
 * wait behind it in arrival order, and a request past that is refused at once (503) rather than
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

/** A FIFO lock with a bounded line. */
export class RequestQueue {
  readonly maxWaiting: number;
  #running = false;
  #waiters: Waiter[] = [];

  /** Creates a queue that lets `maxWaiting` requests wait behind the running one. */
  constructor(maxWaiting: number) {
    this.maxWaiting = maxWaiting;
  }

  /** Requests waiting for their turn. */
  get waiting(): number {
    return this.#waiters.length;
  }

  /** Generations running: 0 or 1. */
  get running(): number {
    return this.#running ? 1 : 0;
  }

  /**
   * Takes a place in line. Returns undefined when the line is full; otherwise a promise of the
   * turn, which rejects with `signal.reason` if `signal` aborts first.
   */
  tryEnter(signal?: AbortSignal): Promise<Release> | undefined {
    if (!this.#running) {
      this.#running = true;
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

  #release(): Release {
    let done = false;
    return () => {
      if (done) return;
      done = true;
      const next = this.#waiters.shift();
      if (next) next.resolve(this.#release());
      else this.#running = false;
    };
  }
}
