/**
 * The per-call `Step` of `shaders/common.wgsl`: what changes from one forward call to the
 * next, written once per call before it is submitted.
 *
 * @module
 */
import { type CallShape, paramsLayout } from "../gpu/dispatch.ts";

const STEP = paramsLayout(
  "common.wgsl",
  ["t", "pos0", "head_row0", "head_rows", "gen_index", "split_keys"] as const,
  "Step",
);

/** Most key splits of the decode attention (flash-decoding partials per query and head). */
export const MAX_SPLITS = 16;
/** Keys a split covers at least: one chunk of the attention kernel's workgroup. */
export const SPLIT_GRANULE = 64;

/** Keys per attention split for a call whose last query sees `keys` keys. */
export function splitKeys(keys: number): number {
  return Math.max(SPLIT_GRANULE, Math.ceil(keys / MAX_SPLITS / SPLIT_GRANULE) * SPLIT_GRANULE);
}

/** Attention splits for a call whose last query sees `keys` keys (≤ {@link MAX_SPLITS}). */
export function splitCount(keys: number): number {
  return Math.ceil(keys / splitKeys(keys));
}

/** Packs `Step` for a call of `shape`; `headRow0` is the first logits row, `genIndex` the sampler's slot. */
export function packStep(shape: CallShape, headRow0 = 0, genIndex = 0): Uint32Array<ArrayBuffer> {
  const keys = shape.pos0 + shape.t;
  return new Uint32Array(STEP.pack({
    t: shape.t,
    pos0: shape.pos0,
    head_row0: headRow0,
    head_rows: shape.headRows,
    gen_index: genIndex,
    split_keys: splitKeys(keys),
  }));
}
