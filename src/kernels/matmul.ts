/**
 * `shaders/matmul.wgsl`: y[r, o] (+)= Σ_i x[r, i] · W[o, i] (+ bias[o]) with W as stored (bf16), on the
 * fast path optionally of x's rows RMS-normalised first (a norm and the projection after it in one dispatch).
 *
 * @module
 */
import { type Dispatch, type KernelContext, onlyWhen, paramsLayout, record } from "../gpu/dispatch.ts";

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
    "glu",
    "w2_offset",
    "gate_dim",
    "_p0",
  ] as const,
);

/** Rows of x per workgroup (the shader's `TT`). */
const TT = 4;
/** The fast path: threads per workgroup and output rows per workgroup (`gemv8`). */
const FAST = { WG: 256, RW: 8, TT: 4 };

/**
 * Calls of at least this many rows (prefill chunks) run the tiled kernel where it applies
 * ({@link tiledApplies}) and makes at least {@link TILED_MIN_WORKGROUPS} workgroups; the others the
 * GEMVs, which read W once per 4 rows but spread over many more workgroups. The experts switch paths at
 * the same count (`GEMV_MAX_ROWS`).
 */
export const TILED_MIN_ROWS = 33;
/**
 * The fewest workgroups a tiled call may make: fewer leave most of the GPU idle. On the H200 at the
 * OLMoE shape (bench/profile.ts --prefill, 2026-12-03) the tiled kernel against the GEMV, per 16 layers:
 * o_proj at 64 rows (16 workgroups) 5.07 against 2.11 ms, the router at 512 rows (8) 4.78 against
 * 0.70 ms; qkv_proj at 64 rows (48) 5.13 against 5.81 ms, o_proj at 512 (128) 5.04 against 15.1 ms,
 * qkv_proj at 512 (384) 8.47 against 44.8 ms (24 TFLOP/s).
 */
export const TILED_MIN_WORKGROUPS = 48;
/** The tiled kernel's tile: rows of x and outputs per workgroup (256 threads of 4 × 8 outputs), columns per stage. */
const TILED = { TR: 64, TO: 128, TBK: 16 };

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
  /**
   * SwiGLU's first half in one dispatch: y = silu(x · Wᵀ) · (x · Uᵀ), W the gate_proj and U ([outDim,
   * inDim] bf16 from u32 word `offset` of `weight`) the up_proj (torch: act_fn(gate_proj(x)) *
   * up_proj(x)). Only on the fast path, without `norm` or `gate`.
   */
  glu?: { weight: GPUBuffer; offset?: number };
  /**
   * Scale each row's result by a sigmoid gate, σ(x_g[r] · g), before it is stored or added (Qwen2-MoE:
   * the shared expert's output times sigmoid(shared_expert_gate(x))): `x` [rows, dim] f32, `weight` [dim]
   * bf16 (the gate's [1, dim] Linear), `dim` a multiple of 8. Only on the fast path, without `norm`.
   */
  gate?: { weight: GPUBuffer; x: GPUBuffer; dim: number };
}

/** Whether the vectorised `gemv8` path applies: 8-element rows aligned to 16 bytes. */
export function fastPathApplies(o: Pick<MatmulOptions, "inDim" | "wOffset" | "reference">): boolean {
  return !o.reference && o.inDim % 8 === 0 && (o.wOffset ?? 0) % 4 === 0;
}

/**
 * Whether the tiled kernel is recorded beside the GEMV: the fast path's alignment, no fused norm (the
 * norm of a long call runs apart), and at least half a tile of outputs.
 */
export function tiledApplies(
  o: Pick<MatmulOptions, "inDim" | "outDim" | "wOffset" | "reference" | "norm" | "glu" | "gate">,
): boolean {
  return fastPathApplies(o) && !o.norm && !o.glu && !o.gate && o.outDim >= TILED.TO / 2;
}

/** Workgroups of the tiled kernel over `rows` rows of `outDim` outputs. */
function tiledWorkgroups(outDim: number, rows: number): number {
  return Math.ceil(outDim / TILED.TO) * Math.ceil(rows / TILED.TR);
}

/** Whether a call of `rows` rows runs the tiled kernel (where {@link tiledApplies}). */
export function tiledRuns(o: Pick<MatmulOptions, "outDim">, rows: number): boolean {
  return rows >= TILED_MIN_ROWS && tiledWorkgroups(o.outDim, rows) >= TILED_MIN_WORKGROUPS;
}

/**
 * Records a matmul: one dispatch, or where {@link tiledApplies} two sharing one params block, the tiled
 * kernel for the calls {@link tiledRuns} takes and the GEMV for the others.
 */
export async function matmul(ctx: KernelContext, o: MatmulOptions): Promise<Dispatch[]> {
  const rows = rowsOf(o);
  if (!tiledApplies(o)) return [await matmulGemv(ctx, o, matmulParams(o))];
  const params = ctx.params.push(matmulParams(o));
  const tiled = await record(ctx, {
    label: o.label,
    file: "matmul.wgsl",
    entry: "tiled",
    constants: TILED,
    params,
    buffers: { 3: o.bias ?? o.weight, 5: o.y, 6: o.weight, 7: o.x },
    workgroups: (s) => tiledWorkgroups(o.outDim, rows(s)),
  });
  return [
    onlyWhen(await matmulGemv(ctx, o, params), (s) => !tiledRuns(o, rows(s))),
    onlyWhen(tiled, (s) => tiledRuns(o, rows(s))),
  ];
}

/** The rows a call of the site multiplies: the call's logits rows, or all its rows. */
function rowsOf(o: Pick<MatmulOptions, "headRows">): (s: { t: number; headRows: number }) => number {
  return (s) => o.headRows ? s.headRows : s.t;
}

/** The params block of a matmul call site. */
function matmulParams(o: MatmulOptions): ArrayBuffer {
  return PARAMS.pack({
    in_dim: o.inDim,
    out_dim: o.outDim,
    rows_mode: o.headRows ? 1 : 0,
    accumulate: o.accumulate ? 1 : 0,
    has_bias: o.bias ? 1 : 0,
    w_offset: o.wOffset ?? 0,
    norm: o.norm ? (o.norm.out ? 2 : 1) : o.gate ? 3 : 0,
    eps: o.norm?.eps ?? 0,
    glu: o.glu ? 1 : 0,
    w2_offset: o.glu?.offset ?? 0,
    gate_dim: o.gate?.dim ?? 0,
  });
}

/** The GEMV dispatch of a matmul (the fast path where it applies, else the reference kernel). */
function matmulGemv(
  ctx: KernelContext,
  o: MatmulOptions,
  params: ArrayBuffer | GPUBufferBinding,
): Promise<Dispatch> {
  if (o.inDim % 2 !== 0) throw new RangeError(`matmul ${o.label}: in dimension ${o.inDim} must be even`);
  const rows = rowsOf(o);
  if ((o.norm || o.glu || o.gate) && !fastPathApplies(o)) {
    throw new RangeError(
      `matmul ${o.label}: a fused norm, SwiGLU or gate needs the fast path (in dimension a multiple of 8)`,
    );
  }
  if ([o.norm, o.glu, o.gate].filter((f) => f !== undefined).length > 1) {
    throw new RangeError(`matmul ${o.label}: norm, glu and gate are fused one at a time`);
  }
  if (o.glu && (o.glu.offset ?? 0) % 4 !== 0) {
    throw new RangeError(`matmul ${o.label}: the up_proj's offset must be a multiple of 4 words`);
  }
  if (o.gate && o.gate.dim % 8 !== 0) {
    throw new RangeError(`matmul ${o.label}: the gate's input width ${o.gate.dim} must be a multiple of 8`);
  }
  if (fastPathApplies(o)) {
    return record(ctx, {
      label: o.label,
      file: "matmul.wgsl",
      entry: "gemv8",
      constants: FAST,
      params,
      // (binding 9 is written only with norm.out, read only with gate: y, writable already, stands in
      // otherwise; 10 is read only with glu)
      buffers: {
        3: o.bias ?? o.weight,
        5: o.y,
        6: o.weight,
        7: o.x,
        8: o.norm?.weight ?? o.gate?.weight ?? o.weight,
        9: o.norm?.out ?? o.gate?.x ?? o.y,
        10: o.glu?.weight ?? o.weight,
      },
      // glu: RW / 2 outputs a workgroup (their gate and up rows)
      workgroups: (s) => Math.ceil(o.outDim / (o.glu ? FAST.RW / 2 : FAST.RW)) * Math.ceil(rows(s) / FAST.TT),
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
