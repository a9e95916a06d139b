/**
 * "Did you mean" for mistyped commands and flags: the closest known name by edit distance.
 *
 * @module
 */

/**
 * Edit distance between `a` and `b`: insertions, deletions, substitutions and swaps of two
 * neighbouring characters each count 1 (optimal string alignment), so `polciy` is 1 from `policy`.
 */
export function editDistance(a: string, b: string): number {
  // d[i][j]: distance between the first i characters of a and the first j of b
  const d = Array.from(
    { length: a.length + 1 },
    (_, i) => Array.from({ length: b.length + 1 }, (_, j) => i + j),
  );
  for (let i = 1; i <= a.length; i++) {
    for (let j = 1; j <= b.length; j++) {
      const cost = a[i - 1] === b[j - 1] ? 0 : 1;
      let best = Math.min(d[i - 1]![j]! + 1, d[i]![j - 1]! + 1, d[i - 1]![j - 1]! + cost);
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1]) {
        best = Math.min(best, d[i - 2]![j - 2]! + 1);
      }
      d[i]![j] = best;
    }
  }
  return d[a.length]![b.length]!;
}

/**
 * The known name closest to `word`, when close enough to be a typo: at most 1 edit for names of up
 * to 4 characters, 2 for longer ones, or the only name that starts with `word` (3 characters or
 * more). Undefined when nothing is close or two names are equally close.
 */
export function closest(word: string, known: readonly string[]): string | undefined {
  const w = word.toLowerCase();
  const prefixed = w.length >= 3 ? known.filter((k) => k.toLowerCase().startsWith(w)) : [];
  if (prefixed.length === 1) return prefixed[0];
  const limit = w.length <= 4 ? 1 : 2;
  let best: string | undefined;
  let bestDistance = Infinity;
  let tie = false;
  for (const k of known) {
    const dist = editDistance(w, k.toLowerCase());
    if (dist < bestDistance) [best, bestDistance, tie] = [k, dist, false];
    else if (dist === bestDistance) tie = true;
  }
  return bestDistance <= limit && !tie ? best : undefined;
}
