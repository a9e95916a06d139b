/**
 * The planner: spreads the expert slots a budget buys (src/moe/budget.ts) over the MoE layers.
 * `uniform` spreads slots evenly; `profile` gives layers slots in proportion to the importance mass
 * they spread over their non-top experts (a layer whose routing concentrates on few experts needs
 * fewer), so middle layers with flatter routing get more, as the paper found.
 *
 * @module
 */

/** How slots are spread over layers. */
export type PlannerKind = "uniform" | "profile";

/**
 * Slots per layer for `total` slots over `layers` layers of `experts` experts, at least `minPerLayer`
 * each and at most `experts`. `profile[l][e]` (any non-negative weights) drives the `profile` plan.
 */
export function spreadSlots(
  kind: PlannerKind,
  total: number,
  layers: number,
  experts: number,
  minPerLayer: number,
  profile?: readonly (readonly number[])[],
): number[] {
  const cap = layers * experts;
  total = Math.max(layers * minPerLayer, Math.min(total, cap));
  const slots = Array<number>(layers).fill(minPerLayer);
  let left = total - layers * minPerLayer;
  if (kind === "uniform" || !profile) {
    for (let l = 0; left > 0; l = (l + 1) % layers) {
      if (slots[l]! < experts) {
        slots[l]!++;
        left--;
      }
    }
    return slots;
  }
  // Greedy by marginal value: each extra slot of layer l holds its next most important expert; the
  // gain is that expert's share of the layer's importance. Layers are weighted equally.
  const sorted = profile.map((row) => {
    const s = [...row].sort((a, b) => b - a);
    const sum = s.reduce((a, b) => a + b, 0) || 1;
    return s.map((v) => v / sum);
  });
  while (left > 0) {
    let best = -1;
    let bestGain = -1;
    for (let l = 0; l < layers; l++) {
      if (slots[l]! >= experts) continue;
      const gain = sorted[l]?.[slots[l]!] ?? 0;
      if (gain > bestGain) {
        bestGain = gain;
        best = l;
      }
    }
    if (best < 0) break;
    slots[best]!++;
    left--;
  }
  return slots;
}

/**
 * The `n` largest entries of `scores` (ties: lower index first), ascending by index, or by rank
 * (largest first) when `ranked`.
 */
export function topExperts(scores: ArrayLike<number>, n: number, ranked = false): number[] {
  const idx = Array.from({ length: scores.length }, (_, i) => i);
  idx.sort((a, b) => (scores[b]! - scores[a]!) || a - b);
  const top = idx.slice(0, n);
  return ranked ? top : top.sort((a, b) => a - b);
}
