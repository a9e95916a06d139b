/**
 * `shaders/matmul.wgsl`: y[r, o] (+)= Σ_i x[r, i] · W[o, i] (+ bias[o]) with W as stored (bf16), on the
 * fast path optionally of x's rows RMS-normalised first (a norm and the projection after it in one dispatch).
 *
 * @module
 */
import { type Dispatch, type KernelContext, paramsLayout, record } from "../gpu/dispatch.ts";

const PARAMS = paramsLayout(
  "matmul.wgsl",
  [
    "in_dim",
    "out_dim",
    "rows_mode",
    "accumulate",
    "has_bias",
    "w_offset",
    "norm",
    "f:eps",
  ] as const,
);

/** Rows of x per workgroup (the shader's `TT`). */
const TT = 4;
/** The fast path: threads per workgroup and output rows per workgroup (`gemv8`). */
const FAST = { WG: 256, RW: 8, TT: 4 };

/** Options of one matmul call site. */
export interface MatmulOptions {
  label: string;
  /** W: [outDim, inDim] bf16, starting at u32 word `wOffset` of `weight`. */
  weight: GPUBuffer;
  wOffset?: number;
  bias?: GPUBuffer;
  /** x: [rows, inDim] f32. */
  x: GPUBuffer;
  /** y: [rows, outDim] f32. */
  y: GPUBuffer;
  inDim: number;
  outDim: number;
  /** Add into y (a residual connection) rather than overwrite it. */
  accumulate?: boolean;
  /** Rows are the call's logits rows (`headRows`) rather than all its rows. */
  headRows?: boolean;
  /** Use the simple reference kernel even where the fast one applies (tests). */
  reference?: boolean;
  /**
   * RMS-normalise each row of x first, with this [inDim] bf16 weight and epsilon (torch: the RMSNorm
   * before the projection), and with `out` also write the normalised rows there ([rows, inDim] f32, for
   * the norm's other readers): only on the fast path ({@link fastPathApplies}).
   */
  norm?: { weight: GPUBuffer; eps: number; out?: GPUBuffer };
}

/** Whether the vectorised `gemv8` path applies: 8-element rows aligned to 16 bytes. */
export function fastPathApplies(o: Pick<MatmulOptions, "inDim" | "wOffset" | "reference">): boolean {
  return !o.reference && o.inDim % 8 === 0 && (o.wOffset ?? 0) % 4 === 0;
}

/** Records a matmul. */
export function matmul(ctx: KernelContext, o: MatmulOptions): Promise<Dispatch> {
  if (o.inDim % 2 !== 0) throw new RangeError(`matmul ${o.label}: in dimension ${o.inDim} must be even`);
  const rows = (s: { t: number; headRows: number }) => o.headRows ? s.headRows : s.t;
  if (o.norm && !fastPathApplies(o)) {
    throw new RangeError(
      `matmul ${o.label}: a fused norm needs the fast path (in dimension a multiple of 8)`,
    );
  }
  const params = PARAMS.pack({
    in_dim: o.inDim,
    out_dim: o.outDim,
    rows_mode: o.headRows ? 1 : 0,
    accumulate: o.accumulate ? 1 : 0,
    has_bias: o.bias ? 1 : 0,
    w_offset: o.wOffset ?? 0,
    norm: o.norm ? (o.norm.out ? 2 : 1) : 0,
    eps: o.norm?.eps ?? 0,
  });
  if (fastPathApplies(o)) {
    return record(ctx, {
      label: o.label,
      file: "matmul.wgsl",
      entry: "gemv8",
      constants: FAST,
      params,
      // (binding 9 is written only with norm.out: y, writable already, stands in without it)
      buffers: {
        3: o.bias ?? o.weight,
        5: o.y,
        6: o.weight,
        7: o.x,
        8: o.norm?.weight ?? o.weight,
        9: o.norm?.out ?? o.y,
      },
      workgroups: (s) => Math.ceil(o.outDim / FAST.RW) * Math.ceil(rows(s) / FAST.TT),
    });
  }
  return record(ctx, {
    label: o.label,
    file: "matmul.wgsl",
    constants: { TT },
    params,
    buffers: { 2: o.weight, 3: o.bias ?? o.weight, 4: o.x, 5: o.y },
    workgroups: (s) => o.outDim * Math.ceil(rows(s) / TT),
  });
}
