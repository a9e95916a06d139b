/**
 * Stop strings in text that grows: the text is cut at the first stop string, and an end of it that
 * could still be the start of one is held back until the next text says whether it is. Generation's text
 * (`runtime/token_stream.ts`) and a harmony model's channels (`harmony.ts`) both end this way.
 *
 * @module
 */

/** Text as it arrives, cut at the first of its stop strings. */
export class StopText {
  readonly #stop: readonly string[];
  /** Characters held back: one less than the longest stop string. */
  readonly #holdBack: number;
  #text = "";
  /** Characters of the text already taken. */
  #taken = 0;
  /** Whether a stop string was found (the text ends before it, and takes no more). */
  stopped = false;

  /** An empty text ending at any of `stop` (none: it never stops and holds nothing back). */
  constructor(stop: readonly string[]) {
    this.#stop = stop.filter((s) => s.length > 0);
    this.#holdBack = this.#stop.reduce((a, s) => Math.max(a, s.length - 1), 0);
  }

  /** Appends `text`, unless stopped; returns whether the text now ends at a stop string. */
  append(text: string): boolean {
    if (this.stopped || !text) return this.stopped;
    // a stop string that ends in the new text began at most its length before it
    const from = this.#text.length;
    this.#text += text;
    let cut = -1;
    for (const s of this.#stop) {
      const at = this.#text.indexOf(s, Math.max(0, from - s.length + 1));
      if (at >= 0 && (cut < 0 || at < cut)) cut = at;
    }
    if (cut >= 0) {
      this.#text = this.#text.slice(0, cut);
      this.stopped = true;
    }
    return this.stopped;
  }

  /**
   * The text not taken before, up to where a stop string could begin at its end; with `all` (the
   * text has ended), all of it.
   */
  take(all = false): string {
    const end = this.#text.length;
    let upto = end;
    if (!all && !this.stopped) {
      // the earliest start of an end of the text that begins a stop string
      for (let at = Math.max(this.#taken, end - this.#holdBack); at < end; at++) {
        const tail = this.#text.slice(at);
        if (this.#stop.some((s) => s.startsWith(tail))) {
          upto = at;
          break;
        }
      }
    }
    const text = this.#text.slice(this.#taken, upto);
    this.#taken = upto;
    return text;
  }
}
