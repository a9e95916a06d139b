/**
 * Stop strings in text that grows: the text is cut at the first stop string, and an end of it that
 * could still be the start of one is held back until the next text says whether it is. Generation's text
 * (`runtime/token_stream.ts`) and a harmony model's channels (`harmony.ts`) both end this way.
 *
 * What to hold back is the longest end of the text that begins a stop string. Each stop string keeps
 * that length for itself as the text grows (Knuth–Morris–Pratt's matcher state), so an append costs
 * its own length times the number of stop strings, however long they are.
 *
 * @module
 */

/** A stop string and its matcher. */
interface Matcher {
  stop: string;
  /** fail[i]: the longest proper prefix of stop[0..i] that is also its suffix (KMP's prefix function). */
  fail: Int32Array;
  /** How many of its first characters the text ends with (< its length while not stopped). */
  state: number;
}

/** KMP's prefix function of `s`. */
function prefixFunction(s: string): Int32Array {
  const fail = new Int32Array(s.length);
  for (let i = 1, k = 0; i < s.length; i++) {
    while (k > 0 && s[i] !== s[k]) k = fail[k - 1]!;
    if (s[i] === s[k]) k++;
    fail[i] = k;
  }
  return fail;
}

/** Text as it arrives, cut at the first of its stop strings. */
export class StopText {
  readonly #matchers: Matcher[];
  #text = "";
  /** Characters of the text already taken. */
  #taken = 0;
  /** Whether a stop string was found (the text ends before it, and takes no more). */
  stopped = false;

  /** An empty text ending at any of `stop` (none: it never stops and holds nothing back). */
  constructor(stop: readonly string[]) {
    this.#matchers = stop.filter((s) => s.length > 0).map((s) => ({
      stop: s,
      fail: prefixFunction(s),
      state: 0,
    }));
  }

  /** Appends `text`, unless stopped; returns whether the text now ends at a stop string. */
  append(text: string): boolean {
    if (this.stopped || !text) return this.stopped;
    // a stop string that ends in the new text began at most its length before it; of those found, the
    // one that begins first
    const from = this.#text.length;
    this.#text += text;
    let cut = -1;
    for (const { stop } of this.#matchers) {
      const at = this.#text.indexOf(stop, Math.max(0, from - stop.length + 1));
      if (at >= 0 && (cut < 0 || at < cut)) cut = at;
    }
    if (cut >= 0) {
      this.#text = this.#text.slice(0, cut);
      this.stopped = true;
      return true;
    }
    for (const m of this.#matchers) {
      let k = m.state;
      for (let i = 0; i < text.length; i++) {
        const c = text[i];
        while (k > 0 && m.stop[k] !== c) k = m.fail[k - 1]!;
        if (m.stop[k] === c) k++;
      }
      m.state = k; // < stop.length: a whole match was found above
    }
    return false;
  }

  /**
   * The text not taken before, up to where a stop string could begin at its end; with `all` (the
   * text has ended), all of it.
   */
  take(all = false): string {
    let upto = this.#text.length;
    if (!all && !this.stopped) {
      const held = this.#matchers.reduce((a, m) => Math.max(a, m.state), 0);
      upto = Math.max(this.#taken, upto - held);
    }
    const text = this.#text.slice(this.#taken, upto);
    this.#taken = upto;
    return text;
  }
}
