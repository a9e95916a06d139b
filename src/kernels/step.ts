/**
 * The per-call `Step` and `rows` table of `shaders/common.wgsl`: what changes from one forward call to
 * the next, written once per call before it is submitted. `Step` describes the call; each entry of
 * `rows` one of its rows (its sequence's slot, its position, its attention split, the token it
 * samples), so that one call can carry rows of several sequences at different positions.
 *
 * @module
 */
import { type CallShape, paramsLayout } from "../gpu/dispatch.ts";

const STEP = paramsLayout(
  "common.wgsl",
  ["t", "pos0", "head_row0", "head_rows", "splits", "count_stats"] as const,
  "Step",
);
const ROW = paramsLayout("common.wgsl", ["slot", "pos", "split_keys", "gen"] as const, "Row");

/** Most key splits of the decode attention (flash-decoding partials per query and head). */
export const MAX_SPLITS = 16;
/** Keys a split covers at least: one chunk of the attention kernel's workgroup. */
export const SPLIT_GRANULE = 64;
/** `Row.gen` of a row whose logits are not sampled (the shaders' `NO_GEN`). */
export const NO_GEN = 0xffff_ffff;
/** Bytes of one entry of the `rows` table. */
export const ROW_BYTES = ROW.bytes;

/** Keys per attention split for a call whose last query sees `keys` keys. */
export function splitKeys(keys: number): number {
  return Math.max(SPLIT_GRANULE, Math.ceil(keys / MAX_SPLITS / SPLIT_GRANULE) * SPLIT_GRANULE);
}

/** Attention splits for a call whose last query sees `keys` keys (≤ {@link MAX_SPLITS}). */
export function splitCount(keys: number): number {
  return Math.ceil(keys / splitKeys(keys));
}

/**
 * One row of a call. A row's attention splits its keys as its sequence would alone: a prefill chunk's
 * rows at the split of the chunk's last row, a decode row at its own.
 */
export interface RowMeta {
  /** The sequence's slot (KV-cache region, sampler settings, generated tokens). */
  readonly slot: number;
  /** Absolute position in its sequence. */
  readonly pos: number;
  /** Keys per attention split of this row. */
  readonly splitKeys: number;
  /** The token index its logits are sampled into, or {@link NO_GEN}; from 1 on, its input is token gen − 1. */
  readonly gen: number;
}

/**
 * Rows `pos0` … `pos0 + t − 1` of the sequence in `slot`: a prefill chunk (or a forward call's), each
 * split as the chunk's last row; with `gen`, the last row samples token `gen` (0: the first token).
 */
export function chunkRows(slot: number, pos0: number, t: number, gen?: number): RowMeta[] {
  const split = splitKeys(pos0 + t);
  return Array.from({ length: t }, (_, r) => ({
    slot,
    pos: pos0 + r,
    splitKeys: split,
    gen: gen !== undefined && r === t - 1 ? gen : NO_GEN,
  }));
}

/** A decode row: the sequence in `slot` at `pos` samples token `gen` (≥ 1) from its token gen − 1. */
export function decodeRow(slot: number, pos: number, gen: number): RowMeta {
  return { slot, pos, splitKeys: splitKeys(pos + 1), gen };
}

/** The `rows` table of a call, [rows] × `Row`. */
export function packRows(rows: readonly RowMeta[]): Uint32Array<ArrayBuffer> {
  const words = ROW_BYTES / 4;
  const out = new Uint32Array(rows.length * words);
  rows.forEach((r, i) =>
    out.set(
      new Uint32Array(ROW.pack({ slot: r.slot, pos: r.pos, split_keys: r.splitKeys, gen: r.gen })),
      i * words,
    )
  );
  return out;
}

/** The most attention splits any of `rows` takes: the call's `splits`. */
export function callSplits(rows: readonly RowMeta[]): number {
  return rows.reduce((a, r) => Math.max(a, Math.ceil((r.pos + 1) / r.splitKeys)), 1);
}

/**
 * Packs `Step` for a call of `shape`: `headRow0` is the first logits row; `countStats` false leaves
 * the routing statistics as they were (a KV cache rebuilt over rows already counted).
 */
export function packStep(
  shape: CallShape,
  headRow0 = 0,
  countStats = true,
): Uint32Array<ArrayBuffer> {
  return new Uint32Array(STEP.pack({
    t: shape.t,
    pos0: shape.pos0,
    head_row0: headRow0,
    head_rows: shape.headRows,
    splits: shape.splits ?? splitCount(shape.pos0 + shape.t),
    count_stats: countStats ? 1 : 0,
  }));
}
