/**
 * `shaders/router.wgsl`: masked softmax → top-k routing, the unmasked router's choices, and the
 * per-expert statistics that drive SwapMoE; and {@link normRoute}, the post-attention norm, the router's
 * linear layer and the routing in one dispatch.
 *
 * @module
 */
import { type Dispatch, type KernelContext, paramsLayout, record } from "../gpu/dispatch.ts";

const PARAMS = paramsLayout(
  "router.wgsl",
  [
    "experts",
    "top_k",
    "norm_topk",
    "masked",
    "layer",
    "dim",
    "rows_cap",
    "n_layers",
    "f:eps",
    "has_bias",
    "_pad0",
    "_pad1",
  ] as const,
);

/** Threads of the statistics pass. */
const WG = 64;
/** Threads of a token's routing: its ‖x‖ reads the token's D values, a few per thread. */
const ROUTE_WG = 256;

/** Buffers and geometry of one MoE layer's router. */
export interface RouterOptions {
  label: string;
  /** MoE layer index (row of the slot table, region of the unmasked choices). */
  layer: number;
  experts: number;
  topK: number;
  normTopkProb: boolean;
  /** Route only among resident experts (masked gating); false routes exactly (lru, full). */
  masked: boolean;
  dim: number;
  /** Rows per call at most: the size of each layer's region in the unmasked-choice buffers. */
  rowsCap: number;
  /** logits: [T, E] f32 from the gate projection. */
  logits: GPUBuffer;
  /** slots: [moeLayers, E] i32. */
  slots: GPUBuffer;
  /** x: [T, D] the router's input. */
  x: GPUBuffer;
  topkIds: GPUBuffer;
  topkW: GPUBuffer;
  /** [moeLayers, rowsCap, K] u32 and f32: the unmasked router's choices, per layer. */
  utopkIds: GPUBuffer;
  utopkP: GPUBuffer;
  /** [moeLayers, rowsCap] f32 ‖x‖. */
  xnorm: GPUBuffer;
}

function params(
  o: Omit<
    RouterOptions,
    "label" | "logits" | "slots" | "x" | "topkIds" | "topkW" | "utopkIds" | "utopkP" | "xnorm"
  >,
  layers: number,
  norm: { eps: number; hasBias: boolean } = { eps: 0, hasBias: false },
): ArrayBuffer {
  return PARAMS.pack({
    eps: norm.eps,
    has_bias: norm.hasBias ? 1 : 0,
    experts: o.experts,
    top_k: o.topK,
    norm_topk: o.normTopkProb ? 1 : 0,
    masked: o.masked ? 1 : 0,
    layer: o.layer,
    dim: o.dim,
    rows_cap: o.rowsCap,
    n_layers: layers,
  });
}

/** Records one layer's router (one workgroup per token). */
export function router(ctx: KernelContext, o: RouterOptions): Promise<Dispatch> {
  if (o.topK > 16) throw new RangeError(`router ${o.label}: top-k ${o.topK} exceeds 16`);
  if (o.experts > 256) throw new RangeError(`router ${o.label}: ${o.experts} experts exceed 256`);
  return record(ctx, {
    label: o.label,
    file: "router.wgsl",
    constants: { WG: ROUTE_WG },
    params: params(o, 0),
    buffers: {
      2: o.logits,
      3: o.slots,
      4: o.x,
      5: o.topkIds,
      6: o.topkW,
      7: o.utopkIds,
      8: o.utopkP,
      9: o.xnorm,
    },
    workgroups: (s) => s.t,
  });
}

/** Storage buffers {@link normRoute}'s shader binds (Step and Params included). */
export const NORM_ROUTE_BUFFERS = 13;

/** Buffers and geometry of {@link normRoute}: {@link RouterOptions} with the norm and the router's weights. */
export interface NormRouteOptions extends Omit<RouterOptions, "logits" | "x"> {
  /** [T, D] f32 the residual stream (the norm's input). */
  resid: GPUBuffer;
  /** [T, D] f32 the normalised rows, written (the experts' input). */
  xn: GPUBuffer;
  /** [D] bf16 the norm's weight, and its epsilon. */
  norm: GPUBuffer;
  eps: number;
  /** [E, D] bf16 the router's weight, and its [E] bf16 bias if it has one. */
  weight: GPUBuffer;
  bias?: GPUBuffer;
}

/**
 * Whether {@link normRoute} runs on `device` for this geometry: D a multiple of 8 (the router's rows
 * read 8 bf16 at a time), the experts' partial sums within its workgroup memory, and the device's
 * storage buffers per stage enough for its 13 bindings. Where it does not, a layer's routing is the
 * post-attention norm, the router's matmul and {@link router}: three dispatches.
 */
export function normRouteApplies(device: GPUDevice, dim: number, experts: number): boolean {
  return dim % 8 === 0 && experts <= 256 &&
    device.limits.maxStorageBuffersPerShaderStage >= NORM_ROUTE_BUFFERS;
}

/** LANES of norm_route: threads per expert's dot product, a power of two ≤ 32 with E · LANES ≤ 2048. */
function normRouteLanes(experts: number): number {
  let lanes = 32;
  while (experts * lanes > 2048) lanes /= 2;
  return lanes;
}

/**
 * Records one MoE layer's post-attention RMSNorm (into `xn`), router logits (+ bias) and routing, one
 * workgroup per token (see {@link normRouteApplies}).
 */
export function normRoute(ctx: KernelContext, o: NormRouteOptions): Promise<Dispatch> {
  if (o.topK > 16) throw new RangeError(`router ${o.label}: top-k ${o.topK} exceeds 16`);
  if (!normRouteApplies(ctx.device, o.dim, o.experts)) {
    throw new RangeError(
      `router ${o.label}: the fused norm and routing do not apply (D ${o.dim}, E ${o.experts})`,
    );
  }
  return record(ctx, {
    label: o.label,
    file: "router.wgsl",
    entry: "norm_route",
    constants: { WG: ROUTE_WG, LANES: normRouteLanes(o.experts) },
    params: params(o, 0, { eps: o.eps, hasBias: o.bias !== undefined }),
    buffers: {
      3: o.slots,
      5: o.topkIds,
      6: o.topkW,
      7: o.utopkIds,
      8: o.utopkP,
      9: o.xnorm,
      11: o.resid,
      12: o.xn,
      13: o.norm,
      14: o.weight,
      15: o.bias ?? o.weight,
    },
    workgroups: (s) => s.t,
  });
}

/**
 * Records the statistics pass: stats [moeLayers, E, 4] += this call's choices at MoE layers
 * `layer0` (default 0) … `layer0 + layers − 1`.
 */
export function routerStats(
  ctx: KernelContext,
  o: {
    label: string;
    layer0?: number;
    layers: number;
    experts: number;
    topK: number;
    rowsCap: number;
    slots: GPUBuffer;
    utopkIds: GPUBuffer;
    utopkP: GPUBuffer;
    xnorm: GPUBuffer;
    stats: GPUBuffer;
  },
): Promise<Dispatch> {
  return record(ctx, {
    label: o.label,
    file: "router.wgsl",
    entry: "accumulate",
    params: params({ ...o, layer: o.layer0 ?? 0, normTopkProb: false, masked: false, dim: 0 }, o.layers),
    buffers: { 3: o.slots, 7: o.utopkIds, 8: o.utopkP, 9: o.xnorm, 10: o.stats },
    workgroups: () => Math.ceil((o.layers * o.experts) / WG),
  });
}
