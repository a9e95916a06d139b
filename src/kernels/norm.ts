/**
 * `shaders/norm.wgsl`: RMSNorm over rows, into another buffer or in place.
 *
 * @module
 */
import { type Dispatch, type KernelContext, paramsLayout, record } from "../gpu/dispatch.ts";

const PARAMS = paramsLayout("norm.wgsl", ["cols", "rows_per_token", "rows_mode", "_pad", "f:eps"] as const);

/** Options of one RMSNorm call site. */
export interface RmsNormOptions {
  label: string;
  /** weight: [cols] bf16. */
  weight: GPUBuffer;
  /** Source rows; omit to normalise `y` in place. */
  x?: GPUBuffer;
  y: GPUBuffer;
  cols: number;
  eps: number;
  /** Rows per token: heads for a per-head q/k norm, else 1. */
  rowsPerToken?: number;
  /** Normalise only the logits rows (`headRow0` … + `headRows`), writing them from row 0 of y. */
  headRows?: boolean;
}

/**
 * Threads per row: wide rows take 256, so that each thread's loads over the row are few (one workgroup
 * is the whole norm of a decode step, and its loads are otherwise a serial chain per thread).
 */
function threads(cols: number): number {
  return cols >= 1024 ? 256 : 64;
}

/** Records an RMSNorm. */
export function rmsNorm(ctx: KernelContext, o: RmsNormOptions): Promise<Dispatch> {
  const rpt = o.rowsPerToken ?? 1;
  if (!o.x && o.headRows) throw new RangeError(`rmsNorm ${o.label}: in place cannot select logits rows`);
  return record(ctx, {
    label: o.label,
    file: "norm.wgsl",
    entry: o.x ? "main" : "in_place",
    constants: { WG: threads(o.cols) },
    params: PARAMS.pack({ cols: o.cols, rows_per_token: rpt, rows_mode: o.headRows ? 1 : 0, eps: o.eps }),
    buffers: o.x ? { 2: o.weight, 3: o.x, 4: o.y } : { 2: o.weight, 4: o.y },
    workgroups: (s) => (o.headRows ? s.headRows : s.t) * rpt,
  });
}
